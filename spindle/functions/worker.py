"""A worker: leases calls from the durable queue and runs many at once.

The I/O shell around the pure parts: it scans the queue buckets, asks the `Scheduler` what
to start, checks each downstream's `AimdWindow` and the function's global concurrency
slots, leases with compare-and-set, runs the attempt (asyncio for async functions, a thread
pool for blocking ones, subprocesses, HTTP), renews leases on a heartbeat and records the
outcome. Every worker also sweeps: it promotes delayed calls that are due and requeues
calls whose lease expired (their worker died), so no worker is special.

Prefetch: besides its `slots`, a worker holds up to `prefetch` more calls leased ahead, so
leasing (a store round trip with an fsync) overlaps running instead of waiting for a slot to
free, and each poll leases many calls, one store batch per bucket. A prefetched call is a
leased call like any other: its lease is renewed by the heartbeat and expires if the worker
dies. Only calls of short functions (recent attempts under `limits.PREFETCH_RUN_MS_MAX`)
without a concurrency limit or downstream are prefetched; they start in EDF order as slots
free. Successes recorded in the same event-loop turn share one store batch per bucket.

SIGTERM drains: no new calls are taken, prefetched calls are handed back (their attempt not
counted), running ones get `drain_s` to finish, the rest are handed back to the queue at
once. A SIGKILLed worker's calls (prefetched ones too) come back when their leases expire
(`lease_s`).

Stopping is bounded: every wait of the shutdown has a timeout (`limits.SHUTDOWN_S_MAX` in
all, besides `drain_s`), and a task is never cancelled once and then awaited without one.
Python 3.11's `asyncio.wait_for` (which the store client awaits every response with) loses a
cancel that lands as the response arrives, so a cancelled loop could go on forever:
`stop_tasks` cancels again until the task ends, and the loops also end on a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import os
import random
import socket
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spindle.functions import codec, limits
from spindle.functions.backpressure import AimdWindow, Outcome, Ticket
from spindle.functions.errors import PermanentError, RetryableError
from spindle.functions.queue import SLOT_PREFIX, STATS_PREFIX, DurableQueue, Entry, now_ms
from spindle.functions.registry import Registered, Registry
from spindle.functions.runners import classify, run_attempt
from spindle.functions.scheduler import Candidate, FunctionPolicy, Scheduler
from spindle.functions.spec import CallState, CallStatus, FunctionSpec
from spindle.functions.stats import WorkerStats, encode_snapshot
from spindle.functions.status import StatusRow, report
from spindle.functions.timeshift import TimeShifter
from spindle.kv.client import AsyncClient
from spindle.kv.errors import Conflict, SpindleError, Throttled
from spindle.kv.errors import Timeout as StoreTimeout

log = logging.getLogger("spindle.functions.worker")

SLOTS_FULL_HOLD_MS = 100
"""After a function's global concurrency slots were all taken, the scan treats its calls as
blocked this long (and looks past them), rather than asking the store again at once."""

STORE_LATENCY_TARGET_S = 0.2
"""A queue scan slower than this counts as store load for time-shifting."""


async def stop_tasks(
    tasks: Collection[asyncio.Task[Any]], timeout_s: float
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait up to `timeout_s` for them to end, cancelling the ones still
    running again every `CANCEL_REPEAT_S` (a single cancel can be lost, see the module
    docstring). Returns the tasks still running at the timeout (logged)."""
    pending = {task for task in tasks if not task.done()}
    give_up = time.monotonic() + timeout_s
    while pending:
        left_s = give_up - time.monotonic()
        if left_s <= 0:
            log.warning("%d tasks did not stop in %.1fs: %s", len(pending), timeout_s, pending)
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(limits.CANCEL_REPEAT_S, left_s))
    return pending


@dataclasses.dataclass
class WorkerConfig:
    slots: int = 16
    prefetch: int | None = None
    """Calls held leased beyond the slots, waiting for one (short functions only); None:
    as many as `slots`; 0: lease only into free slots."""
    threads: int = 8
    lease_s: float = limits.LEASE_S_DEFAULT
    heartbeat_s: float = limits.HEARTBEAT_S_DEFAULT
    poll_s: float = 0.02
    idle_poll_s_max: float = 0.25
    sweep_s: float = 0.5
    stats_s: float = 2.0
    specs_refresh_s: float = 5.0
    drain_s: float = 30.0
    worker_id: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    aimd: dict[str, float] = dataclasses.field(default_factory=dict)
    """AimdWindow options for every downstream (initial, minimum, maximum, ...)."""
    idle_utilisation: float = 0.5

    def validate(self) -> None:
        assert 1 <= self.slots <= limits.WORKER_SLOTS_MAX, "slots out of range"
        assert self.prefetch is None or 0 <= self.prefetch <= limits.WORKER_PREFETCH_MAX, (
            "prefetch out of range"
        )
        assert self.heartbeat_s * 2 < self.lease_s, "heartbeat_s must be under lease_s / 2"


@dataclasses.dataclass
class _Running:
    entry: Entry
    registered: Registered
    lock: asyncio.Lock
    ticket: Ticket | None = None
    slot: tuple[bytes, int] | None = None
    task: asyncio.Task[None] | None = None
    lost: bool = False
    handing_back: bool = False
    args_json: bytes | None = None
    freed: bool = False
    """The worker slot was given back (the attempt ended; its outcome may still be being
    written)."""
    executing: bool = False
    """Started (holds one of the slots); False while prefetched."""


class SuccessBatcher:
    """Records successes: those reported in the same event-loop turn are written together,
    one atomic store batch per bucket (`DurableQueue.succeed_many`)."""

    def __init__(self, queue: DurableQueue) -> None:
        self.queue = queue
        self._pending: list[tuple[Entry, bytes, asyncio.Future[bool]]] = []
        self._writes: set[asyncio.Task[None]] = set()

    def succeed(self, lease: Entry, result_json: bytes) -> asyncio.Future[bool]:
        """A future of whether the success was recorded (False: the lease was lost)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((lease, result_json, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        task = asyncio.create_task(self._write(pending))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, pending: list[tuple[Entry, bytes, asyncio.Future[bool]]]) -> None:
        try:
            recorded = await self.queue.succeed_many(
                [(lease, result) for lease, result, _ in pending]
            )
        except BaseException as error:
            for _, _, future in pending:
                if not future.done():
                    if isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, _, future), ok in zip(pending, recorded, strict=True):
            if not future.done():
                future.set_result(ok)


class Worker:
    def __init__(self, kv: AsyncClient, registry: Registry, config: WorkerConfig) -> None:
        config.validate()
        self.kv = kv
        self.registry = registry
        self.config = config
        self.queue = DurableQueue(kv)
        self.remote_specs: dict[str, FunctionSpec] = {}
        self.expected_run_ms: dict[str, float] = {}
        self.shifter = TimeShifter(idle_utilisation=config.idle_utilisation)
        self.prefetch = config.slots if config.prefetch is None else config.prefetch
        self.scheduler = Scheduler(config.slots, self._policy, self.shifter, self.prefetch)
        self.windows: dict[str, AimdWindow] = {}
        self.running: dict[str, _Running] = {}
        """Calls leased here: running, or prefetched (waiting for a slot)."""
        self.executing = 0
        """Calls running (each holds a slot)."""
        self._waiting: list[tuple[int, int, str]] = []
        """Prefetched calls, a heap by (criticality, deadline, call id)."""
        self.successes = SuccessBatcher(self.queue)
        self.stats = WorkerStats()
        self.store_load = 0.0
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="spindle-fn")
        self._slot_free = asyncio.Event()
        self._slots_full_until_ms: dict[str, int] = {}
        """Functions whose global slots were all taken at the last attempt, until when."""
        self._stopping = False
        """Set on stop: the dispatcher leases no more calls."""
        self._leasing: asyncio.Task[int] | None = None
        """The dispatcher's latest lease batch (see `_finish_leasing`)."""
        self._drained = False
        """Set after the drain: the background loops (heartbeat included: leases of draining
        calls are renewed) end at their next turn, even one that missed its cancel."""
        self.completed = 0
        self.status_rows: list[StatusRow] = []
        """The cluster-wide status report, refreshed with the stats (for /metrics)."""

    # -- lookups -------------------------------------------------------------------------

    def _registered(self, function: str) -> Registered | None:
        local = self.registry.get(function)
        if local is not None:
            return local
        spec = self.remote_specs.get(function)
        if spec is not None and spec.kind in ("command", "http"):
            return Registered(spec)
        return None

    def _policy(self, function: str) -> FunctionPolicy:
        registered = self._registered(function)
        if registered is None:
            return FunctionPolicy()
        spec = registered.spec
        expected_run_ms = self.expected_run_ms.get(function)
        return FunctionPolicy(
            concurrency_limit=spec.concurrency_limit,
            reserved_share=spec.quota.reserved_share,
            opportunistic=spec.quota.opportunistic,
            expected_run_ms=int(1000.0 if expected_run_ms is None else expected_run_ms),
            # A prefetched call would hold a global slot or a window ticket while it waits,
            # and a long one would wait long while other workers may be idle.
            prefetchable=spec.concurrency_limit is None
            and spec.downstream is None
            and expected_run_ms is not None
            and expected_run_ms <= limits.PREFETCH_RUN_MS_MAX,
        )

    def _attempts_max(self, function: str) -> int:
        registered = self._registered(function)
        if registered is not None:
            return registered.spec.retry.max_attempts
        spec = self.remote_specs.get(function)
        return spec.retry.max_attempts if spec is not None else 3

    def window(self, downstream: str) -> AimdWindow:
        found = self.windows.get(downstream)
        if found is None:
            found = self.windows[downstream] = AimdWindow(**self.config.aimd)
        return found

    # -- main ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain."""
        await self.queue.open()
        for spec in self.registry.specs():
            await self.queue.publish(spec)
        await self._refresh_specs()
        loops = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._sweep_loop()),
            asyncio.create_task(self._stats_loop()),
            asyncio.create_task(self._specs_loop()),
        ]
        dispatcher = asyncio.create_task(self._dispatch_loop())
        try:
            await stop.wait()
        finally:
            # Every step below is bounded (limits.SHUTDOWN_S_MAX in all, plus drain_s).
            self._stopping = True
            self._slot_free.set()
            await stop_tasks([dispatcher], limits.STOP_TASK_S_MAX)
            await self._finish_leasing()
            await self._drain()
            self._drained = True
            await stop_tasks(loops, limits.STOP_TASK_S_MAX)
            final = asyncio.create_task(self._final_flush())
            _, late = await asyncio.wait([final], timeout=limits.FINAL_FLUSH_S_MAX)
            if late:
                log.warning("final stats flush took over %.1fs", limits.FINAL_FLUSH_S_MAX)
                await stop_tasks(late, limits.CANCEL_REPEAT_S)
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _final_flush(self) -> None:
        with contextlib.suppress(SpindleError):
            await self._flush_stats()
            self.status_rows = await report(self.queue)

    def join_threads(self, timeout_s: float = limits.THREADS_JOIN_S_MAX) -> int:
        """After `run`: wait up to `timeout_s` for the thread pool's threads to end; returns
        how many are still running (a blocking function that ignored the drain)."""
        give_up = time.monotonic() + timeout_s
        alive = 0
        for thread in list(self.executor._threads):
            thread.join(max(0.0, give_up - time.monotonic()))
            alive += thread.is_alive()
        return alive

    async def _finish_leasing(self) -> None:
        """Wait (up to LEASE_FINISH_S_MAX) for a lease batch the stopped dispatcher left in
        flight, so the calls it leases are handed back with the other prefetched ones."""
        leasing = self._leasing
        if leasing is None:
            return
        if not leasing.done():
            await asyncio.wait([leasing], timeout=limits.LEASE_FINISH_S_MAX)
        if not leasing.done():
            log.warning(
                "a lease batch took over %.1fs; its leases will expire", limits.LEASE_FINISH_S_MAX
            )
            await stop_tasks([leasing], limits.CANCEL_REPEAT_S)
        elif not leasing.cancelled() and leasing.exception() is not None:
            log.warning("the last lease batch failed: %s", leasing.exception())

    async def _drain(self) -> None:
        await self._hand_back_waiting()
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            log.info("draining %d running calls (up to %.1fs)", len(tasks), self.config.drain_s)
            await asyncio.wait(tasks, timeout=self.config.drain_s)
        # Calls still running are cancelled once (not again: their cancel handler writes the
        # hand-back) and given HANDBACK_S_MAX; each step left is a store request with a
        # timeout, so one that missed its cancel still ends. Calls not handed back by then
        # come back when their lease expires.
        for running in list(self.running.values()):
            running.handing_back = True
            if running.task is not None:
                running.task.cancel()
        rest = [r.task for r in self.running.values() if r.task is not None]
        if rest:
            log.info("handing back %d unfinished calls", len(rest))
            _, late = await asyncio.wait(rest, timeout=limits.HANDBACK_S_MAX)
            if late:
                log.warning("%d calls not handed back in time; their leases will expire", len(late))

    async def _hand_back_waiting(self) -> None:
        """Return prefetched calls to the queue at once, their attempt not counted (bounded
        by HANDBACK_S_MAX; a call not handed back by then comes back when its lease
        expires)."""
        waiting = [r for r in self.running.values() if r.task is None]
        self._waiting.clear()
        if not waiting:
            return

        async def hand_back(running: _Running) -> None:
            async with running.lock:
                if not running.lost:
                    with contextlib.suppress(SpindleError):
                        await self.queue.release(running.entry)
            await self._drop_waiting(running)

        log.info("handing back %d prefetched calls", len(waiting))
        tasks = [asyncio.create_task(hand_back(running)) for running in waiting]
        _, late = await asyncio.wait(tasks, timeout=limits.HANDBACK_S_MAX)
        if late:
            await stop_tasks(late, limits.CANCEL_REPEAT_S)

    async def _drop_waiting(self, running: _Running) -> None:
        """Forget a prefetched call that will not start here (handed back, or its lease
        lost)."""
        assert running.task is None
        self.running.pop(running.entry.state.call_id, None)
        self._free(running)
        self._release_ticket(running.registered.spec, running.ticket, Outcome.NEUTRAL, 0.0)
        await self._release_slot(running.slot)

    async def _refresh_specs(self) -> None:
        self.remote_specs = {spec.name: spec for spec in await self.queue.specs()}

    async def _specs_loop(self) -> None:
        while not self._drained:
            await asyncio.sleep(self.config.specs_refresh_s)
            with contextlib.suppress(SpindleError):
                await self._refresh_specs()

    # -- dispatch ------------------------------------------------------------------------

    def _blocked_here(self, state: CallState, t_ms: int) -> bool:
        """True if the call cannot start on this worker now whatever the scheduler says:
        running here already, no code for it, its function at its concurrency limit (here,
        or globally at the last slot attempt) or its downstream window full."""
        if state.call_id in self.running:
            return True
        registered = self._registered(state.function)
        if registered is None:
            return True
        spec = registered.spec
        if spec.concurrency_limit is not None and (
            self.scheduler.running_by_function.get(spec.name, 0) >= spec.concurrency_limit
            or self._slots_full_until_ms.get(spec.name, 0) > t_ms
        ):
            return True
        return spec.downstream is not None and self.window(spec.downstream).full

    async def _scan_bucket(self, bucket: int, wanted: int) -> list[Entry]:
        """The bucket's ready head; while a full page holds fewer than `wanted` calls that
        could start here, read on past it (up to QUEUE_SCAN_PAGES_MAX pages), so calls
        blocked at the head (a function at its limit) do not hide runnable ones behind."""
        found: list[Entry] = []
        after: bytes | None = None
        runnable = 0
        t = now_ms()
        # The first page holds at least `wanted` calls, so the global EDF picks (the best
        # `wanted` of all buckets) are in it, but no more than that (plus a floor for the
        # fairness pass): reading and decoding a full batch per bucket on every poll was
        # most of the queue's cost when calls are short.
        size = min(limits.QUEUE_SCAN_BATCH, max(limits.QUEUE_SCAN_MIN, wanted))
        for _ in range(limits.QUEUE_SCAN_PAGES_MAX):
            page = await self.queue.ready(bucket, size, after)
            found += page
            runnable += sum(not self._blocked_here(entry.state, t) for entry in page)
            if len(page) < size or runnable >= wanted:
                break
            after = page[-1].key
            size = limits.QUEUE_SCAN_BATCH
        return found

    async def _scan(self) -> list[Entry]:
        started = time.monotonic()
        overloaded = False
        wanted = max(1, self.scheduler.capacity - self.scheduler.running_total)
        try:
            pages = await asyncio.gather(
                *(self._scan_bucket(bucket, wanted) for bucket in range(self.queue.buckets))
            )
        except (Throttled, StoreTimeout):
            overloaded = True
            pages = []
        overloaded = overloaded or time.monotonic() - started > STORE_LATENCY_TARGET_S
        self.store_load += 0.1 * (float(overloaded) - self.store_load)
        return [entry for page in pages for entry in page]

    async def _dispatch_loop(self) -> None:
        idle_s = self.config.poll_s
        while not self._stopping:
            if self.scheduler.running_total >= self.scheduler.capacity:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                started = await self._dispatch_once()
            except SpindleError as error:
                log.warning("dispatch: %s", error)
                started = 0
            except Exception:
                log.exception("dispatch failed; retrying")
                started = 0
            if started:
                idle_s = self.config.poll_s
                await asyncio.sleep(0)
            else:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), idle_s)
                idle_s = min(self.config.idle_poll_s_max, idle_s * 2)

    async def _dispatch_once(self) -> int:
        entries = await self._scan()
        t = now_ms()
        self.shifter.observe(t / 1000, max(self.scheduler.utilisation, self.store_load))
        by_id: dict[str, Entry] = {}
        candidates: list[Candidate] = []
        for entry in entries:
            state = entry.state
            if state.deadline_ms > t and self._blocked_here(state, t):
                continue  # leave the slots to calls that can start; expire regardless
            by_id[state.call_id] = entry
            candidates.append(
                Candidate(
                    state.call_id,
                    state.function,
                    state.tenant,
                    state.criticality,
                    state.deadline_ms,
                    state.submitted_ms,
                )
            )
        decision = self.scheduler.pick(t, candidates, self.store_load)
        for candidate in decision.expired:
            found = by_id.get(candidate.call_id)
            if found is not None and await self.queue.expire(found, t):
                self.stats.finished(candidate.function, candidate.criticality.name.lower(), t, True)
        for candidate in decision.deferred:
            entry = by_id[candidate.call_id]
            if not entry.state.deferred:
                await self.queue.mark_deferred(entry)
        prepared = await asyncio.gather(
            *(self._prepare(by_id[candidate.call_id]) for candidate in decision.start)
        )
        taken = [item for item in prepared if item is not None]
        if not taken:
            return 0
        if self._stopping:  # a scan that missed its cancel: lease nothing more
            for entry, registered, ticket, slot in taken:
                self.scheduler.finished(entry.state.function, entry.state.tenant)
                self._release_ticket(registered.spec, ticket, Outcome.NEUTRAL, 0.0)
                await self._release_slot(slot)
            return 0
        # Shielded: a dispatcher cancelled (by a stop) while its lease batch is in flight must
        # not lose leases the store granted; the drain waits for this task, then hands back.
        leasing = self._leasing = asyncio.create_task(self._lease_taken(taken))
        return await asyncio.shield(leasing)

    async def _lease_taken(
        self, taken: list[tuple[Entry, Registered, Ticket | None, tuple[bytes, int] | None]]
    ) -> int:
        """Lease the picked calls and record each lease as prefetched (started as slots free);
        how many were leased."""
        # One lease batch per bucket. The args are written once at submit, so they are read
        # alongside (and thrown away if a lease is lost), saving a round trip per call.
        entries = [entry for entry, _, _, _ in taken]
        leases, args = await asyncio.gather(
            self.queue.lease_many(entries, self.config.worker_id, self.config.lease_s),
            self.queue.args([entry.state.call_id for entry in entries]),
        )
        started = 0
        for (entry, registered, ticket, slot), lease, args_json in zip(
            taken, leases, args, strict=True
        ):
            state = entry.state
            if lease is None:
                self.scheduler.finished(state.function, state.tenant)
                self._release_ticket(registered.spec, ticket, Outcome.NEUTRAL, 0.0)
                await self._release_slot(slot)
                continue
            running = _Running(lease, registered, asyncio.Lock(), ticket, slot, args_json=args_json)
            self.running[state.call_id] = running
            heapq.heappush(
                self._waiting, (int(state.criticality), state.deadline_ms, state.call_id)
            )
            started += 1
        self._start_waiting()
        return started

    async def _prepare(
        self, entry: Entry
    ) -> tuple[Entry, Registered, Ticket | None, tuple[bytes, int] | None] | None:
        """Take what a picked call needs before its lease (its downstream's window ticket,
        a global concurrency slot) and count it as held; None if it cannot have them."""
        state = entry.state
        registered = self._registered(state.function)
        assert registered is not None
        spec = registered.spec
        ticket: Ticket | None = None
        if spec.downstream is not None:
            ticket = self.window(spec.downstream).try_acquire()
            if ticket is None:
                return None  # stays queued until the window has room
        slot: tuple[bytes, int] | None = None
        if spec.concurrency_limit is not None:
            if self._slots_full_until_ms.get(spec.name, 0) > now_ms():
                self._release_ticket(spec, ticket, Outcome.NEUTRAL, 0.0)
                return None
            slot = await self._acquire_slot(spec.name, spec.concurrency_limit)
            if slot is None:
                self._slots_full_until_ms[spec.name] = now_ms() + SLOTS_FULL_HOLD_MS
                self._release_ticket(spec, ticket, Outcome.NEUTRAL, 0.0)
                return None
        self.scheduler.started(state.function, state.tenant)
        return entry, registered, ticket, slot

    def _start_waiting(self) -> None:
        """Start prefetched calls, most urgent first, while slots are free."""
        while self._waiting and self.executing < self.config.slots and not self._stopping:
            call_id = heapq.heappop(self._waiting)[2]
            running = self.running.get(call_id)
            if running is None or running.lost or running.task is not None:
                continue
            running.executing = True
            self.executing += 1
            state = running.entry.state
            delay_ms = now_ms() - max(state.ready_ms, state.not_before_ms)
            self.stats.started(state.function, state.criticality.name.lower(), delay_ms)
            running.task = asyncio.create_task(self._execute(running))

    def _release_ticket(
        self, spec: FunctionSpec, ticket: Ticket | None, outcome: Outcome, latency_s: float
    ) -> None:
        if ticket is not None and spec.downstream is not None:
            self.window(spec.downstream).release(ticket, outcome, latency_s)

    # -- global concurrency slots (one store key per slot, held with a TTL) ----------------

    async def _acquire_slot(self, function: str, limit: int) -> tuple[bytes, int] | None:
        ttl_ms = int(self.config.lease_s * 1000)
        for index in random.sample(range(limit), min(limit, 3)):
            key = SLOT_PREFIX + f"{function}/{index}".encode()
            try:
                version = await self.kv.put(
                    key,
                    self.config.worker_id.encode(),
                    if_absent=True,
                    ttl_ms=ttl_ms,
                    keyspace=self.queue.meta_keyspace,
                )
            except Conflict:
                continue
            return key, version
        return None

    async def _release_slot(self, slot: tuple[bytes, int] | None) -> None:
        if slot is not None:
            with contextlib.suppress(Conflict):
                await self.kv.delete(slot[0], if_version=slot[1], keyspace=self.queue.meta_keyspace)

    # -- one call ------------------------------------------------------------------------

    async def _execute(self, running: _Running) -> None:
        state = running.entry.state
        spec = running.registered.spec
        started = time.monotonic()
        outcome = Outcome.NEUTRAL
        try:
            raw = running.args_json
            args: Any = None if raw is None else codec.decode_json(raw)
            try:
                result = await asyncio.wait_for(
                    run_attempt(
                        running.registered, state.call_id, state.attempt, args, self.executor
                    ),
                    spec.timeout_s,
                )
                result_json = codec.encode_json(result)
                if len(result_json) > limits.RESULT_BYTES_MAX:
                    raise PermanentError(
                        f"result of {len(result_json)} bytes exceeds RESULT_BYTES_MAX"
                    )
            except Exception as error:
                error_type, overload = classify(error)
                outcome = Outcome.OVERLOAD if overload else Outcome.NEUTRAL
                self._attempt_ended(running, outcome, time.monotonic() - started)
                await self._failed(running, error, error_type, overload)
                return
            outcome = Outcome.SUCCESS
            # The slot (and the downstream's window ticket) is free once the function
            # returned; recording the outcome (an fsync in the store) overlaps with the next
            # calls.
            self._attempt_ended(running, outcome, time.monotonic() - started)
            async with running.lock:
                if not running.lost:
                    await self.successes.succeed(running.entry, result_json)
            self._finished_stats(running, CallStatus.SUCCEEDED)
        except asyncio.CancelledError:
            if running.handing_back and not running.lost:
                async with running.lock:
                    with contextlib.suppress(SpindleError):
                        await self.queue.fail(running.entry, "worker drained", "Drained", now_ms())
        except SpindleError as error:
            log.warning("call %s: store error %s; its lease will expire", state.call_id, error)
        finally:
            elapsed_s = time.monotonic() - started
            previous = self.expected_run_ms.get(spec.name, elapsed_s * 1000)
            self.expected_run_ms[spec.name] = previous + 0.2 * (elapsed_s * 1000 - previous)
            self._attempt_ended(running, outcome, elapsed_s)
            await self._release_slot(running.slot)
            self.running.pop(state.call_id, None)
            self.completed += 1

    def _attempt_ended(self, running: _Running, outcome: Outcome, latency_s: float) -> None:
        """Give back the slot and the window ticket (once): the function returned (or the
        attempt was cancelled); its outcome may still be being written."""
        self._free(running)
        ticket, running.ticket = running.ticket, None
        self._release_ticket(running.registered.spec, ticket, outcome, latency_s)

    def _free(self, running: _Running) -> None:
        if not running.freed:
            running.freed = True
            state = running.entry.state
            self.scheduler.finished(state.function, state.tenant)
            if running.executing:
                self.executing -= 1
                self._start_waiting()
            self._slot_free.set()

    async def _failed(
        self, running: _Running, error: BaseException, error_type: str, overload: bool
    ) -> None:
        state = running.entry.state
        policy = running.registered.spec.retry
        retryable = not isinstance(error, PermanentError) and (
            isinstance(error, RetryableError) or overload or policy.retries(error_type)
        )
        t = now_ms()
        retry_at_ms: int | None = None
        if retryable and state.attempt < policy.max_attempts:
            retry_at_ms = t + int(policy.backoff_s(state.attempt, random.random()) * 1000)
        message = str(error) or error_type
        async with running.lock:
            if running.lost:
                return
            status = await self.queue.fail(running.entry, message, error_type, retry_at_ms, t)
        if status is not None and status.final:
            self._finished_stats(running, status)

    def _finished_stats(self, running: _Running, status: CallStatus) -> None:
        state = running.entry.state
        t = now_ms()
        missed = status == CallStatus.EXPIRED or t > state.deadline_ms
        self.stats.finished(state.function, state.criticality.name.lower(), t, missed)

    # -- background loops ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._drained:
            await asyncio.sleep(self.config.heartbeat_s)
            await asyncio.gather(
                *(self._renew(running) for running in list(self.running.values())),
                return_exceptions=True,
            )

    async def _renew(self, running: _Running) -> None:
        """Renew the lease of a running or prefetched call."""
        async with running.lock:
            if running.lost or (running.task is not None and running.task.done()):
                return
            renewed = await self.queue.renew(running.entry, self.config.lease_s)
            if renewed is None:
                log.info("lost the lease of %s (cancelled or reclaimed)", running.entry.key)
                running.lost = True
                if running.task is not None:
                    running.task.cancel()
                    return
            else:
                running.entry = renewed
        if running.lost:  # prefetched: it will not start
            await self._drop_waiting(running)
            return
        if running.slot is not None:
            key, version = running.slot
            with contextlib.suppress(Conflict):
                new_version = await self.kv.put(
                    key,
                    self.config.worker_id.encode(),
                    if_version=version,
                    ttl_ms=int(self.config.lease_s * 1000),
                    keyspace=self.queue.meta_keyspace,
                )
                running.slot = (key, new_version)

    async def _sweep_loop(self) -> None:
        while not self._drained:
            await asyncio.sleep(self.config.sweep_s)
            try:
                for bucket in range(self.queue.buckets):
                    await self.queue.promote_due(bucket)
                    await self.queue.reclaim_expired(bucket, self._attempts_max)
            except SpindleError as error:
                log.warning("sweep: %s", error)
            except Exception:
                log.exception("sweep failed; retrying")
            if self.queue.buckets and not self.running:
                self._slot_free.set()

    async def _flush_stats(self) -> None:
        snapshot = encode_snapshot(self.stats.snapshot(now_ms()))
        await self.kv.put(
            STATS_PREFIX + self.config.worker_id.encode(),
            snapshot,
            ttl_ms=int(max(30.0, self.config.stats_s * 5) * 1000),
            keyspace=self.queue.meta_keyspace,
        )

    async def _stats_loop(self) -> None:
        while not self._drained:
            await asyncio.sleep(self.config.stats_s)
            with contextlib.suppress(SpindleError):
                await self._flush_stats()
