"""Submit -> durable queue -> worker -> result, on a real store server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from spindle.functions import (
    ArgsTooLarge,
    CallFailed,
    CallRequest,
    CallStatus,
    DeadlineInPast,
    FunctionsClient,
    NotFinished,
    UnknownCall,
    UnknownFunction,
    limits,
)
from spindle.kv.errors import Conflict, InvalidArgument

WAIT_S = 20.0


async def test_async_and_blocking_functions_run(fx: FunctionsClient, start_worker: Any) -> None:
    await start_worker()
    first = await fx.submit("add", {"a": 2, "b": 3})
    second = await fx.submit("multiply", [4, 5])
    assert await fx.result(first, wait_s=WAIT_S) == 5
    assert await fx.result(second, wait_s=WAIT_S) == 20
    info = await fx.status(first)
    assert info.state == CallStatus.SUCCEEDED and info.attempt == 1


async def test_submit_errors(fx: FunctionsClient) -> None:
    with pytest.raises(UnknownFunction):
        await fx.submit("no_such_function", {})
    with pytest.raises(ArgsTooLarge):
        await fx.submit("add", {"a": "x" * (limits.ARGS_BYTES_MAX + 1), "b": 1})
    with pytest.raises(DeadlineInPast):
        await fx.submit("add", {"a": 1, "b": 2}, deadline=-1.0)
    with pytest.raises(DeadlineInPast):
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        await fx.submit("add", {"a": 1, "b": 2}, deadline=past)
    with pytest.raises(DeadlineInPast):
        await fx.submit("add", {"a": 1, "b": 2}, start_after=60, deadline=30)
    with pytest.raises(InvalidArgument):
        await fx.submit("add", {"a": 1, "b": 2}, deadline=limits.DEADLINE_S_MAX + 60)
    with pytest.raises(InvalidArgument):
        await fx.submit("add", {"a": 1, "b": 2}, criticality="urgent")
    with pytest.raises(InvalidArgument):
        await fx.submit_batch(
            [CallRequest("add", {"a": 1, "b": 1})] * (limits.BATCH_SUBMIT_MAX + 1)
        )
    with pytest.raises(UnknownCall):
        await fx.status("0000" + "0" * 20)
    with pytest.raises(InvalidArgument):
        await fx.status("not-a-call-id")


async def test_idempotency_key_returns_original_call(fx: FunctionsClient) -> None:
    first = await fx.submit("add", {"a": 1, "b": 1}, idempotency_key="signup-42")
    again = await fx.submit("add", {"a": 9, "b": 9}, idempotency_key="signup-42")
    other = await fx.submit("add", {"a": 1, "b": 1}, idempotency_key="signup-43")
    assert again == first and other != first
    # The same key for another function is another call.
    assert await fx.submit("multiply", [1, 1], idempotency_key="signup-42") != first


async def test_batch_submit(fx: FunctionsClient, start_worker: Any) -> None:
    await start_worker()
    ids = await fx.submit_batch([CallRequest("add", {"a": i, "b": i}) for i in range(40)])
    assert len(set(ids)) == 40
    results = [await fx.result(call_id, wait_s=WAIT_S) for call_id in ids]
    assert results == [2 * i for i in range(40)]


async def test_result_not_finished_and_cancel_queued(fx: FunctionsClient) -> None:
    call_id = await fx.submit("add", {"a": 1, "b": 1})
    with pytest.raises(NotFinished):
        await fx.result(call_id)
    info = await fx.cancel(call_id)
    assert info.state == CallStatus.CANCELLED
    assert (await fx.cancel(call_id)).state == CallStatus.CANCELLED  # idempotent
    with pytest.raises(CallFailed) as failure:
        await fx.result(call_id)
    assert failure.value.state == CallStatus.CANCELLED


async def test_cancel_delayed_and_running_and_finished(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path
) -> None:
    delayed = await fx.submit("add", {"a": 1, "b": 1}, start_after=3600)
    assert (await fx.cancel(delayed)).state == CallStatus.CANCELLED
    await start_worker()
    marker = tmp_path / "sleepy"
    running = await fx.submit("sleepy", {"seconds": 30, "marker": str(marker)})
    await _wait_for(fx, running, CallStatus.RUNNING)
    assert (await fx.cancel(running)).state == CallStatus.CANCELLED
    done = await fx.submit("add", {"a": 1, "b": 1})
    await fx.result(done, wait_s=WAIT_S)
    with pytest.raises(Conflict):
        await fx.cancel(done)


async def test_start_after_delays_the_call(fx: FunctionsClient, start_worker: Any) -> None:
    await start_worker()
    call_id = await fx.submit("add", {"a": 1, "b": 2}, start_after=0.5)
    assert (await fx.status(call_id)).state == CallStatus.QUEUED
    assert await fx.result(call_id, wait_s=WAIT_S) == 3
    info = await fx.status(call_id)
    assert info.started_ms >= info.submitted_ms + 500


async def test_retries_then_success(fx: FunctionsClient, start_worker: Any, tmp_path: Path) -> None:
    await start_worker()
    call_id = await fx.submit("flaky", {"marker_dir": str(tmp_path / "m"), "failures": 2})
    assert await fx.result(call_id, wait_s=WAIT_S) == 3
    assert (await fx.status(call_id)).attempt == 3


async def test_dead_letter_and_replay(fx: FunctionsClient, start_worker: Any) -> None:
    await start_worker()
    call_id = await fx.submit("always_fails")
    with pytest.raises(CallFailed) as failure:
        await fx.result(call_id, wait_s=WAIT_S)
    assert failure.value.state == CallStatus.FAILED and "never works" in (failure.value.error or "")
    assert (await fx.status(call_id)).attempt == 2
    dead = await fx.dead_letters()
    assert [info.call_id for info in dead] == [call_id]
    replayed = await fx.replay(call_id)
    assert replayed.state == CallStatus.QUEUED and replayed.replays == 1
    with pytest.raises(CallFailed):
        await fx.result(call_id, wait_s=WAIT_S)
    assert (await fx.status(call_id)).replays == 1
    with pytest.raises(Conflict):
        await fx.replay(await fx.submit("add", {"a": 1, "b": 1}))


async def test_errors_outside_retry_on_fail_at_once(fx: FunctionsClient, start_worker: Any) -> None:
    await start_worker()
    call_id = await fx.submit("not_retried")
    with pytest.raises(CallFailed):
        await fx.result(call_id, wait_s=WAIT_S)
    info = await fx.status(call_id)
    assert info.attempt == 1 and "not in retry_on" in (info.error or "")


async def test_deadline_passes_while_queued(fx: FunctionsClient, start_worker: Any) -> None:
    call_id = await fx.submit("add", {"a": 1, "b": 1}, deadline=0.2)
    import asyncio

    await asyncio.sleep(0.4)
    await start_worker()
    with pytest.raises(CallFailed) as failure:
        await fx.result(call_id, wait_s=WAIT_S)
    assert failure.value.state == CallStatus.EXPIRED


async def _wait_for(fx: FunctionsClient, call_id: str, state: CallStatus) -> None:
    import asyncio

    for _ in range(400):
        if (await fx.status(call_id)).state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{call_id} never reached {state}")
