"""Stopping is bounded: `stop_tasks` ends a task whose first cancel was lost (Python 3.11's
`asyncio.wait_for` drops a cancel that lands as its future completes, which made a SIGTERMed
worker hang now and then) and gives up on a task that never ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import pytest

from spindle.functions.worker import stop_tasks


async def _loop_like_the_sweep(response: asyncio.Future[bytes]) -> None:
    """A background loop whose store request (a `wait_for` on the response) is cancelled
    just as the response arrives."""
    while True:
        await asyncio.wait_for(response, 10)
        await asyncio.sleep(0.5)


async def _lose_first_cancel() -> asyncio.Task[None]:
    response: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_loop_like_the_sweep(response))
    await asyncio.sleep(0)  # the loop waits for its response
    response.set_result(b"ok")  # the response arrives ...
    await asyncio.sleep(0)  # ... wait_for's callback wakes the loop's task ...
    task.cancel()  # ... and the cancel lands before the task runs
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel from 3.12")
async def test_a_single_cancel_can_be_lost() -> None:
    task = await _lose_first_cancel()
    await asyncio.wait([task], timeout=0.2)
    assert not task.done()  # the hazard `stop_tasks` exists for
    assert not await stop_tasks([task], 1.0)


async def test_stop_tasks_ends_a_task_that_lost_its_cancel() -> None:
    task = await _lose_first_cancel()
    started = time.monotonic()
    assert not await stop_tasks([task], 5.0)
    assert task.cancelled()
    assert time.monotonic() - started < 1.0  # re-cancelled within CANCEL_REPEAT_S, not 5 s


async def test_stop_tasks_gives_up_at_its_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await stop_tasks([task], 0.3) == {task}
    assert time.monotonic() - started < 1.0
    release.set()
    await asyncio.wait([task], timeout=2)
    assert task.done()
