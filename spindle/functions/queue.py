"""The durable queue on the store (after XFaaS's DurableQ). See `keys` for the layout.

Every state change is one atomic batch in the call's bucket (one shard): it deletes the
call's current index entry with `if_version` (so of two racing workers exactly one wins and
the other gets `Conflict`), writes the next index entry and the state record, and moves the
bucket's counters. A submit returns only after its batch is durable in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Iterable

import msgspec

from spindle.functions import codec, keys, limits
from spindle.functions.errors import UnknownCall
from spindle.functions.spec import CallState, CallStatus, Criticality, FunctionSpec
from spindle.kv import protocol as p
from spindle.kv.client import AsyncClient
from spindle.kv.errors import AlreadyExists, Conflict, InvalidArgument

QUEUE_KEYSPACE = "functions.queue"
META_KEYSPACE = "functions.meta"
BUCKETS_KEY = b"queue/buckets"
SPEC_PREFIX = b"spec/"
STATS_PREFIX = b"stats/"
SLOT_PREFIX = b"slot/"
COUNTER = b"n/"

# Counter names (the last part of a counter key).
QUEUED = "queued"
DELAYED = "delayed"
RUNNING = "running"
DEAD = "dead"
SUCCEEDED = "succeeded"
MISSED = "missed"
"""Calls that finished after their deadline, or expired."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True)
class Entry:
    """An index entry as read (or written): the token for the call's next transition."""

    key: bytes
    version: int
    state: CallState


@dataclasses.dataclass(frozen=True)
class NewCall:
    """A validated call ready to enqueue."""

    function: str
    tenant: str
    criticality: Criticality
    args_json: bytes
    not_before_ms: int
    deadline_ms: int
    idempotency_key: str | None = None


def counter_key(bucket: int, function: str, criticality: Criticality, name: str) -> bytes:
    return (
        keys.section(bucket, COUNTER)
        + function.encode()
        + b"\0"
        + bytes([int(criticality)])
        + name.encode()
    )


def _merge_counters(ops: list[p.BatchOp]) -> list[p.BatchOp]:
    """`ops` with the increments of each counter summed into one (same effect, fewer ops)."""
    merged: list[p.BatchOp] = []
    increments: dict[bytes, int] = {}
    for op in ops:
        if isinstance(op, p.BatchIncr):
            increments[op.key] = increments.get(op.key, 0) + op.delta
        else:
            merged.append(op)
    merged += [p.BatchIncr(key=key, delta=delta) for key, delta in increments.items() if delta]
    return merged


def _index_counter(key: bytes) -> str:
    tag = key[2:4]
    return {keys.READY: QUEUED, keys.DELAYED: DELAYED, keys.LEASED: RUNNING}[tag]


class DurableQueue:
    """Calls in the store: enqueue, lease, renew, finish, retry, cancel, replay, sweep."""

    def __init__(
        self,
        kv: AsyncClient,
        *,
        keyspace: str = QUEUE_KEYSPACE,
        meta_keyspace: str = META_KEYSPACE,
        retention_s: float = limits.RETENTION_S_DEFAULT,
    ) -> None:
        self.kv = kv
        self.keyspace = keyspace
        self.meta_keyspace = meta_keyspace
        self.retention_ms = int(retention_s * 1000)
        self.buckets = 0

    # -- setup and function specs ------------------------------------------------------

    async def open(self, buckets: int = limits.QUEUE_BUCKETS_DEFAULT) -> None:
        """Create the keyspaces if needed; learn the bucket count (fixed at creation)."""
        if not 1 <= buckets <= limits.QUEUE_BUCKETS_MAX:
            raise InvalidArgument(f"buckets must be 1..{limits.QUEUE_BUCKETS_MAX}")
        with contextlib.suppress(AlreadyExists):
            await self.kv.create_keyspace(self.meta_keyspace, shards=1, partitioning="hash")
        stored = await self.kv.get(BUCKETS_KEY, keyspace=self.meta_keyspace)
        if stored is None:
            with contextlib.suppress(Conflict):
                await self.kv.put(
                    BUCKETS_KEY, str(buckets).encode(), if_absent=True, keyspace=self.meta_keyspace
                )
            stored = await self.kv.get(BUCKETS_KEY, keyspace=self.meta_keyspace)
            assert stored is not None
        self.buckets = int(stored)
        with contextlib.suppress(AlreadyExists):
            await self.kv.create_keyspace(
                self.keyspace,
                shards=self.buckets,
                partitioning="range",
                split_points=keys.split_points(self.buckets),
            )

    async def publish(self, spec: FunctionSpec) -> None:
        spec.validate()
        await self.kv.put(
            SPEC_PREFIX + spec.name.encode(), codec.encode_spec(spec), keyspace=self.meta_keyspace
        )

    async def spec(self, name: str) -> FunctionSpec | None:
        raw = await self.kv.get(SPEC_PREFIX + name.encode(), keyspace=self.meta_keyspace)
        return None if raw is None else codec.decode_spec(raw)

    async def specs(self) -> list[FunctionSpec]:
        return [
            codec.decode_spec(item.value)
            async for item in self.kv.scan(prefix=SPEC_PREFIX, keyspace=self.meta_keyspace)
        ]

    # -- submit --------------------------------------------------------------------------

    async def enqueue(self, call: NewCall, at_ms: int | None = None) -> tuple[str, bool]:
        """Store a call durably; returns (call id, created). A repeated idempotency key
        within the retention window returns the original id and created=False."""
        submitted_ms = now_ms() if at_ms is None else at_ms
        for _ in range(3):
            if call.idempotency_key is None:
                bucket = random.randrange(self.buckets)
            else:
                bucket = keys.bucket_for_idempotency(
                    call.function, call.idempotency_key, self.buckets
                )
            call_id = keys.new_call_id(bucket, submitted_ms)
            delayed = call.not_before_ms > submitted_ms
            state = CallState(
                call_id=call_id,
                function=call.function,
                tenant=call.tenant,
                criticality=call.criticality,
                submitted_ms=submitted_ms,
                not_before_ms=call.not_before_ms,
                deadline_ms=call.deadline_ms,
                ready_ms=0 if delayed else submitted_ms,
                idempotency_key=call.idempotency_key,
            )
            index = keys.delayed_key(state) if delayed else keys.ready_key(state)
            ops: list[p.BatchOp] = []
            if call.idempotency_key is not None:
                ops.append(
                    p.BatchPut(
                        key=keys.idempotency_key(call.function, call.idempotency_key, bucket),
                        value=call_id.encode(),
                        ttl_ms=self.retention_ms + (call.deadline_ms - submitted_ms),
                        if_absent=True,
                    )
                )
            ops += [
                p.BatchPut(key=keys.args_key(call_id), value=call.args_json),
                p.BatchPut(key=keys.state_key(call_id), value=codec.encode_state(state)),
                p.BatchPut(key=index, value=codec.encode_state(state)),
                self._count(state, DELAYED if delayed else QUEUED, 1),
            ]
            try:
                await self.kv.write_batch(ops, keyspace=self.keyspace)
                return call_id, True
            except Conflict:
                assert call.idempotency_key is not None
                raw = await self.kv.get(
                    keys.idempotency_key(call.function, call.idempotency_key, bucket),
                    keyspace=self.keyspace,
                )
                if raw is not None:
                    return raw.decode(), False
                # The key expired between our batch and our read: try again.
        raise Conflict("idempotency key kept changing under the submit")

    # -- reads ---------------------------------------------------------------------------

    async def state(self, call_id: str) -> CallState:
        raw = await self.kv.get(keys.state_key(call_id), keyspace=self.keyspace)
        if raw is None:
            raise UnknownCall(f"no call {call_id!r} (unknown, or past its retention)")
        return codec.decode_state(raw)

    async def args(self, call_ids: list[str]) -> list[bytes | None]:
        return await self.kv.multi_get(
            [keys.args_key(call_id) for call_id in call_ids], keyspace=self.keyspace
        )

    async def ready(
        self, bucket: int, limit: int = limits.QUEUE_SCAN_BATCH, after: bytes | None = None
    ) -> list[Entry]:
        """The bucket's first ready calls: by criticality, then earliest deadline; with
        `after` (a ready key), the ones that follow it."""
        if after is None:
            return await self._entries(keys.section(bucket, keys.READY), None, limit)
        return await self._entries(after + b"\0", keys.section_end(bucket, keys.READY), limit)

    async def ready_of(
        self, bucket: int, criticality: Criticality, limit: int = limits.QUEUE_SCAN_BATCH
    ) -> list[Entry]:
        prefix = keys.ready_criticality_prefix(bucket, criticality)
        return await self._entries(prefix, None, limit)

    async def _entries(self, prefix: bytes, end: bytes | None, limit: int) -> list[Entry]:
        if end is None:
            page = await self.kv.scan_page(prefix=prefix, limit=limit, keyspace=self.keyspace)
        else:
            page = await self.kv.scan_page(
                start=prefix, end=end, limit=limit, keyspace=self.keyspace
            )
        return [Entry(i.key, i.version, codec.decode_state(i.value)) for i in page.items]

    # -- transitions ---------------------------------------------------------------------

    def _count(self, state: CallState, name: str, delta: int) -> p.BatchIncr:
        bucket = keys.bucket_of(state.call_id)
        key = counter_key(bucket, state.function, state.criticality, name)
        return p.BatchIncr(key=key, delta=delta)

    def _move_ops(
        self,
        entry: Entry,
        new: CallState,
        new_index: bytes | None,
        extra: Iterable[p.BatchOp] = (),
    ) -> list[p.BatchOp]:
        """The batch that replaces `entry` by `new` (indexed at `new_index`, or final with
        retention when None)."""
        ops: list[p.BatchOp] = [
            p.BatchDelete(key=entry.key, if_version=entry.version),
            self._count(entry.state, _index_counter(entry.key), -1),
        ]
        encoded = codec.encode_state(new)
        if new_index is None:
            ops.append(
                p.BatchPut(key=keys.state_key(new.call_id), value=encoded, ttl_ms=self.retention_ms)
            )
        else:
            ops.append(p.BatchPut(key=keys.state_key(new.call_id), value=encoded))
            ops.append(p.BatchPut(key=new_index, value=encoded))
            ops.append(self._count(new, _index_counter(new_index), 1))
        ops.extend(extra)
        return ops

    async def _move(
        self,
        entry: Entry,
        new: CallState,
        new_index: bytes | None,
        extra: Iterable[p.BatchOp] = (),
    ) -> int | None:
        """Replace `entry` by `new` (indexed at `new_index`, or final with retention when
        None). Returns the batch's version, or None when another actor moved the call first."""
        try:
            result = await self.kv.write_batch(
                self._move_ops(entry, new, new_index, extra), keyspace=self.keyspace
            )
        except Conflict:
            return None
        return result.version

    async def _move_many(
        self, moves: list[tuple[Entry, CallState, bytes | None, list[p.BatchOp]]]
    ) -> list[int | None]:
        """Several `_move`s, one atomic batch per bucket (up to `MOVES_PER_BATCH_MAX` calls
        each), the buckets' batches concurrently. A batch that meets a `Conflict` (another
        actor moved one of its calls) is retried call by call, so exactly the calls still
        in the expected state move. Returns each move's version, or None."""
        versions: list[int | None] = [None] * len(moves)
        groups: dict[int, list[int]] = {}
        for position, (entry, _, _, _) in enumerate(moves):
            groups.setdefault(keys.bucket_of(entry.state.call_id), []).append(position)
        chunks = [
            positions[i : i + limits.MOVES_PER_BATCH_MAX]
            for positions in groups.values()
            for i in range(0, len(positions), limits.MOVES_PER_BATCH_MAX)
        ]

        async def one_by_one(chunk: list[int]) -> None:
            for position in chunk:
                versions[position] = await self._move(*moves[position])

        async def together(chunk: list[int]) -> None:
            if len(chunk) == 1:
                await one_by_one(chunk)
                return
            ops: list[p.BatchOp] = []
            for position in chunk:
                ops += self._move_ops(*moves[position])
            try:
                result = await self.kv.write_batch(_merge_counters(ops), keyspace=self.keyspace)
            except Conflict:
                await one_by_one(chunk)
                return
            for position in chunk:
                versions[position] = result.version

        await asyncio.gather(*(together(chunk) for chunk in chunks))
        return versions

    async def _reindex(self, entry: Entry, new: CallState, new_index: bytes) -> Entry | None:
        version = await self._move(entry, new, new_index)
        return None if version is None else Entry(new_index, version, new)

    def _leased(self, entry: Entry, owner: str, lease_s: float, t: int) -> CallState:
        return msgspec.structs.replace(
            entry.state,
            state=CallStatus.RUNNING,
            attempt=entry.state.attempt + 1,
            lease_owner=owner,
            lease_expiry_ms=t + int(lease_s * 1000),
            started_ms=t,
        )

    async def lease(
        self, entry: Entry, owner: str, lease_s: float, at_ms: int | None = None
    ) -> Entry | None:
        """Take a ready call for `lease_s`; None if someone else took (or cancelled) it."""
        t = now_ms() if at_ms is None else at_ms
        new = self._leased(entry, owner, lease_s, t)
        return await self._reindex(entry, new, keys.leased_key(new))

    async def lease_many(
        self, entries: list[Entry], owner: str, lease_s: float, at_ms: int | None = None
    ) -> list[Entry | None]:
        """`lease` of several ready calls, one atomic batch per bucket: one store write per
        bucket instead of one per call. Each result is the call's lease, or None if someone
        else took (or cancelled) it first."""
        t = now_ms() if at_ms is None else at_ms
        news = [self._leased(entry, owner, lease_s, t) for entry in entries]
        indexes = [keys.leased_key(new) for new in news]
        versions = await self._move_many(
            [
                (entry, new, index, [])
                for entry, new, index in zip(entries, news, indexes, strict=True)
            ]
        )
        return [
            None if version is None else Entry(index, version, new)
            for new, index, version in zip(news, indexes, versions, strict=True)
        ]

    async def release(self, lease: Entry, at_ms: int | None = None) -> bool:
        """Hand back a leased call that never started (prefetched by a worker that is
        stopping): ready again at once, its attempt not counted. False if the lease was
        lost meanwhile."""
        t = now_ms() if at_ms is None else at_ms
        state = lease.state
        queued = msgspec.structs.replace(
            state,
            state=CallStatus.QUEUED,
            attempt=max(0, state.attempt - 1),
            lease_owner=None,
            lease_expiry_ms=0,
            started_ms=0,
            ready_ms=t,
        )
        return await self._move(lease, queued, keys.ready_key(queued)) is not None

    async def renew(self, lease: Entry, lease_s: float, at_ms: int | None = None) -> Entry | None:
        """Extend a lease; None means it was lost (reclaimed or cancelled): stop the call."""
        t = now_ms() if at_ms is None else at_ms
        new = msgspec.structs.replace(lease.state, lease_expiry_ms=t + int(lease_s * 1000))
        return await self._reindex(lease, new, keys.leased_key(new))

    def _final(self, state: CallState, status: CallStatus, t: int, **changes: object) -> CallState:
        return msgspec.structs.replace(
            state,
            state=status,
            finished_ms=t,
            lease_owner=None,
            lease_expiry_ms=0,
            **changes,
        )

    def _final_ops(self, new: CallState, args_json: bytes | None) -> list[p.BatchOp]:
        ops: list[p.BatchOp] = []
        if new.finished_ms > new.deadline_ms or new.state == CallStatus.EXPIRED:
            ops.append(self._count(new, MISSED, 1))
        if new.state == CallStatus.FAILED:
            ops.append(
                p.BatchPut(
                    key=keys.dead_key(new.call_id),
                    value=new.function.encode(),
                    ttl_ms=self.retention_ms,
                )
            )
            ops.append(self._count(new, DEAD, 1))
            if args_json is not None:  # kept for replay
                ops.append(
                    p.BatchPut(
                        key=keys.args_key(new.call_id), value=args_json, ttl_ms=self.retention_ms
                    )
                )
        else:
            ops.append(p.BatchDelete(key=keys.args_key(new.call_id)))
        if new.state == CallStatus.SUCCEEDED:
            ops.append(self._count(new, SUCCEEDED, 1))
        return ops

    async def succeed(self, lease: Entry, result_json: bytes, at_ms: int | None = None) -> bool:
        t = now_ms() if at_ms is None else at_ms
        new = self._final(lease.state, CallStatus.SUCCEEDED, t, result=result_json, error=None)
        return await self._finish(lease, new, None)

    async def succeed_many(
        self, outcomes: list[tuple[Entry, bytes]], at_ms: int | None = None
    ) -> list[bool]:
        """`succeed` of several leased calls, one atomic batch per bucket. False for a call
        whose lease was lost (reclaimed or cancelled): its result is not recorded."""
        t = now_ms() if at_ms is None else at_ms
        moves: list[tuple[Entry, CallState, bytes | None, list[p.BatchOp]]] = []
        for lease, result_json in outcomes:
            new = self._final(lease.state, CallStatus.SUCCEEDED, t, result=result_json, error=None)
            moves.append((lease, new, None, self._final_ops(new, None)))
        return [version is not None for version in await self._move_many(moves)]

    async def _finish(self, entry: Entry, new: CallState, args_json: bytes | None) -> bool:
        ops = self._final_ops(new, args_json)
        if new.state == CallStatus.FAILED and args_json is None:
            found = await self.args([new.call_id])
            ops = self._final_ops(new, found[0])
        return await self._move(entry, new, None, ops) is not None

    async def fail(
        self,
        lease: Entry,
        error: str,
        error_type: str,
        retry_at_ms: int | None,
        at_ms: int | None = None,
    ) -> CallStatus | None:
        """End a failed attempt: back to the queue at `retry_at_ms`, or (None) to the
        dead-letter set. A retry that could only start after the deadline expires the call.
        Returns the call's new status, or None if the lease was lost."""
        t = now_ms() if at_ms is None else at_ms
        error = error[: limits.ERROR_CHARS_MAX]
        base = lease.state
        if retry_at_ms is None:
            new = self._final(base, CallStatus.FAILED, t, error=error, error_type=error_type)
            return new.state if await self._finish(lease, new, None) else None
        if retry_at_ms >= base.deadline_ms:
            new = self._final(base, CallStatus.EXPIRED, t, error=error, error_type=error_type)
            return new.state if await self._finish(lease, new, None) else None
        queued = msgspec.structs.replace(
            base,
            state=CallStatus.QUEUED,
            lease_owner=None,
            lease_expiry_ms=0,
            not_before_ms=retry_at_ms,
            ready_ms=0 if retry_at_ms > t else t,
            error=error,
            error_type=error_type,
        )
        index = keys.delayed_key(queued) if retry_at_ms > t else keys.ready_key(queued)
        moved = await self._move(lease, queued, index)
        return None if moved is None else CallStatus.QUEUED

    async def expire(self, entry: Entry, at_ms: int | None = None) -> bool:
        """End a call whose deadline passed while it waited."""
        t = now_ms() if at_ms is None else at_ms
        new = self._final(entry.state, CallStatus.EXPIRED, t, error="deadline passed")
        return await self._finish(entry, new, None)

    async def mark_deferred(self, entry: Entry) -> Entry | None:
        """Record that the scheduler held a ready call back for load (for status)."""
        if entry.state.deferred:
            return entry
        new = msgspec.structs.replace(entry.state, deferred=True)
        return await self._reindex(entry, new, keys.ready_key(new))

    # -- sweeps (run by every worker; idempotent thanks to if_version) ----------------------

    async def promote_due(self, bucket: int, at_ms: int | None = None) -> int:
        """Move delayed calls whose time has come to the ready index."""
        t = now_ms() if at_ms is None else at_ms
        due = await self._entries(
            keys.section(bucket, keys.DELAYED),
            keys.section_until(bucket, keys.DELAYED, t),
            limits.SWEEP_BATCH,
        )
        moved = 0
        for entry in due:
            new = msgspec.structs.replace(entry.state, ready_ms=t)
            if await self._reindex(entry, new, keys.ready_key(new)) is not None:
                moved += 1
        return moved

    async def reclaim_expired(
        self,
        bucket: int,
        attempts_max: Callable[[str], int],
        at_ms: int | None = None,
    ) -> int:
        """Requeue calls whose lease ran out (their worker died or stalled). The lost attempt
        counts against the retry policy; past the deadline the call expires."""
        t = now_ms() if at_ms is None else at_ms
        stale = await self._entries(
            keys.section(bucket, keys.LEASED),
            keys.section_until(bucket, keys.LEASED, t),
            limits.SWEEP_BATCH,
        )
        reclaimed = 0
        for entry in stale:
            error = f"lease of worker {entry.state.lease_owner} expired"
            if entry.state.attempt >= attempts_max(entry.state.function):
                status = await self.fail(entry, error, "LeaseExpired", None, t)
            else:
                status = await self.fail(entry, error, "LeaseExpired", t, t)
            reclaimed += status is not None
        return reclaimed

    # -- cancel, dead letters, replay ----------------------------------------------------

    async def _current_entry(self, state: CallState) -> Entry | None:
        if state.state == CallStatus.RUNNING:
            candidates = [keys.leased_key(state)]
        else:
            candidates = [keys.ready_key(state), keys.delayed_key(state)]
        items = await self.kv.multi_get_items(candidates, keyspace=self.keyspace)
        for key, item in zip(candidates, items, strict=True):
            if item is not None:
                return Entry(key, item.version, codec.decode_state(item.value))
        return None

    async def cancel(self, call_id: str, at_ms: int | None = None) -> CallState:
        """Cancel a queued or running call (a running call's worker loses its lease and
        stops it). Cancelling a finished call raises `Conflict` naming its state."""
        for _ in range(5):
            state = await self.state(call_id)
            if state.state.final:
                if state.state == CallStatus.CANCELLED:
                    return state
                raise Conflict(f"call {call_id} already {state.state}", detail=state.state)
            entry = await self._current_entry(state)
            if entry is None:
                await asyncio.sleep(0.01)
                continue
            t = now_ms() if at_ms is None else at_ms
            new = self._final(entry.state, CallStatus.CANCELLED, t, error="cancelled")
            if await self._finish(entry, new, None):
                return new
        raise Conflict(f"call {call_id} kept changing state; try again")

    async def dead_letters(self, limit: int = 100) -> list[CallState]:
        found: list[CallState] = []
        for bucket in range(self.buckets):
            page = await self.kv.scan_page(
                prefix=keys.section(bucket, keys.DEAD), limit=limit, keyspace=self.keyspace
            )
            ids = [item.key[4:].decode() for item in page.items]
            for call_id in ids:
                try:
                    found.append(await self.state(call_id))
                except UnknownCall:
                    continue
                if len(found) >= limit:
                    return found
        return found

    async def replay(self, call_id: str, deadline_ms: int, at_ms: int | None = None) -> CallState:
        """Run a dead-lettered call again, with fresh attempts and a new deadline."""
        t = now_ms() if at_ms is None else at_ms
        state = await self.state(call_id)
        if state.state != CallStatus.FAILED:
            raise Conflict(f"only failed calls can be replayed; {call_id} is {state.state}")
        args = (await self.args([call_id]))[0]
        if args is None:
            raise UnknownCall(f"the arguments of {call_id} passed their retention")
        new = msgspec.structs.replace(
            state,
            state=CallStatus.QUEUED,
            attempt=0,
            not_before_ms=t,
            ready_ms=t,
            deadline_ms=deadline_ms,
            finished_ms=0,
            started_ms=0,
            replays=state.replays + 1,
        )
        item = await self.kv.get_item(keys.state_key(call_id), keyspace=self.keyspace)
        if item is None:
            raise UnknownCall(f"no call {call_id!r}")
        encoded = codec.encode_state(new)
        ops: list[p.BatchOp] = [
            p.BatchDelete(key=keys.dead_key(call_id)),
            p.BatchPut(key=keys.state_key(call_id), value=encoded, if_version=item.version),
            p.BatchPut(key=keys.args_key(call_id), value=args),
            p.BatchPut(key=keys.ready_key(new), value=encoded),
            self._count(new, DEAD, -1),
            self._count(new, QUEUED, 1),
        ]
        await self.kv.write_batch(ops, keyspace=self.keyspace)
        return new

    # -- counters ------------------------------------------------------------------------

    async def counters(self) -> dict[tuple[str, Criticality, str], int]:
        """Sum of every bucket's counters: (function, criticality, name) -> value."""
        totals: dict[tuple[str, Criticality, str], int] = {}

        async def one(bucket: int) -> None:
            prefix = keys.section(bucket, COUNTER)
            async for item in self.kv.scan(prefix=prefix, keyspace=self.keyspace):
                rest = item.key[len(prefix) :]
                function, _, tail = rest.partition(b"\0")
                key = (function.decode(), Criticality(tail[0]), tail[1:].decode())
                totals[key] = totals.get(key, 0) + int(item.value)

        await asyncio.gather(*(one(bucket) for bucket in range(self.buckets)))
        return totals
