"""`spindle up` (what `make run` runs): a 3-node cluster and a function worker start,
serve, and stop cleanly together; a child that dies takes the whole system down with a
failing status."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from spindle.kv.client import Client


def free_base_ports() -> tuple[int, int, int]:
    """Base ports whose derived node ports (+10, +20; RESP +1, +2) are all free."""
    rng = random.Random()
    while True:
        port, http_port, resp_port = (rng.randrange(20_000, 60_000) for _ in range(3))
        wanted = [port + 10 * i for i in range(3)] + [http_port + 10 * i for i in range(3)]
        wanted += [resp_port + i for i in range(3)]
        if len(set(wanted)) == len(wanted) and all(_is_free(p) for p in wanted):
            return port, http_port, resp_port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_up(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, http_port, resp_port = free_base_ports()
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
            str(http_port),
            "--resp-port",
            str(resp_port),
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
        output_lines.wait_for(" ready", timeout_s=90)  # the cluster and the worker serve
        with Client(f"127.0.0.1:{port}") as kv:
            kv.put(b"k", b"v")
        with Client(f"127.0.0.1:{port + 20}") as kv:  # node 3 holds a replica too
            assert kv.get(b"k") == b"v"
        children = child_pids(process.pid)
        assert len(children) == 4, "three nodes and a function worker"
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
        output_lines.wait_for(" ready", timeout_s=90)
        node = min(child_pids(process.pid))  # node 1 starts first
        os.kill(node, signal.SIGKILL)
        assert process.wait(60) == 1
        assert "exited" in output_lines.text()
    finally:
        if process.poll() is None:
            process.kill()
