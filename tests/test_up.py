"""`spindle up` (what `make run` runs): node and function worker start, serve, and stop
cleanly together; a child that dies takes the whole system down with a failing status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
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


class Output:
    """Collects a child's output lines in a thread, so a test can wait for one."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def wait_for(self, fragment: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(fragment in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {fragment!r} in {self.lines}"
            time.sleep(0.05)

    def text(self) -> str:
        self.thread.join(10)
        return "".join(self.lines)


def child_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, port = start_up(tmp_path)
    output_lines = Output(process)
    try:
        with Client(f"127.0.0.1:{port}") as kv:
            kv.put(b"k", b"v")
            assert kv.get(b"k") == b"v"
        output_lines.wait_for(" ready")  # the worker is serving, its signal handlers set
        children = child_pids(process.pid)
        assert len(children) == 2, "a node and a function worker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        output = output_lines.text()
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
    output_lines = Output(process)
    try:
        output_lines.wait_for(" ready")
        node = min(child_pids(process.pid))  # the node starts first
        os.kill(node, signal.SIGKILL)
        assert process.wait(60) == 1
        assert "exited" in output_lines.text()
    finally:
        if process.poll() is None:
            process.kill()
