"""Shared fixtures: real servers on free loopback ports with temporary data directories."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spindle.kv.node import Node
from spindle.kv.server import NodeServer
from spindle.kv.storage import RocksEngine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadServer:
    """A node serving from its own event loop in a thread, so sync and async tests (and
    the blocking client) can all talk to it over real loopback sockets."""

    def __init__(self, data_dir: Path, *, loopback_default_tenant: bool = True) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.engine = RocksEngine(str(data_dir))
        self.node = Node(self.engine)
        self.server = NodeServer(
            self.node, "127.0.0.1", 0, 0, loopback_default_tenant=loopback_default_tenant
        )
        self.credentials: dict[str, str] = {}

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        await self.node.ensure_default_keyspace()
        self.credentials = await self.node.tenants.bootstrap_credentials()
        await self.node.committer.drain()
        await self.server.start()

    @property
    def admin_token(self) -> str:
        return self.credentials["admin"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace_s=2), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.engine.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    srv = ThreadServer(tmp_path / "node")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class ProcessServer:
    """`spindle server` as a real child process, for crash and signal tests."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else b""
                raise RuntimeError(f"server exited early: {out.decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace")


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[ProcessServer]:
    srv = ProcessServer(tmp_path / "proc-node")
    try:
        yield srv
    finally:
        srv.kill()
