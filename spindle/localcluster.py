"""A local cluster of real `spindle server` processes on one machine.

Used by `spindle bench cluster`, by real-process tests (SIGKILL, SIGSTOP, restarts) and by
hand (`python -m spindle.localcluster --size 3`):

    with LocalCluster(LocalClusterConfig(root=Path("/tmp/c"), ports=NodePorts.free(3))) as c:
        c.wait_ready(timeout_s=30)
        print(c.addresses)          # ["127.0.0.1:41234", ...]
        c.pause(2); c.resume(2); c.restart(3)

Node ids are 1-based everywhere (`--node-id`, `<root>/node<N>`, `kill(node_id)`). Node 1
bootstraps the cluster (`--cluster-size K`); nodes 2..K join it (`--join` node 1's
address), on every start, restarts included. All share one cluster secret, made once and
kept in `<root>/cluster-secret` (mode 0600), passed as SPINDLE_CLUSTER_SECRET (the
environment of `--cluster-secret`, so it does not show in `ps`). Each child's output goes to
`<log_dir>/node<N>.log` (appended across restarts); each runs in its own session, so a
Ctrl-C at the terminal reaches only this process, which stops the children in order.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

START_TIMEOUT_S = 30.0
"""How long a node may take from exec to answering /health with 200."""
STOP_TIMEOUT_S = 15.0
"""How long a node may take to exit after SIGTERM before it gets SIGKILL."""
KILL_WAIT_S = 10.0
"""How long to wait for a SIGKILLed process to be reaped."""
POLL_INTERVAL_S = 0.05
READY_POLL_INTERVAL_S = 0.2
STATUS_SHOWN_CHARS = 500
HTTP_PROBE_TIMEOUT_S = 1.0
LOG_TAIL_LINES = 30
SIZE_MAX = 16
"""Nodes one local cluster may have (ports and processes are finite)."""

DEFAULT_BASE_PORT = 7379
DEFAULT_BASE_HTTP_PORT = 7380
DEFAULT_BASE_RESP_PORT = 6380
DEFAULT_PORT_STRIDE = 10
"""Node i's binary and HTTP ports are the base + 10 * (i - 1); RESP ports are consecutive."""

SERVER_ENV_VARS = frozenset(
    f"SPINDLE_{name}"
    for name in (
        "DATA_DIR", "HOST", "PORT", "HTTP_PORT", "RESP_PORT",
        "NODE_ID", "JOIN", "CLUSTER_SIZE", "CLUSTER_SECRET",
    )
)  # fmt: skip
"""`spindle server` settings read from the environment, which the children must not
inherit from this process: each node's come from its command line."""

SECRET_FILE = "cluster-secret"
SECRET_BYTES = 16

StatusPredicate = Callable[[dict[int, dict[str, Any]]], bool]
"""Given the /status of each node that should be running, by node id: is the cluster ready?"""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open at once while
    asked for, so the kernel cannot hand out one twice)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


@dataclass(frozen=True)
class NodePorts:
    """The three listening ports of one node."""

    port: int
    """Binary protocol (clients and, once clustered, peers)."""
    http_port: int
    """HTTP: /health, /status, /metrics."""
    resp_port: int
    """Redis protocol."""

    @staticmethod
    def default(size: int) -> list[NodePorts]:
        """`spindle up`'s ports: node i on 7379+10(i-1), HTTP 7380+10(i-1), RESP 6380+(i-1)."""
        return [
            NodePorts(
                DEFAULT_BASE_PORT + DEFAULT_PORT_STRIDE * index,
                DEFAULT_BASE_HTTP_PORT + DEFAULT_PORT_STRIDE * index,
                DEFAULT_BASE_RESP_PORT + index,
            )
            for index in range(size)
        ]

    @staticmethod
    def free(size: int, host: str = "127.0.0.1") -> list[NodePorts]:
        """Free ports for `size` nodes (for tests and benchmarks)."""
        ports = free_ports(3 * size, host)
        return [NodePorts(*ports[3 * index : 3 * index + 3]) for index in range(size)]


@dataclass
class LocalClusterConfig:
    root: Path
    """Data dirs (`node<N>`), the cluster secret and, by default, the logs live here."""
    size: int = 3
    host: str = "127.0.0.1"
    ports: list[NodePorts] | None = None
    """One entry per node; None: `NodePorts.default(size)` (the ports of `spindle up`)."""
    extra_args: list[str] = field(default_factory=list)
    """Appended to every node's `spindle server` command line."""
    log_dir: Path | None = None
    """Where `node<N>.log` go; None: `root`."""
    cluster_secret: str | None = None
    """None: read `<root>/cluster-secret`, or make it there on first start."""
    loopback_default: bool = True
    """False passes --no-loopback-default (tokens required even on loopback)."""
    cluster_flags: bool = True
    """Pass --node-id/--cluster-size/--cluster-secret/--join. False only runs a single
    node of a `spindle server` that predates those flags."""
    start_timeout_s: float = START_TIMEOUT_S
    stop_timeout_s: float = STOP_TIMEOUT_S
    env: dict[str, str] | None = None
    """Extra environment for the children (on top of this process's)."""


def status_returns_json(statuses: dict[int, dict[str, Any]]) -> bool:
    """The default readiness predicate: every node answered /status with a JSON object."""
    return True


def node_reports_ready(status: dict[str, Any]) -> bool:
    """A node's /status says its cluster is ready (`cluster.ready`: the default keyspace
    exists with all its replicas); a node without a `cluster` section (a single node of
    a server that predates replication) is ready once it answers."""
    cluster = status.get("cluster")
    return cluster is None or (isinstance(cluster, dict) and cluster.get("ready") is True)


def every_node(ready: Callable[[dict[str, Any]], bool]) -> StatusPredicate:
    """Lift a per-node predicate on /status to the whole cluster."""
    return lambda statuses: all(ready(status) for status in statuses.values())


class ClusterError(RuntimeError):
    """A node did not start, answer or stop in time; the message carries its log's tail."""


class LocalCluster:
    """N `spindle server` processes on this machine; see the module docstring."""

    def __init__(self, config: LocalClusterConfig) -> None:
        if not 1 <= config.size <= SIZE_MAX:
            raise ValueError(f"size must be in 1..{SIZE_MAX}, got {config.size}")
        if not config.cluster_flags and config.size != 1:
            raise ValueError("cluster_flags=False runs a single node only")
        ports = config.ports if config.ports is not None else NodePorts.default(config.size)
        if len(ports) != config.size:
            raise ValueError(f"{len(ports)} port entries for {config.size} nodes")
        self.config = config
        self.node_ports = list(ports)
        self.root = config.root
        self.log_dir = config.log_dir if config.log_dir is not None else config.root
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * config.size
        self._secret: str | None = config.cluster_secret
        self._down: set[int] = set(self.node_ids)
        """Nodes not started yet, or stopped or killed on purpose (not a failure)."""

    # -- addresses ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    @property
    def addresses(self) -> list[str]:
        """Binary-protocol "host:port" of each node (index 0 is node 1)."""
        return [f"{self.config.host}:{ports.port}" for ports in self.node_ports]

    @property
    def resp_ports(self) -> list[int]:
        return [ports.resp_port for ports in self.node_ports]

    @property
    def http_ports(self) -> list[int]:
        return [ports.http_port for ports in self.node_ports]

    @property
    def pids(self) -> list[int | None]:
        """Each node's pid while its process runs (or is paused), else None."""
        return [
            process.pid if process is not None and process.poll() is None else None
            for process in self._processes
        ]

    def address(self, node_id: int) -> str:
        return self.addresses[self._index(node_id)]

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"node{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.log_dir / f"node{node_id}.log"

    def is_running(self, node_id: int) -> bool:
        process = self._processes[self._index(node_id)]
        return process is not None and process.poll() is None

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every node; node 1 first (it bootstraps), then the others at once. Returns
        when every node answers /health with 200; raises ClusterError (after stopping what
        it started) if one exits or does not answer within `start_timeout_s`."""
        try:
            self._spawn(1)
            self._wait_healthy(1)
            for node_id in self.node_ids[1:]:
                self._spawn(node_id)
            for node_id in self.node_ids[1:]:
                self._wait_healthy(node_id)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every running node (paused ones are resumed so they can act on it), wait
        up to `stop_timeout_s` for all, then SIGKILL those still there."""
        self._down.update(self.node_ids)
        running = [p for p in self._processes if p is not None and p.poll() is None]
        for process in running:
            _signal(process, signal.SIGTERM)
            _signal(process, signal.SIGCONT)
        deadline = time.monotonic() + self.config.stop_timeout_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait(KILL_WAIT_S)

    def stop_node(self, node_id: int) -> int | None:
        """Stop one node gracefully (SIGTERM, then SIGKILL after `stop_timeout_s`); its
        exit status, or None if it was not running."""
        process = self._processes[self._index(node_id)]
        self._down.add(node_id)
        if process is None or process.poll() is not None:
            return None
        _signal(process, signal.SIGTERM)
        _signal(process, signal.SIGCONT)
        try:
            return process.wait(self.config.stop_timeout_s)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            return process.wait(KILL_WAIT_S)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash) and reap it."""
        process = self._processes[self._index(node_id)]
        self._down.add(node_id)
        if process is not None and process.poll() is None:
            _signal(process, signal.SIGKILL)
            process.wait(KILL_WAIT_S)

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing (a hung machine)."""
        _signal(self._running(node_id), signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        _signal(self._running(node_id), signal.SIGCONT)

    def restart(self, node_id: int, *, wait: bool = True) -> None:
        """Start a node again with the same arguments (stopping it first if it runs); a
        joining node passes --join again. With `wait`, returns once /health is 200."""
        self.stop_node(node_id)
        self._spawn(node_id)
        if wait:
            self._wait_healthy(node_id)

    def wait_ready(
        self, timeout_s: float = START_TIMEOUT_S, ready: StatusPredicate = status_returns_json
    ) -> dict[int, dict[str, Any]]:
        """Poll the HTTP /status of every node that should be running (all but those
        stopped or killed on purpose) until each returns a JSON object and
        `ready(statuses)` holds; returns the statuses by node id. Raises ClusterError if a
        node died on its own, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses: dict[int, dict[str, Any]] = {}
            missing: dict[int, str] = {}
            for node_id in self.node_ids:
                if node_id in self._down:
                    continue
                self._check_alive(node_id)
                try:
                    statuses[node_id] = self.status(node_id)
                except (OSError, ValueError, http.client.HTTPException) as error:
                    missing[node_id] = f"no status: {error}"
            if not missing and ready(statuses):
                return statuses
            if time.monotonic() > deadline:
                shown = "\n".join(
                    f"  node{node_id}: "
                    + (missing[node_id] if node_id in missing else json.dumps(statuses[node_id]))[
                        :STATUS_SHOWN_CHARS
                    ]
                    for node_id in sorted({*statuses, *missing})
                )
                raise ClusterError(f"cluster not ready within {timeout_s} s; last:\n{shown}")
            time.sleep(READY_POLL_INTERVAL_S)

    def status(self, node_id: int) -> dict[str, Any]:
        """One node's GET /status as a dict (raises on no answer or non-JSON)."""
        code, body = self._http_get(node_id, "/status")
        if code != 200:
            raise ValueError(f"/status answered {code}")
        status = json.loads(body)
        if not isinstance(status, dict):
            raise ValueError("/status is not a JSON object")
        return status

    def log_tail(self, node_id: int, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path(node_id).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- plumbing -------------------------------------------------------------------------

    def _index(self, node_id: int) -> int:
        if not 1 <= node_id <= self.size:
            raise ValueError(f"node id must be in 1..{self.size}, got {node_id}")
        return node_id - 1

    def _running(self, node_id: int) -> subprocess.Popen[bytes]:
        process = self._processes[self._index(node_id)]
        if process is None or process.poll() is not None:
            raise ClusterError(f"node{node_id} is not running")
        return process

    def cluster_secret(self) -> str:
        """The shared secret: from the config, else `<root>/cluster-secret` (made, mode
        0600, on first use and kept for restarts)."""
        if self._secret is None:
            path = self.root / SECRET_FILE
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._secret = path.read_text().strip()
                if not self._secret:
                    raise ClusterError(f"{path} is empty") from None
            else:
                secret = secrets.token_hex(SECRET_BYTES)
                with os.fdopen(fd, "w") as file:
                    file.write(secret + "\n")
                self._secret = secret
        return self._secret

    def command(self, node_id: int) -> list[str]:
        """The `spindle server` command line of one node."""
        config = self.config
        ports = self.node_ports[self._index(node_id)]
        args = [
            sys.executable,
            "-m",
            "spindle.cli",
            "server",
            "--data-dir",
            str(self.data_dir(node_id)),
            "--host",
            config.host,
            "--port",
            str(ports.port),
            "--http-port",
            str(ports.http_port),
            "--resp-port",
            str(ports.resp_port),
        ]
        if config.cluster_flags:
            args += ["--node-id", str(node_id)]  # the secret goes in the environment
            if node_id == 1:
                args += ["--cluster-size", str(config.size)]
            else:
                args += ["--join", self.address(1)]
        if not config.loopback_default:
            args.append("--no-loopback-default")
        return args + list(config.extra_args)

    def environment(self, node_id: int) -> dict[str, str]:
        """The child's environment: this process's, without the server settings that
        could contradict the command line (a stray SPINDLE_JOIN would make node 1 join),
        plus the cluster secret (in the environment, not in `ps` output), plus `env`."""
        env = {name: value for name, value in os.environ.items() if name not in SERVER_ENV_VARS}
        env["PYTHONUNBUFFERED"] = "1"
        if self.config.cluster_flags:
            env["SPINDLE_CLUSTER_SECRET"] = self.cluster_secret()
        return {**env, **(self.config.env or {})}

    def _spawn(self, node_id: int) -> None:
        index = self._index(node_id)
        previous = self._processes[index]
        if previous is not None and previous.poll() is None:
            raise ClusterError(f"node{node_id} is already running (pid {previous.pid})")
        self.data_dir(node_id).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = self.command(node_id)
        env = self.environment(node_id)
        self._down.discard(node_id)
        with open(self.log_path(node_id), "ab") as log:
            shown = " ".join(command)
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {shown}\n".encode())
            log.flush()
            self._processes[index] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _check_alive(self, node_id: int) -> None:
        process = self._processes[self._index(node_id)]
        if process is not None and process.poll() is not None:
            raise ClusterError(
                f"node{node_id} exited with status {process.returncode}; "
                f"{self.log_path(node_id)}:\n{self.log_tail(node_id)}"
            )

    def _wait_healthy(self, node_id: int) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        last = "no answer"
        while True:
            self._check_alive(node_id)
            try:
                code, _ = self._http_get(node_id, "/health")
                if code == 200:
                    return
                last = f"/health answered {code}"
            except (OSError, http.client.HTTPException) as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"node{node_id} did not answer /health with 200 within "
                    f"{self.config.start_timeout_s} s ({last}); {self.log_path(node_id)}:\n"
                    f"{self.log_tail(node_id)}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _http_get(self, node_id: int, path: str) -> tuple[int, bytes]:
        ports = self.node_ports[self._index(node_id)]
        connection = http.client.HTTPConnection(
            self.config.host, ports.http_port, timeout=HTTP_PROBE_TIMEOUT_S
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _signal(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def server_supports_cluster_flags() -> bool:
    """Whether this checkout's `spindle server` takes --cluster-size (the replicated
    cluster); until it does, only `LocalClusterConfig(size=1, cluster_flags=False)` runs."""
    done = subprocess.run(
        [sys.executable, "-m", "spindle.cli", "server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    )
    return "--cluster-size" in done.stdout


@contextlib.contextmanager
def running_cluster(config: LocalClusterConfig) -> Iterator[LocalCluster]:
    cluster = LocalCluster(config)
    with cluster:
        yield cluster


def main(argv: list[str] | None = None) -> int:
    """`python -m spindle.localcluster`: run a local cluster in the foreground until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spindle.localcluster", description=main.__doc__
    )
    parser.add_argument("--root", default="./.spindle-cluster", help="data, secret and logs")
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--free-ports", action="store_true", help="not the default ports")
    args = parser.parse_args(argv)
    ports = NodePorts.free(args.size, args.host) if args.free_ports else None
    config = LocalClusterConfig(root=Path(args.root), size=args.size, host=args.host, ports=ports)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    cluster = LocalCluster(config)
    try:
        cluster.start()
        for node_id, address in zip(cluster.node_ids, cluster.addresses, strict=True):
            node_ports = cluster.node_ports[node_id - 1]
            print(
                f"node{node_id} pid {cluster.pids[node_id - 1]}: {address}, "
                f"http {node_ports.http_port}, resp {node_ports.resp_port}, "
                f"log {cluster.log_path(node_id)}",
                flush=True,
            )
        print("Ctrl-C stops the cluster", flush=True)
        while not stopping:
            for node_id in cluster.node_ids:
                cluster._check_alive(node_id)
            time.sleep(0.2)
    except ClusterError as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


__all__ = [
    "ClusterError",
    "LocalCluster",
    "LocalClusterConfig",
    "NodePorts",
    "every_node",
    "free_port",
    "free_ports",
    "node_reports_ready",
    "running_cluster",
    "server_supports_cluster_flags",
    "status_returns_json",
]

if __name__ == "__main__":
    raise SystemExit(main())
