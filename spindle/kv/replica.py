"""One Raft group's replica on a node: the log a shard (or the catalog) is driven by.

`Replica` wraps a `RawNode` with its durable storage and the state machine it applies to
(an `Applier`). It is the Raft `ShardLog`: `propose` resolves once the entry is committed
by a quorum, durable and applied here. It also fences reads at each consistency level:
strong (lease, else ReadIndex — on a follower too, which then serves locally), bounded
staleness, read-your-writes and eventual. The node's `RaftHost` runs the Ready loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from spindle.kv.errors import NotLeader, SpindleError, Timeout, TooLarge, Unavailable
from spindle.kv.raft import (
    MAX_PROPOSAL_BYTES,
    NONE,
    ConfChange,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    ProposalDropped,
    RawNode,
    ReadDropped,
    Ready,
    Role,
)

if TYPE_CHECKING:
    from spindle.kv.multiraft import RaftHost

PROPOSAL_TIMEOUT_S = 10.0
"""A proposal not applied in this long fails with `Timeout` (outcome unknown: it may still
commit). Covers a leader cut off from its quorum."""
READ_TIMEOUT_S = 2.0
"""A read fence (ReadIndex round, or waiting to apply a client's write) that takes longer
fails with `Unavailable`, so the client tries another replica."""
PENDING_PROPOSALS_MAX = 65_536
"""Proposals one replica keeps waiting for their outcome; beyond it new ones are refused
(`Unavailable`), which bounds memory when the group cannot commit."""
PENDING_READS_MAX = 65_536
"""Read fences one replica keeps waiting."""

Finish = Callable[[int, Any], Any]

_LEADERSHIP_DROPS = frozenset(
    {DropReason.NO_LEADER, DropReason.NOT_LEADER, DropReason.TRANSFERRING_LEADERSHIP}
)
"""Proposal drops the client cures by asking the (new) leader: `NotLeader`."""


def _pair(index: int, result: Any) -> tuple[int, Any]:
    return index, result


class Applier(Protocol):
    """The state machine a replica applies committed entries to."""

    @property
    def applied_index(self) -> int: ...

    def apply_entry(self, index: int, data: bytes) -> Any:
        """Apply a committed command; return its result or the SpindleError it failed
        with. Must persist `index` as applied with the change (atomically)."""
        ...

    def apply_noop(self, index: int) -> None:
        """An entry with no command (a new leader's first entry, a membership change)."""
        ...

    def image(self) -> bytes:
        """The state as of `applied_index`, for a follower that needs a snapshot."""
        ...

    def restore(self, index: int, data: bytes) -> None:
        """Replace the state with a snapshot's image taken at `index`."""
        ...


class _Proposal:
    __slots__ = ("deadline_s", "finish", "future", "term")

    def __init__(
        self, term: int, future: asyncio.Future[Any], finish: Finish, deadline_s: float
    ) -> None:
        self.term = term
        self.future = future
        self.finish = finish
        self.deadline_s = deadline_s


class Replica:
    """A group member on this node. All methods run on the node's event loop."""

    def __init__(
        self,
        host: RaftHost,
        group_id: int,
        raw: RawNode,
        applier: Applier,
        *,
        on_conf_change: Callable[[ConfState], None] | None = None,
    ) -> None:
        self.host = host
        self.group_id = group_id
        self.raw = raw
        self.applier = applier
        self.on_conf_change = on_conf_change
        self.leader_id = NONE
        self.role = Role.FOLLOWER
        self.term = raw.hard_state().term
        self._proposals: dict[int, _Proposal] = {}
        self._queued: list[tuple[bytes, asyncio.Future[Any], Finish]] = []
        """Proposals waiting for the next pass of the Ready loop."""
        self._read_ctx = 0
        self._reads: dict[bytes, tuple[asyncio.Future[int], float]] = {}
        """ReadIndex requests in flight: ctx -> (future of the read index, issue time)."""
        self._apply_waits: list[tuple[int, asyncio.Future[None]]] = []
        """Fences waiting for `applied_index` to reach an index."""
        self.fresh_as_of_s = 0.0
        """Monotonic time such that every write acknowledged before it is applied here."""
        self._probe: asyncio.Future[int] | None = None

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def not_leader(self, what: str = "write") -> NotLeader:
        return self.host.not_leader(self.group_id, self.leader_id, what)

    # -- writes --------------------------------------------------------------------------

    def propose(self, data: bytes, finish: Finish = _pair) -> asyncio.Future[Any]:
        """Order `data`; the future gives `finish(index, result)` once applied here.

        Proposals made between two passes of the Ready loop enter the log together
        (`flush_proposals`): one append message per follower for all of them."""
        if len(data) > MAX_PROPOSAL_BYTES:
            # Refused here, alone: in the Ready loop's batch it would drop every proposal
            # queued with it.
            raise TooLarge(
                f"the write is {len(data)} bytes as a log entry, over the limit of "
                f"{MAX_PROPOSAL_BYTES}; split it into smaller writes"
            )
        if len(self._proposals) + len(self._queued) >= PENDING_PROPOSALS_MAX:
            raise Unavailable(f"group {self.group_id}: too many proposals waiting")
        if self.raw.soft_state().role is not Role.LEADER:
            raise self.not_leader()
        future: asyncio.Future[Any] = self.host.loop.create_future()
        self._queued.append((data, future, finish))
        self.host.wake(self)
        return future

    def flush_proposals(self) -> None:
        """Put the queued proposals into the log at once (the Ready loop calls this)."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        try:
            first = self.raw.propose_batch([data for data, _, _ in queued])
        except ProposalDropped as dropped:
            error: SpindleError = self.host.not_leader(
                self.group_id, dropped.leader_id or self.leader_id, "write"
            )
            if dropped.reason not in _LEADERSHIP_DROPS:
                error = Unavailable(f"group {self.group_id} dropped the write: {dropped}")
            for _, future, _ in queued:
                if not future.done():
                    future.set_exception(error)
            return
        term = self.raw.hard_state().term
        deadline_s = self.host.now() + PROPOSAL_TIMEOUT_S
        for offset, (_, future, finish) in enumerate(queued):
            self._proposals[first + offset] = _Proposal(term, future, finish, deadline_s)

    # -- reads ---------------------------------------------------------------------------

    def lease_read_ok(self) -> bool:
        """Strong read without a round trip: a leader holding its lease with everything
        committed applied."""
        return self.raw.lease_valid() and self.applied_index >= self.raw.committed_index()

    async def strong_fence(self) -> None:
        """Return once a linearizable read may be served from this replica's state."""
        if self.lease_read_ok():
            return
        index = await self._read_index()
        await self.wait_applied(index)

    async def staleness_fence(self, max_staleness_ms: int) -> None:
        """Return if this replica's state is at most `max_staleness_ms` old, else raise."""
        now = self.host.now()
        if self.lease_read_ok():
            self.fresh_as_of_s = now
            return
        bound_s = max_staleness_ms / 1000
        if now - self.fresh_as_of_s <= bound_s:
            return
        with contextlib.suppress(TimeoutError, SpindleError):
            await asyncio.wait_for(self._freshness_probe(), timeout=min(bound_s, READ_TIMEOUT_S))
        stale_ms = int((self.host.now() - self.fresh_as_of_s) * 1000)
        if self.host.now() - self.fresh_as_of_s > bound_s:
            raise Unavailable(
                f"replica on node {self.host.node_id} of group {self.group_id} cannot "
                f"show it is within {max_staleness_ms} ms of the leader; try another replica",
                detail={"stale_ms": stale_ms, "leader_id": self.leader_id},
            )

    async def _freshness_probe(self) -> None:
        if self._probe is None or self._probe.done():
            issued_s = self.host.now()
            probe = self._read_index_future()
            self._probe = probe

            def done(future: asyncio.Future[int]) -> None:
                if not future.cancelled() and future.exception() is None:
                    index = future.result()
                    self._when_applied(index, lambda: self._mark_fresh(issued_s))

            probe.add_done_callback(done)
        index = await asyncio.shield(self._probe)
        await self.wait_applied(index)

    def _mark_fresh(self, issued_s: float) -> None:
        self.fresh_as_of_s = max(self.fresh_as_of_s, issued_s)

    async def wait_applied(self, index: int, timeout_s: float = READ_TIMEOUT_S) -> None:
        """Return once `index` is applied here (read-your-writes, ReadIndex)."""
        if self.applied_index >= index:
            return
        if len(self._apply_waits) >= PENDING_READS_MAX:
            raise Unavailable(f"group {self.group_id}: too many reads waiting")
        future: asyncio.Future[None] = self.host.loop.create_future()
        self._apply_waits.append((index, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"replica on node {self.host.node_id} has applied {self.applied_index} of "
                f"group {self.group_id}, not yet {index}; try another replica",
                detail={"applied_index": self.applied_index, "leader_id": self.leader_id},
            ) from None

    def _when_applied(self, index: int, action: Callable[[], None]) -> None:
        if self.applied_index >= index:
            action()
            return
        future: asyncio.Future[None] = self.host.loop.create_future()
        future.add_done_callback(lambda _: action())
        self._apply_waits.append((index, future))

    def _read_index_future(self) -> asyncio.Future[int]:
        if len(self._reads) >= PENDING_READS_MAX:
            raise Unavailable(f"group {self.group_id}: too many reads waiting")
        self._read_ctx += 1
        ctx = self._read_ctx.to_bytes(8, "big")
        future: asyncio.Future[int] = self.host.loop.create_future()
        try:
            self.raw.read_index(ctx, use_lease=True)
        except ReadDropped:
            raise Unavailable(f"group {self.group_id}: too many reads at the leader") from None
        self._reads[ctx] = (future, self.host.now() + READ_TIMEOUT_S)
        self.host.wake(self)
        return future

    def _reissue_reads(self) -> None:
        """Ask the new leader for the reads still waiting: a read sent while there was no
        leader was dropped, and one sent to a leader that stepped down is lost. Asking
        again is safe: any leader's answer is at least the commit index when the read
        began. (A duplicate answer finds the read gone and is ignored.)"""
        if not self._reads or not self.leader_id:
            return
        for ctx in list(self._reads):
            try:
                self.raw.read_index(ctx, use_lease=True)
            except ReadDropped:
                break  # the leader here is full; the reads time out as before
        self.host.wake(self)

    async def _read_index(self) -> int:
        future = self._read_index_future()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=READ_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(
                f"group {self.group_id}: no leader confirmed a read within "
                f"{READ_TIMEOUT_S:g} s (leader unknown or unreachable); retry",
                detail={"leader_id": self.leader_id},
            ) from None

    # -- the Ready loop's half -----------------------------------------------------------

    def apply_ready(self, ready: Ready) -> None:
        """After `ready` was persisted (and its messages sent): apply, answer, fence."""
        if ready.soft_state is not None:
            self.role = ready.soft_state.role
            leader_changed = ready.soft_state.leader_id != self.leader_id
            self.leader_id = ready.soft_state.leader_id
            if leader_changed and self.leader_id and self._reads:
                self.host.loop.call_soon(self._reissue_reads)
        if ready.hard_state is not None:
            self.term = ready.hard_state.term
        if ready.snapshot is not None and not ready.snapshot.is_empty():
            meta = ready.snapshot.metadata
            if meta.index > self.applied_index:
                self.applier.restore(meta.index, ready.snapshot.data)
                if self.on_conf_change is not None:
                    self.on_conf_change(meta.conf_state)
        self._apply_committed(ready.committed_entries)
        self._answer_reads(ready)

    def apply_durable(self, ready: Ready) -> None:
        """Before `ready` is persisted: apply the committed entries that were already
        durable here (those before the Ready's own new entries), so a leader answers its
        clients without waiting for the fsync of the entries proposed since. The state
        machine's writes reach the engine in the same flush as this Ready's hard state."""
        if ready.snapshot is not None or not ready.committed_entries:
            return
        entries = ready.committed_entries
        if ready.entries:
            first_new = ready.entries[0].index
            entries = [entry for entry in entries if entry.index < first_new]
        self._apply_committed(entries)

    def _apply_committed(self, entries: list[Entry]) -> None:
        raw = self.raw
        applier = self.applier
        proposals = self._proposals
        for entry in entries:
            if entry.index <= applier.applied_index:
                continue  # applied already (before the fsync, or before a restart)
            result: Any = None
            if entry.type is EntryType.CONF_CHANGE:
                conf_state = raw.apply_conf_change(ConfChange.decode(entry.data))
                self.host.save_conf_state(self.group_id, conf_state)
                applier.apply_noop(entry.index)  # the same engine batch: see GroupCommitter
                if self.on_conf_change is not None:
                    self.on_conf_change(conf_state)
            elif not entry.data:
                applier.apply_noop(entry.index)
            else:
                result = applier.apply_entry(entry.index, entry.data)
            proposal = proposals.pop(entry.index, None) if proposals else None
            if proposal is not None and not proposal.future.done():
                if proposal.term != entry.term:
                    proposal.future.set_exception(
                        NotLeader(
                            f"group {self.group_id}: leadership changed before the write "
                            "committed; it was not applied (retry)",
                            detail={"leader_id": self.leader_id},
                        )
                    )
                elif isinstance(result, SpindleError):
                    proposal.future.set_exception(result)
                else:
                    try:
                        proposal.future.set_result(proposal.finish(entry.index, result))
                    except SpindleError as error:
                        proposal.future.set_exception(error)

    def _answer_reads(self, ready: Ready) -> None:
        applier = self.applier
        for read_state in ready.read_states:
            pending = self._reads.pop(read_state.request_ctx, None)
            if pending is not None and not pending[0].done():
                pending[0].set_result(read_state.index)
        for ctx in ready.dropped_reads:
            pending = self._reads.pop(ctx, None)
            if pending is not None and not pending[0].done():
                pending[0].set_exception(
                    Unavailable(f"group {self.group_id}: the leader refused the read (busy)")
                )
        if self._apply_waits:
            applied = applier.applied_index
            waiting: list[tuple[int, asyncio.Future[None]]] = []
            for index, future in self._apply_waits:
                if index <= applied:
                    if not future.done():
                        future.set_result(None)
                elif not future.done():
                    waiting.append((index, future))
            self._apply_waits = waiting

    def expire(self, now_s: float) -> None:
        """Fail proposals and reads past their deadline (called on every tick)."""
        if self._proposals:
            for index in [i for i, p in self._proposals.items() if p.deadline_s <= now_s]:
                proposal = self._proposals.pop(index)
                if not proposal.future.done():
                    proposal.future.set_exception(
                        Timeout(
                            f"group {self.group_id}: write not committed within "
                            f"{PROPOSAL_TIMEOUT_S:g} s; its outcome is unknown"
                        )
                    )
        if self._reads:
            for ctx in [c for c, (_, deadline) in self._reads.items() if deadline <= now_s]:
                future, _ = self._reads.pop(ctx)
                if not future.done():
                    future.cancel()
        if self._apply_waits:
            self._apply_waits = [(i, f) for i, f in self._apply_waits if not f.done()]

    def fail_all(self, error: SpindleError) -> None:
        """The replica is going away (node stopping, group removed)."""
        for _, future, _ in self._queued:
            if not future.done():
                future.set_exception(error)
        self._queued.clear()
        for proposal in self._proposals.values():
            if not proposal.future.done():
                proposal.future.set_exception(error)
        self._proposals.clear()
        for future, _ in self._reads.values():
            if not future.done():
                future.set_exception(error)
        self._reads.clear()
        for _, waiter in self._apply_waits:
            if not waiter.done():
                waiter.set_exception(error)
        self._apply_waits.clear()
