"""Status report and metrics, global concurrency limits, and EDF order through the queue."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from spindle.functions import CallRequest, CallStatus, FunctionsClient, limits
from spindle.functions.metrics import render
from spindle.functions.status import report
from tests.functions import apps

WAIT_S = 20.0


async def test_concurrency_limit_holds_across_two_workers(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "limited"
    ids = [await fx.submit("limited", {"seconds": 0.15, "log_dir": str(log_dir)}) for _ in range(8)]
    await start_worker()
    await start_worker()
    for call_id in ids:
        await fx.result(call_id, wait_s=WAIT_S)
    spans = [tuple(map(float, p.name.split("-"))) for p in log_dir.iterdir()]
    assert len(spans) == 8
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2, spans


async def test_edf_order_within_criticality(fx: FunctionsClient, start_worker: Any) -> None:
    # Submitted in reverse deadline order, into one worker slot (with prefetch: the worker
    # leases calls ahead, and must still run them by deadline).
    apps.RUN_ORDER.clear()
    ids = [await fx.submit("ordered", {"tag": i}, deadline=600 - i * 10) for i in range(6)]
    urgent = await fx.submit("ordered", {"tag": 99}, deadline=900, criticality="critical")
    await start_worker(slots=1, prefetch=3)
    for call_id in [*ids, urgent]:
        await fx.result(call_id, wait_s=WAIT_S)
    assert apps.RUN_ORDER == [99, 5, 4, 3, 2, 1, 0]


async def test_status_report_and_metrics(fx: FunctionsClient, start_worker: Any) -> None:
    done = [await fx.submit("add", {"a": 1, "b": 1}) for _ in range(3)]
    failed = await fx.submit("always_fails")
    queued = await fx.submit("multiply", [1, 2], start_after=3600)
    await fx.submit("deferrable_noop", start_after=3600)
    running = await start_worker()
    for call_id in done:
        await fx.result(call_id, wait_s=WAIT_S)
    for _ in range(200):
        if (await fx.status(failed)).state == CallStatus.FAILED:
            break
        await asyncio.sleep(0.05)
    await running.worker._flush_stats()
    rows = {(r.function, r.criticality): r for r in await report(fx.queue)}
    add = rows[("add", "normal")]
    assert add.succeeded == 3 and add.queued == 0 and add.running == 0
    assert add.queue_delay_p50_ms is not None and add.throughput_per_s > 0
    assert rows[("always_fails", "normal")].dead_letters == 1
    assert rows[("multiply", "normal")].delayed == 1
    assert rows[("deferrable_noop", "deferrable")].delayed == 1
    await fx.cancel(queued)
    rows = {(r.function, r.criticality): r for r in await report(fx.queue)}
    assert rows[("multiply", "normal")].delayed == 0
    text = render(list(rows.values())).decode()
    assert (
        'spindle_functions_dead_letters{criticality="normal",function="always_fails"} 1.0' in text
    )


async def test_calls_blocked_at_a_bucket_head_do_not_hide_later_calls(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path
) -> None:
    # More critical `limited` calls (limit 2) than one scan page per bucket holds sit ahead
    # of a normal `add` in every bucket; the add must still run while they wait.
    log_dir = str(tmp_path / "limited")
    blocked = limits.QUEUE_SCAN_BATCH * fx.queue.buckets * 2  # about 2 pages per bucket
    request = CallRequest("limited", {"seconds": 3.0, "log_dir": log_dir}, criticality="critical")
    head: list[str] = []
    while len(head) < blocked:
        head += await fx.submit_batch([request] * min(limits.BATCH_SUBMIT_MAX, blocked - len(head)))
    pages = [await fx.queue.ready(bucket) for bucket in range(fx.queue.buckets)]
    assert all(
        len(page) == limits.QUEUE_SCAN_BATCH and {e.state.function for e in page} == {"limited"}
        for page in pages
    ), "every bucket's first page must be blocked calls for this test to mean anything"
    later = [await fx.submit("add", {"a": i, "b": 1}) for i in range(4)]
    await start_worker(slots=8)
    assert [await fx.result(call_id, wait_s=10) for call_id in later] == [1, 2, 3, 4]
    states = [info.state for info in await asyncio.gather(*(fx.status(i) for i in head))]
    assert states.count(CallStatus.SUCCEEDED) <= 2 and states.count(CallStatus.RUNNING) <= 2
