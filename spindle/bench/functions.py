"""`spindle bench functions`: N no-op calls through S worker slots, time from the first
submit to the last completion, for Spindle Functions and, in the same run on the same
machine, Celery and Dramatiq on a Redis broker that the benchmark starts itself.

Fair comparison: every system gets S slots in one worker process (Spindle `--slots S`,
Celery `--pool threads --concurrency S`, Dramatiq `--processes 1 --threads S`), the same
no-op task, and its own natural client (Spindle `submit_batch` of 500, Celery `delay()`
per call, Dramatiq `send()` per call). A run ends when the system says nothing is
outstanding: Spindle's succeeded counters reach N; Celery's queue list and `unacked` hash
are empty (acks_late: a message leaves `unacked` after its task ran); Dramatiq's message
hash is empty (it deletes a message on ack). No system stores results beyond that.

Guarantees compared: Spindle acknowledges a submit only after the call is fsynced in the
store, and every state change (lease, success) is fsynced too. Redis runs with
`appendonly yes, appendfsync everysec`: an acknowledged enqueue can be lost in the last
second before a crash. Celery runs with `acks_late=True` (a task is redelivered if its
worker dies mid-task); Dramatiq's Redis broker acks after the task ran.

Each system runs `RUNS` times, interleaved; medians and ratios are printed and written as
JSON. Needs celery[redis], dramatiq[redis] and redis-server (apt-get install redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from spindle.bench.kv import free_port, running_server
from spindle.functions import CallRequest, FunctionsClient, Registry
from spindle.functions.queue import SUCCEEDED

RUNS = 3
SUBMIT_BATCH = 500
"""Calls per Spindle `submit_batch` (BATCH_SUBMIT_MAX)."""
SUBMIT_BATCHES_IN_FLIGHT = 4
"""Spindle batches submitted concurrently."""
POLL_S = 0.02
"""Pause between two completion checks."""
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 600.0
WARMUP_CALLS = 20
QUICK_CALLS = 2_000

registry = Registry()


@registry.function()
async def noop() -> None:
    """The benchmark's task: nothing, so the platform's own cost is what is measured."""
    return None


CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop():
    return None
"""

DRAMATIQ_APP = """
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop():
    return None
"""


# -- helpers --------------------------------------------------------------------------------


def _wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    give_up = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > give_up:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _process(args: list[str], log_path: Path, env: dict[str, str]) -> Iterator[None]:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        yield
    finally:
        _stop(process)


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """A redis-server on a free port with AOF (fsync every second); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is missing: apt-get install -y redis-server (as root), "
            "or put a redis-server binary on PATH"
        )
    port = free_port()
    data = root / "redis"
    data.mkdir()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    with _process(args, root / "redis.log", dict(os.environ)):
        client = redis.Redis(port=port)

        def up() -> bool:
            with contextlib.suppress(redis.ConnectionError):
                return bool(client.ping())
            return False

        _wait_until(up, START_TIMEOUT_S, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"


# -- Spindle ----------------------------------------------------------------------------


async def _spindle_succeeded(fx: FunctionsClient) -> int:
    counters = await fx.queue.counters()
    return sum(
        v for (function, _, name), v in counters.items() if function == "noop" and name == SUCCEEDED
    )


async def _spindle_wait(fx: FunctionsClient, target: int) -> None:
    give_up = time.monotonic() + RUN_TIMEOUT_S
    while await _spindle_succeeded(fx) < target:
        if time.monotonic() > give_up:
            raise RuntimeError("Spindle run timed out")
        await asyncio.sleep(POLL_S)


async def _spindle_run(address: str, calls: int) -> float:
    async with FunctionsClient(address) as fx:
        await fx.register(registry)
        await fx.submit_batch([CallRequest("noop")] * WARMUP_CALLS)
        await _spindle_wait(fx, WARMUP_CALLS)
        semaphore = asyncio.Semaphore(SUBMIT_BATCHES_IN_FLIGHT)

        async def batch(size: int) -> None:
            async with semaphore:
                await fx.submit_batch([CallRequest("noop")] * size)

        started = time.perf_counter()
        sizes = [min(SUBMIT_BATCH, calls - i) for i in range(0, calls, SUBMIT_BATCH)]
        await asyncio.gather(*(batch(size) for size in sizes))
        await _spindle_wait(fx, WARMUP_CALLS + calls)
        return time.perf_counter() - started


def run_spindle(root: Path, calls: int, slots: int, workers: int) -> float:
    with running_server(root, "spindle-node") as server:
        asyncio.run(server.wait_ready())
        env = {**os.environ, "SPINDLE_LOG": "WARNING"}
        per_worker = [slots // workers + (i < slots % workers) for i in range(workers)]
        with contextlib.ExitStack() as stack:
            for i, worker_slots in enumerate(per_worker):
                args = [
                    sys.executable,
                    "-m",
                    "spindle.functions.cli",
                    "worker",
                    "--addr",
                    server.address,
                    "--app",
                    "spindle.bench.functions:registry",
                    "--slots",
                    str(worker_slots),
                ]
                stack.enter_context(_process(args, root / f"spindle-worker-{i}.log", env))
            return asyncio.run(_spindle_run(server.address, calls))


# -- Celery and Dramatiq ------------------------------------------------------------------


def _import_app(root: Path, name: str) -> Any:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module(name)


def run_celery(root: Path, url: str, calls: int, slots: int) -> float:
    client = redis.Redis.from_url(url)
    client.flushall()
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(root)}
    os.environ["BENCH_REDIS_URL"] = url
    app = _import_app(root, "bench_celery_app")
    app.app.conf.broker_url = url

    def outstanding() -> int:
        return int(client.llen("celery")) + int(client.hlen("unacked"))

    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench_celery_app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(slots),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]
    with _process(args, root / "celery.log", env):
        for _ in range(WARMUP_CALLS):
            app.noop.delay()
        _wait_until(lambda: outstanding() == 0, START_TIMEOUT_S, "celery warm-up")
        started = time.perf_counter()
        for _ in range(calls):
            app.noop.delay()
        _wait_until(lambda: outstanding() == 0, RUN_TIMEOUT_S, "celery run")
        return time.perf_counter() - started


def run_dramatiq(root: Path, url: str, calls: int, slots: int) -> float:
    client = redis.Redis.from_url(url)
    client.flushall()
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(root)}
    os.environ["BENCH_REDIS_URL"] = url
    app = _import_app(root, "bench_dramatiq_app")

    def outstanding() -> int:
        return int(client.hlen("dramatiq:default.msgs"))

    args = [
        sys.executable,
        "-m",
        "dramatiq",
        "bench_dramatiq_app",
        "--processes",
        "1",
        "--threads",
        str(slots),
    ]
    with _process(args, root / "dramatiq.log", env):
        for _ in range(WARMUP_CALLS):
            app.noop.send()
        _wait_until(lambda: outstanding() == 0, START_TIMEOUT_S, "dramatiq warm-up")
        started = time.perf_counter()
        for _ in range(calls):
            app.noop.send()
        _wait_until(lambda: outstanding() == 0, RUN_TIMEOUT_S, "dramatiq run")
        return time.perf_counter() - started


# -- the report ---------------------------------------------------------------------------


def _version(package: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def main(
    calls: int = 20_000,
    slots: int = 10,
    output: str = "bench-results/functions.json",
    quick: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Run every system RUNS times (once with `quick`, on QUICK_CALLS calls), interleaved,
    and report the median time and throughput of each, and Spindle's ratio to each."""
    if quick:
        calls = min(calls, QUICK_CALLS)
    runs = 1 if quick else RUNS
    console = Console()
    seconds: dict[str, list[float]] = {"spindle": [], "celery": [], "dramatiq": []}
    with tempfile.TemporaryDirectory(prefix="spindle-bench-functions-") as name:
        root = Path(name)
        (root / "bench_celery_app.py").write_text(textwrap.dedent(CELERY_APP))
        (root / "bench_dramatiq_app.py").write_text(textwrap.dedent(DRAMATIQ_APP))
        with redis_server(root) as url:
            systems: list[tuple[str, Callable[[], float]]] = [
                ("spindle", lambda: run_spindle(root, calls, slots, workers)),
                ("celery", lambda: run_celery(root, url, calls, slots)),
                ("dramatiq", lambda: run_dramatiq(root, url, calls, slots)),
            ]
            for run in range(runs):
                for system, body in systems:
                    elapsed_s: float = body()
                    seconds[system].append(elapsed_s)
                    console.print(
                        f"run {run + 1}/{runs} {system}: {elapsed_s:.2f}s, "
                        f"{calls / elapsed_s:,.0f} calls/s"
                    )
    median_s = {system: statistics.median(values) for system, values in seconds.items()}
    throughput = {system: calls / value for system, value in median_s.items()}
    ratios = {
        f"spindle/{other}": throughput["spindle"] / throughput[other]
        for other in ("celery", "dramatiq")
    }
    table = Table("system", "median s", "calls/s", "runs s")
    for system in seconds:
        table.add_row(
            system,
            f"{median_s[system]:.2f}",
            f"{throughput[system]:,.0f}",
            ", ".join(f"{value:.2f}" for value in seconds[system]),
        )
    console.print(table)
    for label, ratio in ratios.items():
        console.print(f"throughput {label}: {ratio:.2f}x")
    results: dict[str, Any] = {
        "command": f"spindle bench functions --calls {calls} --slots {slots}"
        + (" --quick" if quick else ""),
        "calls": calls,
        "slots": slots,
        "spindle_worker_processes": workers,
        "runs": runs,
        "seconds": seconds,
        "median_s": median_s,
        "throughput_per_s": throughput,
        "ratios": ratios,
        "guarantees": {
            "spindle": "submit acked after fsync in the store; leases and results fsynced",
            "redis": "appendonly yes, appendfsync everysec (up to ~1 s of acked enqueues "
            "lost on a crash)",
            "celery": "acks_late=True, threads pool, results ignored",
            "dramatiq": "Redis broker, ack after the task, threads",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {p: _version(p) for p in ("celery", "kombu", "dramatiq", "redis")},
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
