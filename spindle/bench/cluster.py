"""`spindle bench cluster`: a 3-node Spindle cluster and a 3-member etcd cluster on this
machine, side by side, driven by the same load generator.

Cells: durable replicated put, strong get and eventual get, each at concurrency 16, 128
and 512, each run `runs` times alternating the two systems cell by cell (so drift on the
machine hits both alike); the table shows medians over runs and the ratios Spindle/etcd.

The load generator (`run_cell`) is closed-loop: C workers, each re-issuing its operation
as soon as the previous one is answered, on uvloop, split over `generator_processes`
child processes (each with its own connections and C/P workers). A cell has a warm-up,
then a measured window of `duration_s`; ops/s counts operations completed in the window,
p50/p99 come from every latency measured in it. It calls a driver's `put(key, value)` and
`get(key, consistency)`, so the same code drives both systems:
- Spindle: `spindle.kv.client.AsyncClient` (one multiplexed connection per node per
  generator process; it routes each key to its shard's node).
- etcd: its gRPC KV API with grpcio (`spindle.bench.etcd`, whose docstring says how).
The generator is Python and shares the machine's cores with both clusters: the cpu
columns give the generator's CPU and the servers' CPU (all processes of the system under
test) in % of one core, so a saturated generator shows. Keys are uniform over `key_count`
preloaded keys, values are `value_bytes` random bytes.

Durability: Spindle acknowledges a put after a majority has its log entry fsynced; etcd
(defaults) after a majority has its WAL entry fsynced.

Run: `python -m spindle.bench.cluster [--duration 5] [--runs 3] ...` (`--help`).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import queue
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import uvloop
from rich.console import Console
from rich.table import Table

from spindle.bench.etcd import EtcdCluster, EtcdDriver, EtcdError, etcd_version, process_cpu_s
from spindle.bench.kv import machine, percentile_ms, user_key
from spindle.localcluster import (
    LocalCluster,
    LocalClusterConfig,
    NodePorts,
    StatusPredicate,
    every_node,
    node_reports_ready,
    server_supports_cluster_flags,
)

System = Literal["spindle", "etcd"]
Op = Literal["put", "get_strong", "get_eventual"]
Consistency = Literal["strong", "eventual"]

SYSTEMS: tuple[System, ...] = ("spindle", "etcd")
OPS: tuple[Op, ...] = ("put", "get_strong", "get_eventual")
CONCURRENCIES = (16, 128, 512)
QUICK_CONCURRENCIES = (16, 512)
DURATION_S = 5.0
WARMUP_S = 1.0
RUNS = 3
GENERATOR_PROCESSES = 2
KEY_COUNT = 10_000
VALUE_BYTES = 100
LOAD_CONCURRENCY = 128
"""Workers writing the preloaded keys."""
SPINDLE_NODES = 3

SETUP_TIMEOUT_S = 60.0
"""How long generator processes may take to start, connect and answer a first request."""
DRAIN_TIMEOUT_S = 15.0
"""How long workers may take to finish their last request after the window closed."""
LOAD_TIMEOUT_S = 600.0
ERROR_PAUSE_S = 0.01
"""A worker whose request failed waits this long before its next (no hot error loop)."""
SAMPLES_PER_PROCESS_MAX = 10_000_000
"""Latencies one generator process keeps (80 MB); operations beyond are counted only."""
CONCURRENCY_MAX = 4_096

PUT_THROUGHPUT_RATIO_TARGET = 1.0
"""Spindle's put ops/s >= etcd's."""
PUT_P99_RATIO_TARGET = 2.0
"""Spindle's put p99 <= 2x etcd's."""

SPINDLE_READY: StatusPredicate = every_node(node_reports_ready)
"""When the Spindle cluster may be measured, from every node's /status (each generator
process also waits for a first successful request)."""

_console = Console(width=None if sys.stdout.isatty() else 140)


# -- drivers ------------------------------------------------------------------------------


class Driver(Protocol):
    """One system's client, as the load generator uses it (in one event loop)."""

    async def connect(self) -> None: ...

    async def put(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes, consistency: Consistency) -> bytes | None: ...

    async def close(self) -> None: ...


class SpindleDriver:
    """Spindle through `AsyncClient`, seeded with node 1; it routes keys itself."""

    def __init__(self, addresses: list[str]) -> None:
        from spindle.kv.client import AsyncClient

        self._client = AsyncClient(addresses[0])

    async def connect(self) -> None:
        await self._client.connect()

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.put(key, value)

    async def get(self, key: bytes, consistency: Consistency) -> bytes | None:
        return await self._client.get(key, consistency=consistency)

    async def close(self) -> None:
        await self._client.close()


@dataclass(frozen=True)
class DriverSpec:
    """What a generator process needs to build its own driver (picklable)."""

    system: System
    addresses: list[str]
    leader: str | None = None
    """etcd: the leader's endpoint."""
    etcd_serializable_reads: Literal["all", "leader"] = "leader"
    """etcd: where serializable ("eventual") ranges go; on the 2-core machine the leader
    alone served them faster than round-robin over all members (13.0k vs 7.3k/s at C=16)."""

    def make(self) -> Driver:
        if self.system == "spindle":
            return SpindleDriver(self.addresses)
        assert self.leader is not None
        return EtcdDriver(self.addresses, self.leader, self.etcd_serializable_reads)


# -- the load generator -------------------------------------------------------------------


@dataclass(frozen=True)
class CellPlan:
    op: Op | Literal["load"]
    """"load" writes keys 0..key_count-1 once each (the preload), not timed by window."""
    concurrency: int
    duration_s: float
    warmup_s: float
    key_count: int
    value_bytes: int
    seed: int


@dataclass
class ProcessResult:
    """What one generator process measured in its window."""

    ops: int
    samples: bytes
    """array('q') of latencies in ns."""
    errors: dict[str, int]
    cpu_s: float
    """CPU (user + system, all threads) the process used in the window."""
    window_s: float
    error: str | None = None


@dataclass
class Cell:
    """One measured cell: a system, an operation, a concurrency (one run)."""

    system: str
    op: str
    concurrency: int
    run: int
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    generator_cpu_pct: float
    """The generator processes' CPU in the window, in % of one core (summed)."""
    server_cpu_pct: float
    """The system's server processes' CPU in the window, in % of one core (summed)."""
    generator_processes: int


class _Window:
    def __init__(self) -> None:
        self.running = True
        self.recording = False
        self.ops = 0
        self.samples = array.array("q")
        self.errors: Counter[str] = Counter()


async def _worker(
    driver: Driver, plan: CellPlan, window: _Window, rng: random.Random, value: bytes
) -> None:
    op, key_count, samples = plan.op, plan.key_count, window.samples
    consistency: Consistency = "strong" if op == "get_strong" else "eventual"
    perf_counter_ns = time.perf_counter_ns
    while window.running:
        key = user_key(int(rng.random() * key_count))
        started_ns = perf_counter_ns()
        try:
            if op == "put":
                await driver.put(key, value)
            else:
                await driver.get(key, consistency)
        except Exception as error:
            if window.recording:
                window.errors[type(error).__name__] += 1
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        if window.recording:
            window.ops += 1
            if len(samples) < SAMPLES_PER_PROCESS_MAX:
                samples.append(perf_counter_ns() - started_ns)


async def _load(driver: Driver, keys: list[bytes], concurrency: int, value: bytes) -> None:
    pending = iter(keys)

    async def writer() -> None:
        for key in pending:
            await driver.put(key, value)

    await asyncio.gather(*(writer() for _ in range(concurrency)))


async def _first_success(driver: Driver, deadline: float) -> None:
    """Until a first request succeeds (the cluster may still be electing a leader)."""
    while True:
        try:
            await driver.get(user_key(0), "strong")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _generate(
    spec: DriverSpec, plan: CellPlan, index: int, processes: int, barrier: Any
) -> ProcessResult:
    """One generator process's part of a cell: connect, meet the others at the barrier,
    warm up, measure, drain."""
    driver = spec.make()
    await asyncio.wait_for(driver.connect(), SETUP_TIMEOUT_S)
    await _first_success(driver, time.monotonic() + SETUP_TIMEOUT_S)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, barrier.wait, SETUP_TIMEOUT_S)
    value = random.Random(plan.seed).randbytes(plan.value_bytes)
    if plan.op == "load":
        keys = [user_key(i) for i in range(index, plan.key_count, processes)]
        started_cpu, started = _cpu_s(), time.perf_counter()
        await asyncio.wait_for(
            _load(driver, keys, max(1, plan.concurrency // processes), value), LOAD_TIMEOUT_S
        )
        await driver.close()
        return ProcessResult(
            len(keys), b"", {}, _cpu_s() - started_cpu, time.perf_counter() - started
        )
    window = _Window()
    rng = random.Random(plan.seed * 1_000 + index)
    workers = plan.concurrency // processes + (index < plan.concurrency % processes)
    tasks = [asyncio.create_task(_worker(driver, plan, window, rng, value)) for _ in range(workers)]
    await asyncio.sleep(plan.warmup_s)
    window.recording = True
    started_cpu, started = _cpu_s(), time.perf_counter()
    await asyncio.sleep(plan.duration_s)
    window.recording = False
    window.running = False
    cpu_s, window_s = _cpu_s() - started_cpu, time.perf_counter() - started
    _, still = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in still:
        task.cancel()
    await driver.close()
    return ProcessResult(window.ops, window.samples.tobytes(), dict(window.errors), cpu_s, window_s)


def _generator_main(
    spec: DriverSpec,
    plan: CellPlan,
    index: int,
    processes: int,
    barrier: Any,
    results: Any,
) -> None:
    """A generator process: runs its part of the cell, puts (index, ProcessResult)."""
    try:
        result = uvloop.run(_generate(spec, plan, index, processes, barrier))
    except BaseException:
        barrier.abort()
        result = ProcessResult(0, b"", {}, 0.0, 0.0, error=traceback.format_exc())
    results.put((index, result))


def _gather(children: list[Any], results: Any, deadline: float) -> list[ProcessResult]:
    """Every child's result; raises if one died without giving it, or at the deadline."""
    gathered: list[ProcessResult] = []
    while len(gathered) < len(children):
        try:
            gathered.append(results.get(timeout=1.0)[1])
            continue
        except queue.Empty:
            pass
        died = [child.exitcode for child in children if child.exitcode not in (None, 0)]
        if died:
            raise RuntimeError(f"a generator process died (exit status {died[0]})")
        if time.monotonic() > deadline:
            raise RuntimeError("a generator process gave no result in time")
    return gathered


def run_cell(
    spec: DriverSpec,
    plan: CellPlan,
    processes: int,
    server_cpu_s: Callable[[], float],
    run: int = 0,
) -> Cell:
    """Run one cell with `processes` generator processes; `server_cpu_s` gives the CPU
    seconds the system's servers have used so far (sampled around the window)."""
    if not 1 <= plan.concurrency <= CONCURRENCY_MAX:
        raise ValueError(f"concurrency must be in 1..{CONCURRENCY_MAX}")
    processes = max(1, min(processes, plan.concurrency))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results: Any = context.Queue()
    children = [
        context.Process(
            target=_generator_main,
            args=(spec, plan, index, processes, barrier, results),
            daemon=True,
        )
        for index in range(processes)
    ]
    for child in children:
        child.start()
    server_cpu = 0.0
    window_s = 0.0
    try:
        try:
            barrier.wait(SETUP_TIMEOUT_S + 5.0)
        except threading.BrokenBarrierError:
            pass  # a child failed: its result says why
        else:
            if plan.op != "load":
                time.sleep(plan.warmup_s)
                cpu_before, started = server_cpu_s(), time.perf_counter()
                time.sleep(plan.duration_s)
                server_cpu = server_cpu_s() - cpu_before
                window_s = time.perf_counter() - started
        timeout_s = (
            (LOAD_TIMEOUT_S if plan.op == "load" else plan.warmup_s + plan.duration_s)
            + DRAIN_TIMEOUT_S
            + SETUP_TIMEOUT_S
        )
        gathered = _gather(children, results, time.monotonic() + timeout_s)
    finally:
        for child in children:
            child.join(5.0)
            if child.is_alive():
                child.kill()
                child.join()
    failures = [result.error for result in gathered if result.error]
    if failures:
        raise RuntimeError(f"{spec.system} {plan.op} C={plan.concurrency}:\n{failures[0]}")
    samples = array.array("q")
    errors: Counter[str] = Counter()
    for result in gathered:
        samples.frombytes(result.samples)
        errors.update(result.errors)
    latencies = sorted(samples)
    seconds = statistics.mean(result.window_s for result in gathered)
    ops = sum(result.ops for result in gathered)
    generator_cpu_s = sum(result.cpu_s for result in gathered)
    if plan.op == "load":
        window_s = seconds = max(result.window_s for result in gathered)
    return Cell(
        system=spec.system,
        op=plan.op,
        concurrency=plan.concurrency,
        run=run,
        ops=ops,
        seconds=round(seconds, 3),
        ops_per_s=round(ops / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile_ms(latencies, 0.50), 3),
        p99_ms=round(percentile_ms(latencies, 0.99), 3),
        errors=dict(errors),
        generator_cpu_pct=round(100 * generator_cpu_s / seconds, 1) if seconds else 0.0,
        server_cpu_pct=round(100 * server_cpu / window_s, 1) if window_s else 0.0,
        generator_processes=processes,
    )


# -- the systems --------------------------------------------------------------------------


class RunningSystem:
    """A started system: how to drive it and how much CPU its servers used."""

    def __init__(self, spec: DriverSpec, pids: Callable[[], list[int]], note: str) -> None:
        self.spec = spec
        self._pids = pids
        self.note = note

    def server_cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self._pids())


def start_spindle(root: Path, nodes: int) -> tuple[LocalCluster, RunningSystem]:
    clustered = server_supports_cluster_flags()
    if not clustered and nodes != 1:
        _console.print(
            "[yellow]`spindle server` has no --cluster-size yet: measuring ONE node, "
            "not a replicated cluster[/yellow]"
        )
        nodes = 1
    config = LocalClusterConfig(
        root=root / "spindle",
        size=nodes,
        ports=NodePorts.free(nodes),
        cluster_flags=clustered,
    )
    cluster = LocalCluster(config)
    cluster.start()
    try:
        cluster.wait_ready(SETUP_TIMEOUT_S, SPINDLE_READY)
    except BaseException:
        cluster.stop()
        raise
    note = f"{nodes} node(s), data and logs in {config.root}"
    system = RunningSystem(
        DriverSpec("spindle", cluster.addresses),
        lambda: [pid for pid in cluster.pids if pid is not None],
        note,
    )
    return cluster, system


def start_etcd(root: Path) -> tuple[EtcdCluster, RunningSystem]:
    if importlib.util.find_spec("grpc") is None:
        raise EtcdError(
            "grpcio is missing (etcd is driven through its gRPC API): "
            "pip install -e '.[bench]' (or `make bench`)"
        )
    cluster = EtcdCluster(root / "etcd")
    cluster.start()
    try:
        leader = cluster.endpoints[cluster.leader_index()]
    except BaseException:
        cluster.stop()
        raise
    system = RunningSystem(
        DriverSpec("etcd", cluster.endpoints, leader),
        lambda: cluster.pids,
        f"{cluster.size} members, etcd {etcd_version(cluster.binary)}, leader {leader}",
    )
    return cluster, system


# -- the run ------------------------------------------------------------------------------


@dataclass
class Row:
    """Medians over runs of one operation at one concurrency, both systems."""

    op: str
    concurrency: int
    spindle_ops_per_s: float | None = None
    etcd_ops_per_s: float | None = None
    spindle_p50_ms: float | None = None
    spindle_p99_ms: float | None = None
    etcd_p50_ms: float | None = None
    etcd_p99_ms: float | None = None
    throughput_ratio: float | None = None
    """Spindle ops/s / etcd ops/s."""
    p99_ratio: float | None = None
    """Spindle p99 / etcd p99."""
    spindle_cpu_pct: tuple[float, float] | None = None
    """(generator, servers) CPU in % of one core, medians."""
    etcd_cpu_pct: tuple[float, float] | None = None
    errors: dict[str, int] = field(default_factory=dict)


def summarize(cells: list[Cell]) -> list[Row]:
    rows: list[Row] = []
    order: dict[str, int] = {op: index for index, op in enumerate(OPS)}
    keys = sorted({(c.op, c.concurrency) for c in cells}, key=lambda k: (order.get(k[0], 0), k[1]))
    for op, concurrency in keys:
        row = Row(op, concurrency)
        for system in SYSTEMS:
            mine = [
                c for c in cells if (c.system, c.op, c.concurrency) == (system, op, concurrency)
            ]
            if not mine:
                continue
            ops_per_s = statistics.median(c.ops_per_s for c in mine)
            p50 = statistics.median(c.p50_ms for c in mine)
            p99 = statistics.median(c.p99_ms for c in mine)
            cpu = (
                statistics.median(c.generator_cpu_pct for c in mine),
                statistics.median(c.server_cpu_pct for c in mine),
            )
            for cell in mine:
                for name, count in cell.errors.items():
                    row.errors[f"{system}:{name}"] = row.errors.get(f"{system}:{name}", 0) + count
            if system == "spindle":
                row.spindle_ops_per_s, row.spindle_p50_ms, row.spindle_p99_ms = ops_per_s, p50, p99
                row.spindle_cpu_pct = cpu
            else:
                row.etcd_ops_per_s, row.etcd_p50_ms, row.etcd_p99_ms = ops_per_s, p50, p99
                row.etcd_cpu_pct = cpu
        if row.spindle_ops_per_s is not None and row.etcd_ops_per_s:
            row.throughput_ratio = round(row.spindle_ops_per_s / row.etcd_ops_per_s, 3)
        if row.spindle_p99_ms is not None and row.etcd_p99_ms:
            row.p99_ratio = round(row.spindle_p99_ms / row.etcd_p99_ms, 3)
        rows.append(row)
    return rows


def run_cluster_bench(
    *,
    duration_s: float = DURATION_S,
    runs: int = RUNS,
    concurrencies: Sequence[int] = CONCURRENCIES,
    systems: Sequence[System] = SYSTEMS,
    ops: Sequence[Op] = OPS,
    generator_processes: int = GENERATOR_PROCESSES,
    warmup_s: float = WARMUP_S,
    key_count: int = KEY_COUNT,
    value_bytes: int = VALUE_BYTES,
    spindle_nodes: int = SPINDLE_NODES,
    root: Path | None = None,
) -> tuple[list[Row], list[Cell], dict[str, str]]:
    """Start the systems, preload, run every cell `runs` times (systems alternating cell
    by cell, their order swapped each run); returns (median rows, every cell, notes)."""
    for system in systems:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}")
    cells: list[Cell] = []
    notes: dict[str, str] = {}
    tmp = tempfile.mkdtemp(prefix="spindle-bench-cluster-", dir=root)
    failed = True
    try:
        started: dict[System, RunningSystem] = {}
        stoppers: list[Callable[[], None]] = []
        try:
            for system in systems:
                if system == "spindle":
                    spindle_cluster, running = start_spindle(Path(tmp), spindle_nodes)
                    stoppers.append(spindle_cluster.stop)
                else:
                    etcd_cluster, running = start_etcd(Path(tmp))
                    stoppers.append(etcd_cluster.stop)
                started[system] = running
                notes[system] = running.note
                _console.print(f"{system}: {running.note}", highlight=False)
            for system, running in started.items():
                plan = CellPlan("load", LOAD_CONCURRENCY, 0.0, 0.0, key_count, value_bytes, 0)
                load = run_cell(running.spec, plan, generator_processes, running.server_cpu_s)
                _console.print(
                    f"{system}: preloaded {key_count:,} keys ({load.ops_per_s:,.0f} puts/s)",
                    highlight=False,
                )
            order = list(started)
            for run in range(runs):
                for op in ops:
                    for concurrency in concurrencies:
                        for system in order:
                            running = started[system]
                            plan = CellPlan(
                                op,
                                concurrency,
                                duration_s,
                                warmup_s,
                                key_count,
                                value_bytes,
                                seed=run * 10_000 + concurrency,
                            )
                            cell = run_cell(
                                running.spec, plan, generator_processes, running.server_cpu_s, run
                            )
                            _progress(cell, runs)
                            cells.append(cell)
                order.reverse()
            failed = False
        finally:
            for stop in reversed(stoppers):
                stop()
    finally:
        if failed:
            _console.print(f"[red]failed[/red]: data and logs kept in {tmp}", highlight=False)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summarize(cells), cells, notes


def _progress(cell: Cell, runs: int) -> None:
    errors = f"  [red]errors {cell.errors}[/red]" if cell.errors else ""
    _console.print(
        f"  run {cell.run + 1}/{runs} {cell.system:7} {cell.op:12} C={cell.concurrency:<4}"
        f"{cell.ops_per_s:>9,.0f} ops/s  p50 {cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:7.2f} ms  "
        f"cpu gen {cell.generator_cpu_pct:4.0f}% servers {cell.server_cpu_pct:4.0f}%{errors}",
        highlight=False,
    )


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _verdict(row: Row) -> str:
    if row.op != "put" or row.throughput_ratio is None or row.p99_ratio is None:
        return ""
    ok = row.throughput_ratio >= PUT_THROUGHPUT_RATIO_TARGET and (
        row.p99_ratio <= PUT_P99_RATIO_TARGET
    )
    return "[green]ok[/green]" if ok else "[red]miss[/red]"


def print_table(rows: list[Row], runs: int, generator_processes: int) -> None:
    table = Table(
        title=f"spindle bench cluster: medians of {runs} run(s); latency in ms; cpu = "
        f"generator/servers in % of one core ({generator_processes} generator process(es), "
        f"{os.cpu_count()} cpus)"
    )
    table.caption = (
        "S = Spindle, E = etcd; S/E = Spindle ops/s / etcd ops/s; p99 S/E likewise; "
        "target (put): S/E >= 1 and p99 S/E <= 2"
    )
    columns = (
        "op", "C", "S ops/s", "E ops/s", "S/E", "S p50", "S p99", "E p50", "E p99",
        "p99 S/E", "S cpu", "E cpu", "target",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "op" else "right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.op,
            str(row.concurrency),
            _num(row.spindle_ops_per_s, ",.0f"),
            _num(row.etcd_ops_per_s, ",.0f"),
            _num(row.throughput_ratio, ".2f"),
            _num(row.spindle_p50_ms, ".2f"),
            _num(row.spindle_p99_ms, ".2f"),
            _num(row.etcd_p50_ms, ".2f"),
            _num(row.etcd_p99_ms, ".2f"),
            _num(row.p99_ratio, ".2f"),
            "" if row.spindle_cpu_pct is None else "{:.0f}/{:.0f}".format(*row.spindle_cpu_pct),
            "" if row.etcd_cpu_pct is None else "{:.0f}/{:.0f}".format(*row.etcd_cpu_pct),
            _verdict(row),
            style="red" if row.errors else None,
        )
    _console.print(table)
    for row in rows:
        if row.errors:
            _console.print(f"[red]errors[/red] {row.op} C={row.concurrency}: {row.errors}")


def main(
    duration_s: float = DURATION_S,
    runs: int = RUNS,
    generator_processes: int = GENERATOR_PROCESSES,
    systems: str = "spindle,etcd",
    output: str = "bench-results/cluster.json",
    quick: bool = False,
    concurrency: str = ",".join(map(str, CONCURRENCIES)),
) -> dict[str, Any]:
    """Run the benchmark, print the table, write JSON to `output`; returns the report.
    `systems` and `concurrency` are comma-separated lists; `quick`: C=16 and 512, 2 s
    cells, one run (a smoke test)."""
    chosen: list[System] = []
    for name in systems.split(","):
        if name.strip() not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
        chosen.append(name.strip())  # type: ignore[arg-type]
    try:
        concurrencies = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise SystemExit(
            f"--concurrency takes numbers separated by commas: {concurrency!r}"
        ) from None
    if quick:
        concurrencies = QUICK_CONCURRENCIES
        duration_s, runs = min(duration_s, 2.0), 1
    load_before = os.getloadavg()
    started = time.perf_counter()
    _console.print(
        f"spindle bench cluster: {duration_s:g} s cells after {WARMUP_S:g} s warm-up, "
        f"{runs} run(s), C={','.join(map(str, concurrencies))}, {generator_processes} "
        f"generator process(es), load average {load_before[0]:.2f}",
        highlight=False,
    )
    try:
        rows, cells, notes = run_cluster_bench(
            duration_s=duration_s,
            runs=runs,
            concurrencies=concurrencies,
            systems=chosen,
            generator_processes=generator_processes,
        )
    except EtcdError as error:
        _console.print(f"[red]etcd:[/red] {error}")
        raise SystemExit(1) from None
    print_table(rows, runs, generator_processes)
    total_s = time.perf_counter() - started
    report = {
        "benchmark": "cluster",
        "command": f"spindle bench cluster --duration {duration_s:g} --runs {runs} "
        f"--generator-processes {generator_processes} --systems {','.join(chosen)} "
        f"--concurrency {','.join(map(str, concurrencies))}" + (" --quick" if quick else ""),
        "definitions": {
            "concurrency": "requests in flight at once, each re-issued when answered",
            "put": "durable and replicated: acknowledged once a majority fsynced it",
            "get_strong": "spindle: linearizable read; etcd: Range (linearizable, leader)",
            "get_eventual": "spindle: eventual read; etcd: Range serializable=true, "
            "round-robin over members",
            "generator": f"{generator_processes} process(es), uvloop, closed loop; spindle "
            "through AsyncClient, etcd through grpcio on its gRPC KV API",
            "cpu_pct": "% of one core in the window: generator processes, server processes",
        },
        "key_count": KEY_COUNT,
        "value_bytes": VALUE_BYTES,
        "warmup_s": WARMUP_S,
        "duration_s": duration_s,
        "systems": notes,
        "machine": {
            **machine(),
            "grpcio": _version("grpcio"),
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": round(total_s, 1),
        "rows": [asdict(row) for row in rows],
        "cells": [asdict(cell) for cell in cells],
    }
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    _console.print(f"total {total_s:.0f} s; wrote {path}", highlight=False)
    return report


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spindle.bench.cluster",
        description="Spindle (3 nodes) vs etcd (3 members): put, strong get, eventual get.",
    )
    parser.add_argument("--duration", type=float, default=DURATION_S, help="s per cell")
    parser.add_argument("--runs", type=int, default=RUNS, help="medians over runs")
    parser.add_argument(
        "--generator-processes", type=int, default=GENERATOR_PROCESSES, help="load generators"
    )
    parser.add_argument("--systems", default="spindle,etcd", help="spindle,etcd or one of them")
    parser.add_argument("--output", default="bench-results/cluster.json")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    parser.add_argument("--quick", action="store_true", help="C=16,512, 2 s cells, one run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # Through the module's own name, so what generator processes unpickle is
    # spindle.bench.cluster's, not __main__'s.
    from spindle.bench import cluster as _module

    arguments = _module._parse(None)
    _module.main(
        duration_s=arguments.duration,
        runs=arguments.runs,
        generator_processes=arguments.generator_processes,
        systems=arguments.systems,
        output=arguments.output,
        quick=arguments.quick,
        concurrency=arguments.concurrency,
    )
