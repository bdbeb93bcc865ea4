"""`spindle up`: the whole local system in the foreground, started by one command.

Today that is one storage node (binary protocol, HTTP, RESP) and one function worker, each
a child process sharing this terminal. Ctrl-C or SIGTERM stops the worker first (it drains),
then the node; if either child dies on its own, the other is stopped too and the exit status
says so. The replicated cluster and the social service join here as they are built.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

NODE_START_TIMEOUT_S = 30.0
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


def _spindle(*args: str) -> list[str]:
    return [sys.executable, "-m", "spindle.cli", *args]


def _wait_listening(host: str, port: int, node: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited at start (status {node.returncode})")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the node did not listen on {host}:{port} in {NODE_START_TIMEOUT_S}s")


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
    # Children ignore the terminal's Ctrl-C (own session); this process stops them in order.
    node = subprocess.Popen(
        _spindle(
            "server",
            "--data-dir",
            config.data_dir,
            "--host",
            config.host,
            "--port",
            str(config.port),
            "--http-port",
            str(config.http_port),
            "--resp-port",
            str(config.resp_port),
        ),
        start_new_session=True,
    )
    children = [node]
    status = 0
    try:
        _wait_listening(config.host, config.port, node)
        worker_args = ["worker", "--addr", f"{config.host}:{config.port}"]
        worker_args += ["--slots", str(config.worker_slots)]
        if config.worker_app:
            worker_args += ["--app", config.worker_app]
        worker = subprocess.Popen(_spindle(*worker_args), start_new_session=True)
        children.insert(0, worker)
        print(
            f"spindle up: node pid {node.pid}, function worker pid {worker.pid}; Ctrl-C stops both",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    name = "node" if child is node else "function worker"
                    print(f"spindle up: the {name} exited ({child.returncode}); stopping")
                    status = 1
                    stopping = True
            time.sleep(POLL_INTERVAL_S)
    except RuntimeError as error:
        print(f"spindle up: {error}", file=sys.stderr)
        status = 1
    finally:
        for child in children:  # the worker first: it drains into a running node
            _stop(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 0:
        print("spindle up: stopped cleanly", flush=True)
    return status


__all__ = ["UpConfig", "up"]
