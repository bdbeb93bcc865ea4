"""Real worker processes (`python -m spindle.functions.cli worker`): SIGKILL mid-call loses
nothing, SIGTERM drains; external programs as functions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spindle.functions import CallFailed, CallStatus, FunctionsClient, Registry, RetryPolicy
from tests.conftest import ThreadServer

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


class WorkerProcess:
    def __init__(self, address: str, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spindle.functions.cli",
                "worker",
                "--addr",
                address,
                "--app",
                "tests.functions.apps:registry",
                "--lease-s",
                "2",
                "--heartbeat-s",
                "0.4",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert "ready" in line, line + self.proc.stdout.read().decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def workers(server: ThreadServer) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def _starts(marker: Path) -> int:
    return len(list(marker.iterdir())) if marker.exists() else 0


async def _until(predicate: Any, timeout_s: float = WAIT_S) -> None:
    give_up = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < give_up, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_sigkilled_worker_loses_no_call(
    fx: FunctionsClient, server: ThreadServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    first = WorkerProcess(server.address)
    workers.append(first)
    marker = tmp_path / "long"
    long_call = await fx.submit("sleepy", {"seconds": 1.5, "marker": str(marker)})
    others = [await fx.submit("sleepy", {"seconds": 0.3}) for _ in range(10)]
    await _until(lambda: _starts(marker) == 1)
    first.kill()  # mid-call: its leases are left to expire
    workers.append(WorkerProcess(server.address))
    assert await fx.result(long_call, wait_s=WAIT_S) == 1.5
    assert _starts(marker) == 2  # it ran again after the lease expired
    for call_id in others:
        assert await fx.result(call_id, wait_s=WAIT_S) == 0.3
    info = await fx.status(long_call)
    assert info.state == CallStatus.SUCCEEDED and info.attempt == 2


async def test_sigkilled_worker_loses_no_prefetched_call(
    fx: FunctionsClient, server: ThreadServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "starts"

    def args(tag: str) -> dict[str, str]:
        return {"gate": str(gate), "marker": str(marker), "tag": tag}

    first = WorkerProcess(server.address, "--slots", "1", "--prefetch", "3")
    workers.append(first)
    gate.touch()  # a quick first call: the worker learns to prefetch `gated`
    await fx.result(await fx.submit("gated", args("warm")), wait_s=WAIT_S)
    gate.unlink()
    blocker = await fx.submit("gated", args("a"))
    await _until(lambda: _starts(marker) == 2)
    prefetched = [await fx.submit("gated", args(f"p{i}")) for i in range(3)]
    for call_id in prefetched:  # leased by the worker, not started
        while (await fx.status(call_id)).state != CallStatus.RUNNING:
            await asyncio.sleep(0.02)
    assert _starts(marker) == 2
    first.kill()  # its leases, the prefetched calls' too, are left to expire
    gate.touch()
    workers.append(WorkerProcess(server.address))
    for call_id in [blocker, *prefetched]:
        await fx.result(call_id, wait_s=WAIT_S)
        assert (await fx.status(call_id)).attempt == 2
    assert _starts(marker) == 2 + 1 + 3  # the blocker ran twice, each prefetched call once


async def test_sigterm_drains_running_calls(
    fx: FunctionsClient, server: ThreadServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(server.address)
    workers.append(worker)
    marker = tmp_path / "drain"
    call_id = await fx.submit("sleepy", {"seconds": 1.0, "marker": str(marker)})
    await _until(lambda: _starts(marker) == 1)
    worker.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.proc.wait, WAIT_S)
    assert code == 0
    assert worker.proc.stdout is not None
    assert "drained" in worker.proc.stdout.read().decode()
    info = await fx.status(call_id)
    assert info.state == CallStatus.SUCCEEDED and info.attempt == 1


ECHO = (
    "import json, sys; call = json.load(sys.stdin); "
    "json.dump({'sum': sum(call['args']['numbers']), 'call': call['call_id']}, sys.stdout)"
)
FAIL = "import sys; sys.stderr.write('bad input'); sys.exit(3)"


async def test_external_program_function(fx: FunctionsClient, start_worker: Any) -> None:
    registry = Registry()
    registry.command("sum_numbers", [sys.executable, "-c", ECHO])
    registry.command(
        "broken",
        [sys.executable, "-c", FAIL],
        retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.1),
    )
    await fx.register(registry)
    # A worker with no Python functions runs published command functions.
    await start_worker(Registry())
    call_id = await fx.submit("sum_numbers", {"numbers": [1, 2, 3]})
    assert await fx.result(call_id, wait_s=WAIT_S) == {"sum": 6, "call": call_id}
    broken = await fx.submit("broken", {})
    with pytest.raises(CallFailed) as failure:
        await fx.result(broken, wait_s=WAIT_S)
    assert "status 3" in (failure.value.error or "") and "bad input" in (failure.value.error or "")
    assert (await fx.status(broken)).attempt == 2
