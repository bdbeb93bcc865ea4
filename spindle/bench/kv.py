"""`spindle bench kv`: a storage node's throughput and latency next to raw rocksdict.

A real node runs as a subprocess; this process is the load generator. It drives the node
with a lean closed-loop generator that writes protocol frames with msgspec directly, on
uvloop, with callbacks instead of coroutines: the full `AsyncClient`, with its futures,
timeouts and routing, spends about as much CPU per request as the node itself, and client
and node share two cores. One extra cell per operation runs through `AsyncClient`, so the
client library's cost is visible too.
In the same run the same operations run in-process on rocksdict, so each layer's cost
(engine, node, network, client) shows as a ratio.

Definitions (also written into the JSON):
- concurrency C: requests in flight at once, each re-issued as soon as it is answered.
- "conn" (not pipelined): C connections, one request outstanding on each.
- "pipe" (pipelined): one connection with C requests in flight (at C = 1 identical to
  "conn", so not run twice).
- "client": C coroutines sharing one `AsyncClient` (one multiplexed connection).
- durable put: the node acknowledges a put only after its group commit fsynced it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import rocksdict
import uvloop
from rich.console import Console
from rich.table import Table

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.client import AsyncClient
from spindle.kv.keys import hash_prefix

Op = Literal["get", "put", "scan", "mixed"]
Mode = Literal["conn", "pipe", "client"]

OPS: tuple[Op, ...] = ("get", "put", "scan", "mixed")
CONCURRENCIES = (1, 16, 128)
QUICK_CONCURRENCIES = (1, 128)
VALUE_BYTES = 100
SCAN_PAGE_ITEMS = 10
MIXED_PUT_FRACTION = 0.1
PRELOAD_KEYS = 100_000
QUICK_PRELOAD_KEYS = 20_000
MEMORY_KEYS = 1_000_000
QUICK_MEMORY_KEYS = 50_000
QUICK_CELL_S_MAX = 0.5
WARMUP_S = 0.3
"""Load before each cell's measured window, so connections and caches are warm."""
LOAD_BATCH_OPS = limits.BATCH_OPS_MAX
LOAD_BATCHES_IN_FLIGHT = 4
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 10.0
STORED_HEADER_BYTES = 16
"""Bytes the node stores in front of each value (version, expiry): the raw baseline stores
values of the same size."""

PUT_OPS_PER_S_TARGET = 20_000
GET_OPS_PER_S_TARGET = 40_000
RSS_BYTES_TARGET = 300 * 1_000_000

_response_decoder = msgspec.msgpack.Decoder(p.RawResponse)
_encoder = msgspec.msgpack.Encoder()
_HEADER = p.FRAME_HEADER
_console = Console(width=None if sys.stdout.isatty() else 120)
"""Wide enough for the table when the output goes to a file."""


def user_key(index: int) -> bytes:
    return b"user:%09d" % index


class Cell(msgspec.Struct):
    """One measured cell: an operation at one concurrency in one mode."""

    layer: str
    """"server" (a node subprocess) or "raw" (rocksdict in this process)."""
    op: str
    mode: str
    concurrency: int
    connections: int
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int = 0
    server_cpu_pct: float | None = None
    """CPU the node process used in the window, in % of one core (all its threads)."""
    loadgen_cpu_pct: float | None = None
    """CPU this process (the load generator) used in the window, in % of one core."""
    raw_ops_per_s: float | None = None
    server_over_raw: float | None = None


def percentile_ms(sorted_ns: list[int], quantile: float) -> float:
    if not sorted_ns:
        return float("nan")
    index = min(len(sorted_ns) - 1, int(quantile * len(sorted_ns)))
    return sorted_ns[index] / 1e6


def make_cell(
    layer: str,
    op: str,
    mode: str,
    concurrency: int,
    connections: int,
    latencies_ns: list[int],
    seconds: float,
    errors: int = 0,
    cpu_pct: tuple[float, float] | None = None,
) -> Cell:
    """`cpu_pct`: (node, load generator) CPU in % of one core."""
    latencies_ns.sort()
    return Cell(
        layer=layer,
        op=op,
        mode=mode,
        concurrency=concurrency,
        connections=connections,
        ops=len(latencies_ns),
        seconds=round(seconds, 3),
        ops_per_s=round(len(latencies_ns) / seconds, 1),
        p50_ms=round(percentile_ms(latencies_ns, 0.5), 4),
        p99_ms=round(percentile_ms(latencies_ns, 0.99), 4),
        p999_ms=round(percentile_ms(latencies_ns, 0.999), 4),
        errors=errors,
        server_cpu_pct=None if cpu_pct is None else round(cpu_pct[0], 1),
        loadgen_cpu_pct=None if cpu_pct is None else round(cpu_pct[1], 1),
    )


# -- the node subprocess ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A `spindle server` subprocess on free loopback ports with a throwaway data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spindle.cli",
                    "server",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--http-port",
                    str(self.http_port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_tail()}")
            try:
                async with AsyncClient(self.address, timeout_s=1.0, retries=0) as client:
                    await client.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer:\n{self.log_tail()}") from None
                await asyncio.sleep(0.1)

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the node has used so far."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory from /proc (Linux); `VmHWM` is the peak."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/{self.process.pid}/status")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_server(root: Path, name: str) -> Iterator[ServerProcess]:
    """The node is stopped and its data removed on the way out, so its files' writeback
    does not slow the fsyncs of what runs next."""
    server = ServerProcess(root / name)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


# -- the lean load generator --------------------------------------------------------------


class Workload:
    """Builds request frames for one operation; keys are uniform over the preloaded set."""

    def __init__(self, op: Op, key_count: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.keys = [user_key(i) for i in range(key_count)]
        self.value = os.urandom(VALUE_BYTES)
        self.make: Callable[[int], bytes] = {
            "get": self.get,
            "put": self.put,
            "scan": self.scan,
            "mixed": self.mixed,
        }[op]

    def _key(self) -> bytes:
        keys = self.keys
        return keys[int(self.rng.random() * len(keys))]

    def get(self, request_id: int) -> bytes:
        return p.frame(_encoder.encode(p.Get(id=request_id, key=self._key())))

    def put(self, request_id: int) -> bytes:
        return p.frame(_encoder.encode(p.Put(id=request_id, key=self._key(), value=self.value)))

    def scan(self, request_id: int) -> bytes:
        # A random 4-byte cursor is a random position in the hash-partitioned keyspace,
        # as a continuation cursor would be: the page is the next 10 keys from there.
        cursor = self.rng.randbytes(4)
        request = p.Scan(id=request_id, limit=SCAN_PAGE_ITEMS, cursor=cursor)
        return p.frame(_encoder.encode(request))

    def mixed(self, request_id: int) -> bytes:
        if self.rng.random() < MIXED_PUT_FRACTION:
            return self.put(request_id)
        return self.get(request_id)


class LoadRun:
    """Shared state of one cell: whether to keep issuing, and what was measured."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.running = True
        self.recording = False
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.outstanding = 0
        self.drained = asyncio.Event()


class LoadConnection(asyncio.Protocol):
    """One connection keeping `depth` requests in flight: each answer triggers the next
    request, sent in one write with the others its read produced (closed loop)."""

    def __init__(self, run: LoadRun, depth: int) -> None:
        self.run = run
        self.depth = depth
        self.transport: asyncio.Transport | None = None
        self.sent_ns: dict[int, int] = {}
        self.next_id = 1
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.outstanding -= len(self.sent_ns)
        run.errors += len(self.sent_ns)
        self.sent_ns.clear()
        if run.outstanding == 0:
            run.drained.set()

    def start(self) -> None:
        out: list[bytes] = []
        for _ in range(self.depth):
            self._issue(out)
        assert self.transport is not None
        self.transport.write(b"".join(out))

    def _issue(self, out: list[bytes]) -> None:
        request_id = self.next_id
        self.next_id += 1
        out.append(self.run.workload.make(request_id))
        self.sent_ns[request_id] = time.perf_counter_ns()
        self.run.outstanding += 1

    def data_received(self, data: bytes) -> None:
        now_ns = time.perf_counter_ns()
        run = self.run
        buffer = self.buffer
        buffer += data
        size = len(buffer)
        offset = 0
        out: list[bytes] = []
        while size - offset >= 4:
            (length,) = _HEADER.unpack_from(buffer, offset)
            end = offset + 4 + length
            if end > size:
                break
            response = _response_decoder.decode(buffer[offset + 4 : end])
            offset = end
            started_ns = self.sent_ns.pop(response.id, None)
            if started_ns is None:  # an error not tied to a request (id 0)
                run.errors += 1
                continue
            run.outstanding -= 1
            if run.recording:
                run.latencies_ns.append(now_ns - started_ns)
                if response.error is not None:
                    run.errors += 1
            if run.running:
                self._issue(out)
        del buffer[:offset]
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))
        elif run.outstanding == 0:
            run.drained.set()


async def measure_window(
    run: LoadRun, seconds: float, server: ServerProcess
) -> tuple[float, tuple[float, float]]:
    """Warm up, record for `seconds`, stop issuing. Returns the recorded duration and the
    CPU (% of one core) the node and this process used meanwhile: which side is saturated
    tells what limits the cell."""
    await asyncio.sleep(WARMUP_S)
    run.latencies_ns.clear()
    run.errors = 0
    run.recording = True
    server_cpu_s, own_cpu_s = server.cpu_s(), time.process_time()
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    run.recording = False
    elapsed = time.perf_counter() - started
    run.running = False
    server_pct = 100 * (server.cpu_s() - server_cpu_s) / elapsed
    own_pct = 100 * (time.process_time() - own_cpu_s) / elapsed
    return elapsed, (server_pct, own_pct)


async def run_lean_cell(
    server: ServerProcess, op: Op, mode: Mode, concurrency: int, key_count: int, seconds: float
) -> Cell:
    """C connections of depth 1 ("conn"), or one connection of depth C ("pipe")."""
    connections, depth = (concurrency, 1) if mode == "conn" else (1, concurrency)
    run = LoadRun(Workload(op, key_count, seed=concurrency))
    loop = asyncio.get_running_loop()
    opened: list[LoadConnection] = []
    try:
        for _ in range(connections):
            _, connection = await loop.create_connection(
                lambda: LoadConnection(run, depth), "127.0.0.1", server.port
            )
            opened.append(connection)
        for connection in opened:
            connection.start()
        elapsed, cpu_pct = await measure_window(run, seconds, server)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.drained.wait(), DRAIN_TIMEOUT_S)
    finally:
        for connection in opened:
            if connection.transport is not None:
                connection.transport.close()
    return make_cell(
        "server",
        op,
        mode,
        concurrency,
        connections,
        run.latencies_ns,
        elapsed,
        run.errors,
        cpu_pct,
    )


async def run_client_cell(
    server: ServerProcess, op: Op, concurrency: int, key_count: int, seconds: float
) -> Cell:
    """C coroutines in a closed loop over one `AsyncClient`: what an application sees."""
    run = LoadRun(Workload(op, key_count, seed=concurrency))
    rng, keys, value = run.workload.rng, run.workload.keys, run.workload.value

    async def worker(client: AsyncClient) -> None:
        while run.running:
            key = keys[int(rng.random() * len(keys))]
            started_ns = time.perf_counter_ns()
            try:
                if op == "get" or (op == "mixed" and rng.random() >= MIXED_PUT_FRACTION):
                    await client.get(key)
                elif op in ("put", "mixed"):
                    await client.put(key, value)
                else:
                    await client.scan_page(cursor=rng.randbytes(4), limit=SCAN_PAGE_ITEMS)
            except Exception:
                run.errors += run.recording
                continue
            if run.recording:
                run.latencies_ns.append(time.perf_counter_ns() - started_ns)

    async with AsyncClient(server.address) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        elapsed, cpu_pct = await measure_window(run, seconds, server)
        await asyncio.wait_for(asyncio.gather(*workers), DRAIN_TIMEOUT_S)
    return make_cell(
        "server", op, "client", concurrency, 1, run.latencies_ns, elapsed, run.errors, cpu_pct
    )


# -- loading ------------------------------------------------------------------------------


class _MapShard(msgspec.Struct):
    start: bytes


class _KeyspaceMap(msgspec.Struct):
    shards: list[_MapShard]


async def load_keys(address: str, key_count: int, value: bytes) -> float:
    """Write keys 0..key_count-1 with atomic batches (one shard each: the keyspace is hash
    partitioned, so keys are grouped by the shard their hash falls in), a few batches in
    flight. Returns puts per second."""
    started = time.perf_counter()
    async with AsyncClient(address, timeout_s=60.0) as client:
        ks_map = await client.call(
            p.GetShardMap(id=0, keyspace="default"), _KeyspaceMap, idempotent=True
        )
        starts = [shard.start for shard in ks_map.shards]
        groups: dict[int, list[p.BatchOp]] = {}
        batches: list[list[p.BatchOp]] = []
        for index in range(key_count):
            key = user_key(index)
            shard = _shard_index(starts, hash_prefix(key) + key)
            group = groups.setdefault(shard, [])
            group.append(p.BatchPut(key=key, value=value))
            if len(group) == LOAD_BATCH_OPS:
                batches.append(group)
                groups[shard] = []
        batches.extend(group for group in groups.values() if group)
        in_flight = asyncio.Semaphore(LOAD_BATCHES_IN_FLIGHT)

        async def send(ops: list[p.BatchOp]) -> None:
            async with in_flight:
                await client.write_batch(ops)

        await asyncio.gather(*(send(batch) for batch in batches))
    return key_count / (time.perf_counter() - started)


def _shard_index(starts: list[bytes], internal_key: bytes) -> int:
    return bisect.bisect_right(starts, internal_key) - 1


# -- raw rocksdict, in process ------------------------------------------------------------


def _raw_options() -> Any:
    """The node engine's options (spindle.kv.storage.rocks), without column families."""
    from spindle.kv.storage import rocks

    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(rocks.WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(rocks.MAX_WRITE_BUFFERS)
    opts.set_max_background_jobs(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(rocks.BLOCK_CACHE_BYTES))
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def _raw_key(key: bytes) -> bytes:
    """The engine key the node would use: keyspace id, hash prefix, user key."""
    return b"\x00\x00\x00\x01" + hash_prefix(key) + key


def run_raw(
    root: Path, key_count: int, seconds: float, concurrencies: tuple[int, ...]
) -> list[Cell]:
    """The same operations on rocksdict directly, single-threaded:
    get: `db.get`; scan: a new iterator, seek to a random position, read 10 items;
    put at concurrency C: C `db.put(sync=False)` then one `flush_wal(True)` (C = 1: an fsync
    per put), which is the engine work of the node's group commit of C puts; each put's
    latency is its group's duration; mixed at C: groups of C ops, 10% puts, one
    `flush_wal(True)` per group that wrote."""
    path = root / "raw"
    db: Any = rocksdict.Rdict(str(path), _raw_options())
    try:
        write_opts = rocksdict.WriteOptions()
        write_opts.sync = False
        value = os.urandom(STORED_HEADER_BYTES + VALUE_BYTES)
        keys = [_raw_key(user_key(i)) for i in range(key_count)]
        for start in range(0, key_count, LOAD_BATCH_OPS):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key in keys[start : start + LOAD_BATCH_OPS]:
                batch.put(key, value)
            db.write(batch, write_opts)
        db.flush_wal(True)
        rng = random.Random(7)

        def pick() -> bytes:
            return keys[int(rng.random() * key_count)]

        def timed(op: str, body: Callable[[], None], concurrency: int = 1) -> Cell:
            latencies_ns: list[int] = []
            deadline = time.perf_counter() + WARMUP_S / 3
            while time.perf_counter() < deadline:
                body()
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter_ns()
                body()
                latencies_ns.append(time.perf_counter_ns() - t0)
            elapsed = time.perf_counter() - started
            if concurrency > 1:  # body did a group of C ops: each op waited for the group
                latencies_ns = [lat for lat in latencies_ns for _ in range(concurrency)]
            return make_cell("raw", op, "in-process", concurrency, 0, latencies_ns, elapsed)

        def get() -> None:
            db.get(pick())

        def scan() -> None:
            it = db.iter()
            it.seek(b"\x00\x00\x00\x01" + rng.randbytes(4))
            for _ in range(SCAN_PAGE_ITEMS):
                if not it.valid():
                    break
                it.key()
                it.value()
                it.next()

        def put_group(size: int, put_fraction: float) -> Callable[[], None]:
            def body() -> None:
                wrote = False
                for _ in range(size):
                    if rng.random() < put_fraction:
                        db.put(pick(), value, write_opts)
                        wrote = True
                    else:
                        db.get(pick())
                if wrote:
                    db.flush_wal(True)

            return body

        cells = [timed("get", get), timed("scan", scan)]
        for concurrency in concurrencies:
            cells.append(timed("put", put_group(concurrency, 1.0), concurrency))
        for concurrency in concurrencies:
            cells.append(timed("mixed", put_group(concurrency, MIXED_PUT_FRACTION), concurrency))
        return cells
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


def raw_for(raw_cells: list[Cell], cell: Cell) -> Cell | None:
    """The raw cell a server cell compares with: same op, same group size for writes."""
    for raw in raw_cells:
        if raw.op == cell.op and (raw.op in ("get", "scan") or raw.concurrency == cell.concurrency):
            return raw
    return None


# -- the run ------------------------------------------------------------------------------


async def run_server_cells(
    server: ServerProcess,
    key_count: int,
    seconds: float,
    concurrencies: tuple[int, ...],
    client_concurrency: int,
) -> list[Cell]:
    cells: list[Cell] = []
    for op in OPS:
        for concurrency in concurrencies:
            modes: tuple[Mode, ...] = ("conn",) if concurrency == 1 else ("conn", "pipe")
            for mode in modes:
                cell = await run_lean_cell(server, op, mode, concurrency, key_count, seconds)
                _progress(cell)
                cells.append(cell)
        cell = await run_client_cell(server, op, client_concurrency, key_count, seconds)
        _progress(cell)
        cells.append(cell)
    return cells


def _progress(cell: Cell) -> None:
    _console.print(
        f"  {cell.layer} {cell.op:5} {cell.mode:6} C={cell.concurrency:<4} "
        f"{cell.ops_per_s:>10,.0f} ops/s  p99 {cell.p99_ms:.2f} ms"
        + (
            f"  cpu: node {cell.server_cpu_pct:.0f}% generator {cell.loadgen_cpu_pct:.0f}%"
            if cell.server_cpu_pct is not None and cell.loadgen_cpu_pct is not None
            else ""
        ),
        highlight=False,
    )


async def measure_memory(root: Path, key_count: int, seconds: float) -> dict[str, Any]:
    """A fresh node holding `key_count` 100-byte values: RSS after loading them, and after
    a read pass over them (which fills the block cache)."""
    with running_server(root, "memory-node") as server:
        await server.wait_ready()
        rss_idle_bytes = server.rss_bytes()
        load_puts_per_s = await load_keys(server.address, key_count, os.urandom(VALUE_BYTES))
        rss_loaded_bytes = server.rss_bytes()
        read = await run_lean_cell(server, "get", "pipe", 128, key_count, seconds)
        _console.print(f"  with {key_count:,} keys:", end="")
        _progress(read)
        rss_after_reads_bytes = server.rss_bytes()
        return {
            "values": key_count,
            "value_bytes": VALUE_BYTES,
            "load_puts_per_s": round(load_puts_per_s),
            "rss_idle_bytes": rss_idle_bytes,
            "rss_loaded_bytes": rss_loaded_bytes,
            "rss_after_reads_bytes": rss_after_reads_bytes,
            "rss_peak_bytes": server.rss_bytes("VmHWM"),
            "rss_bytes": max(rss_loaded_bytes, rss_after_reads_bytes),
            "get_pipe_128_ops_per_s": read.ops_per_s,
        }


async def run_server_side(
    root: Path,
    key_count: int,
    seconds: float,
    concurrencies: tuple[int, ...],
    memory_keys: int,
) -> tuple[list[Cell], dict[str, Any], float]:
    with running_server(root, "node") as server:
        await server.wait_ready()
        load_puts_per_s = await load_keys(server.address, key_count, os.urandom(VALUE_BYTES))
        _console.print(f"  preloaded {key_count:,} keys ({load_puts_per_s:,.0f} puts/s)")
        cells = await run_server_cells(server, key_count, seconds, concurrencies, concurrencies[-1])
    memory = await measure_memory(root, memory_keys, seconds)
    return cells, memory, load_puts_per_s


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "rocksdict": importlib.metadata.version("rocksdict"),
        "msgspec": importlib.metadata.version("msgspec"),
        "uvloop": importlib.metadata.version("uvloop"),
        "platform": platform.platform(),
        "source": source_version(),
    }


def source_version() -> str | None:
    """The git commit of the code measured (with "+dirty" if spindle/ has changes), so a
    number can be tied to the code that made it; None outside a git checkout."""
    package_dir = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=package_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def targets(cells: list[Cell], memory: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Each target with the best server cell at concurrency 128 (and the non-pipelined one,
    the strictest reading of "128 concurrent clients")."""
    results: list[dict[str, Any]] = []
    for op, target in (("put", PUT_OPS_PER_S_TARGET), ("get", GET_OPS_PER_S_TARGET)):
        at_128 = [c for c in cells if c.op == op and c.concurrency == 128]
        for label, chosen in (
            ("best mode", max(at_128, key=lambda c: c.ops_per_s, default=None)),
            ("conn mode", next((c for c in at_128 if c.mode == "conn"), None)),
        ):
            if chosen is None:
                continue
            results.append(
                {
                    "target": f"{op} ops/s at C=128 ({label}: {chosen.mode}) >= {target:,}",
                    "measured": chosen.ops_per_s,
                    "met": chosen.ops_per_s >= target,
                    "ratio_to_target": round(chosen.ops_per_s / target, 3),
                }
            )
    rss_bytes = int(memory["rss_bytes"])
    results.append(
        {
            "target": f"RSS with {memory['values']:,} values < {RSS_BYTES_TARGET / 1e6:.0f} MB"
            + (" (quick: fewer values than the target's 1M)" if quick else ""),
            "measured": rss_bytes,
            "met": rss_bytes < RSS_BYTES_TARGET if not quick else None,
            "ratio_to_target": round(rss_bytes / RSS_BYTES_TARGET, 3),
        }
    )
    return results


def print_report(
    cells: list[Cell], raw_cells: list[Cell], memory: dict[str, Any], goals: list[dict[str, Any]]
) -> None:
    table = Table(
        title="spindle bench kv (latency in ms; cpu % of one core: node/generator; "
        "ratio = server ops/s / raw ops/s)"
    )
    columns = ("layer", "op", "mode", "C", "ops/s", "p50", "p99", "p999", "cpu %", "raw ops/s")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("layer", "op") else "left")
    table.add_column("ratio", justify="right")
    for cell in [*cells, *raw_cells]:
        table.add_row(
            cell.layer,
            cell.op,
            cell.mode,
            str(cell.concurrency),
            f"{cell.ops_per_s:,.0f}",
            f"{cell.p50_ms:.3f}",
            f"{cell.p99_ms:.3f}",
            f"{cell.p999_ms:.3f}",
            ""
            if cell.server_cpu_pct is None
            else f"{cell.server_cpu_pct:.0f}/{cell.loadgen_cpu_pct:.0f}",
            f"{cell.raw_ops_per_s:,.0f}" if cell.raw_ops_per_s else "",
            f"{cell.server_over_raw:.3f}" if cell.server_over_raw else "",
            style="red" if cell.errors else None,
        )
    _console.print(table)
    _console.print(
        f"memory: {memory['values']:,} x {VALUE_BYTES} B values: RSS "
        f"{memory['rss_loaded_bytes'] / 1e6:.0f} MB loaded, "
        f"{memory['rss_after_reads_bytes'] / 1e6:.0f} MB after reads, peak "
        f"{memory['rss_peak_bytes'] / 1e6:.0f} MB (idle node {memory['rss_idle_bytes'] / 1e6:.0f}"
        " MB)",
        highlight=False,
    )
    for goal in goals:
        verdict = {True: "[green]PASS[/green]", False: "[red]MISS[/red]", None: "[dim]n/a[/dim]"}
        measured = goal["measured"]
        shown = f"{measured / 1e6:.0f} MB" if "RSS" in goal["target"] else f"{measured:,.0f}"
        _console.print(
            f"{verdict[goal['met']]} {goal['target']}: {shown} "
            f"({goal['ratio_to_target']:.0%} of target)"
        )


DEFINITIONS = {
    "concurrency": "requests in flight at once, each re-issued when answered (closed loop)",
    "conn": "not pipelined: C connections, one request outstanding on each",
    "pipe": "pipelined: one connection, C requests in flight (C=1 is the same as conn)",
    "client": "C coroutines in a closed loop over one AsyncClient (one multiplexed connection)",
    "load_generator": "one process, uvloop, frames written with msgspec (not AsyncClient), "
    "except the client cells",
    "put": "durable: the node acknowledges after its group commit's fsync",
    "scan": f"one page of {SCAN_PAGE_ITEMS} items from a random position (random cursor)",
    "mixed": f"{1 - MIXED_PUT_FRACTION:.0%} get / {MIXED_PUT_FRACTION:.0%} durable put",
    "raw": "rocksdict in this process, single-threaded, node engine options; put at C: C "
    "put(sync=False) then one flush_wal(True), each put's latency = its group's duration; "
    "mixed at C: C ops (10% put), one flush_wal(True) per group that wrote",
    "value_bytes": str(VALUE_BYTES),
}


def main(seconds: float = 2.0, output: str = "bench-results/kv.json", quick: bool = False) -> None:
    """Run the whole benchmark; print a table and write JSON to `output`."""
    concurrencies = QUICK_CONCURRENCIES if quick else CONCURRENCIES
    cell_s = min(seconds, QUICK_CELL_S_MAX) if quick else seconds
    key_count = QUICK_PRELOAD_KEYS if quick else PRELOAD_KEYS
    memory_keys = QUICK_MEMORY_KEYS if quick else MEMORY_KEYS
    started = time.perf_counter()
    load_before = os.getloadavg()
    _console.print(
        f"spindle bench kv: {cell_s:g} s per cell, {key_count:,} keys, "
        f"load average {load_before[0]:.2f}",
        highlight=False,
    )
    with tempfile.TemporaryDirectory(prefix="spindle-bench-") as tmp:
        root = Path(tmp)
        # Raw first and the million-value load last: each phase's disk writes would
        # otherwise slow the fsyncs of the next.
        raw_cells = run_raw(root, key_count, max(cell_s / 2, 0.25), concurrencies)
        for cell in raw_cells:
            _progress(cell)
        cells, memory, load_puts_per_s = uvloop.run(
            run_server_side(root, key_count, cell_s, concurrencies, memory_keys)
        )
    for cell in cells:
        raw = raw_for(raw_cells, cell)
        if raw is not None and raw.ops_per_s:
            cell.raw_ops_per_s = raw.ops_per_s
            cell.server_over_raw = round(cell.ops_per_s / raw.ops_per_s, 4)
    goals = targets(cells, memory, quick)
    print_report(cells, raw_cells, memory, goals)
    total_s = time.perf_counter() - started
    result = {
        "command": "spindle bench kv" + (" --quick" if quick else "") + f" --seconds {seconds:g}",
        "quick": quick,
        "seconds_per_cell": cell_s,
        "preloaded_keys": key_count,
        "preload_puts_per_s": round(load_puts_per_s),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": round(total_s, 1),
        "definitions": DEFINITIONS,
        "cells": [msgspec.to_builtins(cell) for cell in cells],
        "raw": [msgspec.to_builtins(cell) for cell in raw_cells],
        "memory": memory,
        "targets": goals,
    }
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _console.print(f"total {total_s:.0f} s; wrote {path}", highlight=False)
