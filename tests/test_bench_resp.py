"""The parts of `spindle bench resp` that explain its numbers: the floor server and the
per-thread CPU accounting."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from spindle.bench.resp import cpu_per_request_us, floor_server_command, running, thread_cpu_s
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")


def test_thread_cpu_counts_this_threads_work() -> None:
    pid = os.getpid()
    before = thread_cpu_s(pid)
    assert pid in before, "the main thread's id is the process id"
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    cost = cpu_per_request_us(pid, before, requests=1_000)
    assert cost["main_user_us"] + cost["main_sys_us"] >= 100.0  # >= 0.1 s over 1,000
    assert cost["other_threads_us"] >= 0.0


def test_floor_server_answers_every_pipelined_command() -> None:
    port = free_port()
    with (
        running(floor_server_command(port), port, "floor"),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
        sock.sendall(command * 3 + b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        replies = b""
        while replies.count(b"\r\n") < 4:
            chunk = sock.recv(1024)
            assert chunk, "the floor server closed the connection"
            replies += chunk
    assert replies == b"+OK\r\n" * 4
    assert sys.executable in floor_server_command(port)
