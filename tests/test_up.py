"""`spindle up` (what `make run` runs): node and function worker start, serve, and stop
cleanly together; a child that dies takes the whole system down with a failing status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from spindle.kv.client import Client
from tests.conftest import free_port


def start_up(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spindle.cli",
            "up",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--http-port",
            str(free_port()),
            "--resp-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.05)
    process.kill()
    raise AssertionError("spindle up did not start")


def child_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, port = start_up(tmp_path)
    try:
        with Client(f"127.0.0.1:{port}") as kv:
            kv.put(b"k", b"v")
            assert kv.get(b"k") == b"v"
        deadline = time.monotonic() + 20
        while len(child_pids(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = child_pids(process.pid)
        assert len(children) == 2, "a node and a function worker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        output = process.stdout.read().decode() if process.stdout else ""
        assert "spindle up: stopped cleanly" in output
        assert "drained" in output and "stopped cleanly" in output
        for pid in children:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            )
    finally:
        if process.poll() is None:
            process.kill()


def test_up_fails_when_a_child_dies(tmp_path: Path) -> None:
    process, _ = start_up(tmp_path)
    try:
        deadline = time.monotonic() + 20
        while len(child_pids(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        node = min(child_pids(process.pid))  # the node starts first
        os.kill(node, signal.SIGKILL)
        assert process.wait(60) == 1
        assert "exited" in (process.stdout.read().decode() if process.stdout else "")
    finally:
        if process.poll() is None:
            process.kill()
