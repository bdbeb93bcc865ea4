"""Prefetch (calls leased ahead of free slots) and batched store writes: per-bucket lease
and success batches with their conflict fallback, hand-back of unstarted calls, EDF order of
prefetched calls, lease renewal and loss while prefetched, and the scheduler's rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from spindle.functions import CallStatus, FunctionsClient, keys
from spindle.functions.queue import QUEUED, RUNNING, SUCCEEDED, Entry
from spindle.functions.scheduler import Candidate, FunctionPolicy, Scheduler
from spindle.functions.spec import Criticality

WAIT_S = 20.0


async def _until(predicate: Any, timeout_s: float = WAIT_S) -> None:
    give_up = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < give_up, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _counts(fx: FunctionsClient, function: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for (name, _, counter), value in (await fx.queue.counters()).items():
        if name == function:
            totals[counter] = totals.get(counter, 0) + value
    return totals


def _starts(marker: Path) -> list[str]:
    """Tags of the calls started, in start order."""
    if not marker.exists():
        return []
    names = sorted(marker.iterdir(), key=lambda path: int(path.name.split("-")[0]))
    return [path.name.split("-")[1] for path in names]


# -- the queue's batches ----------------------------------------------------------------------


async def _one_bucket(fx: FunctionsClient, calls: int) -> list[Entry]:
    """Submit `calls` calls; the ready entries of a bucket holding at least two of them."""
    for _ in range(calls):
        await fx.submit("add", {"a": 1, "b": 2})
    for bucket in range(fx.queue.buckets):
        entries = await fx.queue.ready(bucket)
        if len(entries) >= 2:
            return entries
    raise AssertionError("no bucket with two calls")


async def test_lease_many_batches_a_bucket_and_falls_back_on_conflict(fx: FunctionsClient) -> None:
    entries = await _one_bucket(fx, 2 * fx.queue.buckets + 1)
    total = 2 * fx.queue.buckets + 1
    # Someone else leases the first call: the batch of all of them conflicts, and is retried
    # call by call, so exactly the others are leased.
    taken = await fx.queue.lease(entries[0], "other", 30)
    assert taken is not None
    leases = await fx.queue.lease_many(entries, "me", 30)
    assert leases[0] is None
    assert all(lease is not None for lease in leases[1:])
    mine = [lease for lease in leases if lease is not None]
    assert {lease.state.lease_owner for lease in mine} == {"me"}
    assert {lease.state.attempt for lease in mine} == {1}
    counts = await _counts(fx, "add")
    assert counts[RUNNING] == len(entries) and counts[QUEUED] == total - len(entries)
    # Success batch: the other worker's lease went stale (renewed since), so its success is
    # refused and the rest are recorded.
    renewed = await fx.queue.renew(taken, 30)
    assert renewed is not None
    recorded = await fx.queue.succeed_many([(taken, b"1"), *((lease, b"3") for lease in mine)])
    assert recorded == [False, *([True] * len(mine))]
    for lease in mine:
        state = await fx.queue.state(lease.state.call_id)
        assert state.state == CallStatus.SUCCEEDED and state.result == b"3"
    assert await fx.queue.succeed_many([(renewed, b"1")]) == [True]
    counts = await _counts(fx, "add")
    assert counts[RUNNING] == 0 and counts[SUCCEEDED] == len(entries)
    assert counts[QUEUED] == total - len(entries)


async def test_lease_many_without_conflict_is_one_batch(fx: FunctionsClient) -> None:
    entries = await _one_bucket(fx, 2 * fx.queue.buckets + 1)
    leases = await fx.queue.lease_many(entries, "me", 30)
    versions = {lease.version for lease in leases if lease is not None}
    assert len(versions) == 1 and None not in leases
    recorded = await fx.queue.succeed_many([(lease, b"3") for lease in leases if lease])
    assert recorded == [True] * len(entries)


async def test_release_hands_back_without_counting_the_attempt(fx: FunctionsClient) -> None:
    call_id = await fx.submit("add", {"a": 1, "b": 2})
    bucket = keys.bucket_of(call_id)
    [entry] = [e for e in await fx.queue.ready(bucket) if e.state.call_id == call_id]
    lease = await fx.queue.lease(entry, "me", 30)
    assert lease is not None and lease.state.attempt == 1
    assert await fx.queue.release(lease)
    state = await fx.queue.state(call_id)
    assert state.state == CallStatus.QUEUED and state.attempt == 0 and state.lease_owner is None
    assert not await fx.queue.release(lease)  # the lease is gone
    counts = await _counts(fx, "add")
    assert counts[QUEUED] == 1 and counts[RUNNING] == 0


# -- the scheduler ----------------------------------------------------------------------------


def _candidate(i: int, function: str = "f") -> Candidate:
    return Candidate(f"c{i:03d}", function, "t", Criticality.NORMAL, 10_000 + i, 0)


def test_scheduler_prefetches_only_prefetchable_functions() -> None:
    policies = {"short": FunctionPolicy(prefetchable=True), "long": FunctionPolicy()}
    scheduler = Scheduler(2, policies.__getitem__, prefetch=3)
    assert scheduler.capacity == 5
    picks = scheduler.pick(0, [_candidate(i, "short") for i in range(10)]).start
    assert len(picks) == 5  # 2 slots + 3 prefetched
    picks = scheduler.pick(0, [_candidate(i, "long") for i in range(10)]).start
    assert len(picks) == 2  # only into free slots
    for _ in range(2):
        scheduler.started("short", "t")
    # Both slots held: a long call may not wait for one, a short one may.
    mixed = [_candidate(0, "long"), _candidate(1, "short"), _candidate(2, "short")]
    assert [c.function for c in scheduler.pick(0, mixed).start] == ["short", "short"]
    for _ in range(3):
        scheduler.started("short", "t")
    assert scheduler.utilisation == 1.0  # held beyond the slots: still just full
    assert scheduler.pick(0, [_candidate(9, "short")]).start == []


def test_scheduler_counts_prefetched_calls_against_concurrency_limits() -> None:
    policies = {"f": FunctionPolicy(concurrency_limit=3, prefetchable=True)}
    scheduler = Scheduler(2, policies.__getitem__, prefetch=4)
    assert len(scheduler.pick(0, [_candidate(i) for i in range(10)]).start) == 3


# -- the worker ---------------------------------------------------------------------------


async def _warm_up(fx: FunctionsClient, gate: Path, marker: Path) -> None:
    """One quick `gated` call, so the worker learns the function is short (prefetchable)."""
    gate.touch()
    await fx.result(await fx.submit("gated", _args(gate, marker, "warm")), wait_s=WAIT_S)
    gate.unlink()


def _started(marker: Path, tags: list[str]) -> Any:
    """A predicate: exactly `tags` started, in that order (the first call is the blocker)."""

    async def check() -> bool:
        return _starts(marker) == tags

    return check


def _args(gate: Path, marker: Path, tag: str) -> dict[str, str]:
    return {"gate": str(gate), "marker": str(marker), "tag": tag}


async def _leased(fx: FunctionsClient, *call_ids: str) -> None:
    async def all_leased() -> bool:
        states = [await fx.status(call_id) for call_id in call_ids]
        return all(state.state == CallStatus.RUNNING for state in states)

    await _until(all_leased)


async def test_prefetched_calls_run_by_deadline_and_keep_their_leases(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "starts"
    worker = await start_worker(slots=1, prefetch=3)
    await _warm_up(fx, gate, marker)
    blocker = await fx.submit("gated", _args(gate, marker, "a"))

    async def blocked() -> bool:
        return _starts(marker) == ["warm", "a"]

    await _until(blocked)
    late = await fx.submit("gated", _args(gate, marker, "late"), deadline=600)
    await _leased(fx, late)
    # Leased by a later poll than `late`, but more urgent: it runs first.
    urgent = await fx.submit("gated", _args(gate, marker, "urgent"), deadline=300)
    await _leased(fx, urgent)
    assert _starts(marker) == ["warm", "a"]

    async def both_prefetched() -> bool:
        # The store shows a lease a moment before the worker has recorded it.
        return len([r for r in worker.worker.running.values() if r.task is None]) == 2

    await _until(both_prefetched)
    # Longer than the lease (2 s): the heartbeat renews prefetched leases too.
    await asyncio.sleep(2.5)
    gate.touch()
    for call_id in (blocker, late, urgent):
        await fx.result(call_id, wait_s=WAIT_S)
    assert _starts(marker) == ["warm", "a", "urgent", "late"]
    for call_id in (blocker, late, urgent):
        assert (await fx.status(call_id)).attempt == 1


async def test_prefetched_call_whose_lease_is_lost_runs_again(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "starts"
    await start_worker(slots=1, prefetch=2)
    await _warm_up(fx, gate, marker)
    blocker = await fx.submit("gated", _args(gate, marker, "a"))
    await _until(_started(marker, ["warm", "a"]))
    waiting = await fx.submit("gated", _args(gate, marker, "b"))
    await _leased(fx, blocker, waiting)
    # As if the worker had died: its leases are reclaimed once they expire.
    bucket = keys.bucket_of(waiting)
    far_ms = int(time.time() * 1000) + 60_000
    assert await fx.queue.reclaim_expired(bucket, lambda _: 5, far_ms) >= 1

    # The worker finds the lease lost at its next heartbeat and drops the call (it never
    # leases a call it holds), then leases it again: attempt 2.
    async def leased_again() -> bool:
        state = await fx.status(waiting)
        return state.state == CallStatus.RUNNING and state.attempt == 2

    await _until(leased_again)
    gate.touch()
    await fx.result(blocker, wait_s=WAIT_S)
    await fx.result(waiting, wait_s=WAIT_S)
    # Once under the new lease; possibly once more on the stale one, if a slot freed (the
    # blocker's own lost lease) before the heartbeat saw b's loss: its result is refused.
    assert 1 <= _starts(marker).count("b") <= 2
    assert (await fx.status(waiting)).attempt == 2
    counts = await _counts(fx, "gated")
    assert counts.get(RUNNING, 0) == 0 and counts.get(QUEUED, 0) == 0


@pytest.mark.parametrize("stop_in_lease_batch", [False, True])
async def test_drain_hands_back_prefetched_calls_unstarted(
    fx: FunctionsClient, start_worker: Any, tmp_path: Path, stop_in_lease_batch: bool
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "starts"
    # Long leases: this test is about the hand-back, and a lease that expired while a
    # loaded CI machine starved the heartbeat (once, with 2 s) would re-queue a call with
    # its attempt counted; with no other worker, an expired lease is not even reclaimed, so
    # only the hand-back can pass this.
    first = await start_worker(slots=1, prefetch=2, lease_s=60.0)
    await _warm_up(fx, gate, marker)
    blocker = await fx.submit("gated", _args(gate, marker, "a"))
    await _until(_started(marker, ["warm", "a"]))
    in_flight = asyncio.Event()
    if stop_in_lease_batch:
        # The store grants the leases while the args read that goes with them is slow: a
        # stop once cancelled the dispatcher after the store had leased the calls and before
        # the worker had recorded them, so they were never handed back.
        queue = first.worker.queue
        args_read = queue.args

        async def slow_args(call_ids: list[str]) -> list[bytes | None]:
            in_flight.set()
            await asyncio.sleep(1.0)
            return await args_read(call_ids)

        queue.args = slow_args  # type: ignore[method-assign]
    prefetched = [await fx.submit("gated", _args(gate, marker, f"p{i}")) for i in range(2)]
    await _leased(fx, blocker, *prefetched)
    assert in_flight.is_set() == stop_in_lease_batch
    first.stop.set()

    async def handed_back() -> bool:
        states = [await fx.status(call_id) for call_id in prefetched]
        return all(state.state == CallStatus.QUEUED for state in states)

    await _until(handed_back)
    for call_id in prefetched:
        assert (await fx.status(call_id)).attempt == 0  # not counted: it never ran
    gate.touch()
    await asyncio.wait_for(first.task, WAIT_S)
    assert (await fx.status(blocker)).state == CallStatus.SUCCEEDED
    await start_worker(slots=1)
    for call_id in prefetched:
        await fx.result(call_id, wait_s=WAIT_S)
        assert (await fx.status(call_id)).attempt == 1
    assert sorted(_starts(marker)) == ["a", "p0", "p1", "warm"]
