"""Function registries used by the tests (importable by worker processes: `--app`)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from spindle.functions import Quota, Registry, RetryPolicy

registry = Registry()

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2)


@registry.function(retry=FAST_RETRY)
async def add(a: int, b: int) -> int:
    return a + b


@registry.function(retry=FAST_RETRY)
def multiply(a: int, b: int) -> int:
    """A blocking function: runs on the worker's thread pool."""
    time.sleep(0.01)
    return a * b


class Flaky(Exception):
    pass


@registry.function(retry=RetryPolicy(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.1))
async def flaky(marker_dir: str, failures: int) -> int:
    """Fails `failures` times (counted in files, so across processes), then succeeds."""
    directory = Path(marker_dir)
    directory.mkdir(parents=True, exist_ok=True)
    done = len(list(directory.iterdir()))
    (directory / f"attempt-{done}-{os.getpid()}").touch()
    if done < failures:
        raise Flaky(f"failure {done + 1} of {failures}")
    return done + 1


@registry.function(
    retry=RetryPolicy(
        max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.1, retry_on=("Flaky",)
    )
)
async def always_fails() -> None:
    raise Flaky("never works")


@registry.function(retry=RetryPolicy(max_attempts=5, retry_on=("Flaky",)))
async def not_retried() -> None:
    raise ValueError("not in retry_on")


@registry.function(retry=FAST_RETRY)
async def sleepy(seconds: float, marker: str | None = None) -> float:
    """Sleeps; records each start in `marker` (a directory) so tests see re-runs."""
    if marker is not None:
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / f"start-{os.getpid()}-{time.monotonic_ns()}").touch()
    await asyncio.sleep(seconds)
    return seconds


@registry.function(concurrency_limit=2, retry=FAST_RETRY)
async def limited(seconds: float, log_dir: str) -> None:
    """Logs start/end times so a test can check that at most 2 ran at once."""
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    await asyncio.sleep(seconds)
    (path / f"{start:.6f}-{time.monotonic():.6f}").touch()


@registry.function(criticality="deferrable", deadline_s=3600, retry=FAST_RETRY)
async def deferrable_noop() -> None:
    return None


@registry.function(quota=Quota(reserved_share=0.5, opportunistic=False), retry=FAST_RETRY)
async def reserved_only(seconds: float) -> None:
    await asyncio.sleep(seconds)


RUN_ORDER: list[int] = []
"""Tags of `ordered` calls in the order they ran (in-process workers only)."""


@registry.function(retry=FAST_RETRY)
async def ordered(tag: int) -> int:
    RUN_ORDER.append(tag)
    return tag


@registry.function(retry=FAST_RETRY)
async def gated(gate: str, marker: str, tag: str = "") -> None:
    """Records its start in `marker` (a directory, `<ns>-<tag>-<pid>`), then waits until the
    file `gate` exists: short once the gate is open, so a worker learns to prefetch it."""
    Path(marker).mkdir(parents=True, exist_ok=True)
    (Path(marker) / f"{time.monotonic_ns()}-{tag}-{os.getpid()}").touch()
    while not Path(gate).exists():
        await asyncio.sleep(0.02)
