"""`spindle up`: the whole local system in the foreground, started by one command.

Today that is a local cluster of three storage nodes (separate processes, data under
`<data_dir>/node<N>`, each with binary protocol, HTTP and RESP; every shard replicated on
all three) and one function worker, each a child process. Node i listens on port + 10(i-1)
(HTTP likewise) and RESP port + (i-1). Ctrl-C or SIGTERM stops the worker first (it drains),
then the nodes; if any child dies on its own, everything is stopped and the exit status
says so. The social service joins here when it is built.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from spindle.localcluster import (
    ClusterError,
    LocalCluster,
    LocalClusterConfig,
    NodePorts,
    every_node,
    node_reports_ready,
)

CLUSTER_READY_TIMEOUT_S = 60.0
"""How long the nodes may take to elect leaders and create the default keyspace."""
PORT_STRIDE = 10
STOP_TIMEOUT_S = 40.0
"""How long a child may take to stop after SIGTERM (the worker drains running calls)."""
POLL_INTERVAL_S = 0.2


@dataclass
class UpConfig:
    data_dir: str = "./.spindle"
    host: str = "127.0.0.1"
    port: int = 7379
    http_port: int = 7380
    resp_port: int = 6380
    worker_slots: int = 16
    worker_app: str | None = None
    nodes: int = 3

    def node_ports(self) -> list[NodePorts]:
        return [
            NodePorts(
                self.port + PORT_STRIDE * i, self.http_port + PORT_STRIDE * i, self.resp_port + i
            )
            for i in range(self.nodes)
        ]


def _spindle(*args: str) -> list[str]:
    return [sys.executable, "-m", "spindle.cli", *args]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def up(config: UpConfig) -> int:
    """Run until a signal or a child's death; returns the exit status."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(
        LocalClusterConfig(
            root=Path(config.data_dir),
            size=config.nodes,
            host=config.host,
            ports=config.node_ports(),
        )
    )
    worker: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        cluster.start()
        print(f"spindle up: {config.nodes} nodes started, waiting for the cluster", flush=True)
        cluster.wait_ready(timeout_s=CLUSTER_READY_TIMEOUT_S, ready=every_node(node_reports_ready))
        worker_args = ["worker", "--addr", cluster.addresses[0]]
        worker_args += ["--slots", str(config.worker_slots)]
        if config.worker_app:
            worker_args += ["--app", config.worker_app]
        worker = subprocess.Popen(_spindle(*worker_args), start_new_session=True)
        _print_summary(config, cluster, worker.pid)
        while not stopping:
            if worker.poll() is not None:
                print(f"spindle up: the function worker exited ({worker.returncode}); stopping")
                status, stopping = 1, True
            for node_id in cluster.node_ids:
                if not cluster.is_running(node_id):
                    print(
                        f"spindle up: node {node_id} exited; stopping (log: "
                        f"{cluster.log_path(node_id)})"
                    )
                    status, stopping = 1, True
            time.sleep(POLL_INTERVAL_S)
    except (RuntimeError, ClusterError) as error:
        print(f"spindle up: {error}", file=sys.stderr)
        status = 1
    finally:
        if worker is not None:  # the worker first: it drains into running nodes
            _stop(worker)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 0:
        print("spindle up: stopped cleanly", flush=True)
    return status


def _print_summary(config: UpConfig, cluster: LocalCluster, worker_pid: int) -> None:
    lines = [f"spindle up: a {config.nodes}-node cluster and a function worker (pid {worker_pid})"]
    for node_id, (ports, pid) in enumerate(zip(cluster.node_ports, cluster.pids, strict=True), 1):
        lines.append(
            f"  node {node_id}  pid {pid}  binary {config.host}:{ports.port}  "
            f"http {ports.http_port}  redis {ports.resp_port}  log {cluster.log_path(node_id)}"
        )
    credentials = cluster.data_dir(1) / "credentials.json"
    if credentials.exists():
        for name, token in sorted(json.loads(credentials.read_text()).items()):
            label = "admin token" if name == "admin" else f"tenant {name!r} token"
            lines.append(f"  {label:<22} {token}")
    lines.append("  loopback clients without a token act as tenant 'default'")
    lines.append("try, in another terminal:")
    lines.append(f"  redis-cli -p {config.resp_port} SET hello world")
    lines.append(f"  .venv/bin/spindle kv get hello --addr {cluster.addresses[-1]}")
    lines.append(f"  .venv/bin/spindle status --addr {cluster.addresses[0]}")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


__all__ = ["UpConfig", "up"]
