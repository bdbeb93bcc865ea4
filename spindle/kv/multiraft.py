"""Multi-Raft: every Raft group a node hosts, driven by one Ready loop.

One pass of the loop gathers the Ready of every group with work, sends leaders' appends
and heartbeats at once (one frame per peer node, so the heartbeats of all groups to a peer
travel together), stages all log entries and hard states into one engine write batch,
applies the committed entries that were durable before this pass (a leader answers its
clients without waiting for the fsync of newer entries), syncs once (in the fsync thread,
via the node's group committer), then sends the rest (votes, acknowledgements), applies
the remaining committed entries and advances. Inputs (proposals, messages, ticks) that
arrive while a pass waits on its fsync wait for the next pass: that is the group commit.
Ticks come from a monotonic clock; missed ticks (a stalled loop, a stopped process) are
delivered before any lease read.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from spindle.kv.errors import NotLeader, Unavailable
from spindle.kv.groupcommit import GroupCommitter
from spindle.kv.raft import NONE, Config, ConfState, Message, MessageType, RawNode, Ready, Role
from spindle.kv.raftstorage import RaftStorage
from spindle.kv.replica import Applier, Replica

log = logging.getLogger("spindle.raft")

TICK_S = 0.1
"""Length of one Raft tick."""
ELECTION_TICKS = 10
"""Election timeout: 1-2 s (randomised in [10, 20) ticks); the leader lease is a bit less."""
HEARTBEAT_TICKS = 1
"""A leader heartbeats every tick (100 ms)."""
LOG_COMPACT_ENTRIES = 20_000
"""A group's log is compacted once it holds this many applied entries ..."""
LOG_KEEP_ENTRIES = 5_000
"""... down to this many (a follower lagging further gets a snapshot of the state)."""
READIES_PER_PASS_MAX = 1024
"""Groups handled in one pass of the Ready loop (the rest wait for the next pass)."""

_LEADER_SENDS = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
"""Messages only a leader sends, which may go out before its Ready is persisted."""

Envelope = tuple[int, Message]
"""(group id, message): what one frame to a peer carries many of."""
Send = Callable[[int, list[Envelope]], None]
"""Hands a peer node's envelopes of one pass to the transport (never blocks)."""


class RaftHost:
    """The groups of one node and the loop that drives them."""

    def __init__(
        self,
        node_id: int,
        committer: GroupCommitter,
        send: Send,
        *,
        address_of: Callable[[int], dict[str, Any] | None] = lambda _: None,
        tick_s: float = TICK_S,
        seed: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.committer = committer
        self.engine = committer.engine
        self.send = send
        self.address_of = address_of
        self.tick_s = tick_s
        self.log_compact_entries = LOG_COMPACT_ENTRIES
        self.log_keep_entries = LOG_KEEP_ENTRIES
        self.compactions = 0
        self.replicas: dict[int, Replica] = {}
        self.storages: dict[int, RaftStorage] = {}
        self._dirty: dict[Replica, None] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_tick_s = 0.0
        self._rng = random.Random(seed)
        self.closed = False
        self.failure: BaseException | None = None
        """Set when the Ready loop failed: the node no longer serves its groups."""
        self.passes = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.unknown_group_messages = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """Monotonic seconds: the event loop's clock (virtual in the simulator)."""
        return self.loop.time()

    # -- groups ---------------------------------------------------------------------------

    def open_group(
        self,
        group_id: int,
        applier: Applier,
        *,
        bootstrap_voters: tuple[int, ...] = (),
        on_conf_change: Callable[[ConfState], None] | None = None,
    ) -> Replica:
        """Host a replica of `group_id`. With `bootstrap_voters` (the group's initial
        members, this node among them) a replica with no stored state starts the group;
        without, it waits to hear from the group's leader (a node that joins later)."""
        assert group_id not in self.replicas, group_id
        storage = RaftStorage(self.engine, group_id)
        if bootstrap_voters and storage.is_empty():
            batch = self.engine.new_batch()
            storage.bootstrap(batch, bootstrap_voters)
            self.committer.write(batch)
        config = Config(
            node_id=self.node_id,
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
            applied_index=applier.applied_index,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        raw = RawNode(config, storage)
        replica = Replica(self, group_id, raw, applier, on_conf_change=on_conf_change)
        storage.snapshot_data = lambda: (
            applier.applied_index,
            raw.status().conf_state,
            applier.image(),
        )
        self.replicas[group_id] = replica
        self.storages[group_id] = storage
        if raw.status().conf_state.voters == (self.node_id,):
            raw.campaign()  # the only voter: no one to wait for after a restart
        self.wake(replica)
        return replica

    def close_group(self, group_id: int) -> None:
        replica = self.replicas.pop(group_id, None)
        self.storages.pop(group_id, None)
        if replica is not None:
            self._dirty.pop(replica, None)
            replica.fail_all(Unavailable(f"group {group_id} was removed from this node"))

    def save_conf_state(self, group_id: int, conf_state: ConfState) -> None:
        """Persist a group's membership as applied (written with the applied index:
        both reach the engine in the same batch at the next flush)."""
        batch = self.engine.new_batch()
        self.storages[group_id].save_conf_state(batch, conf_state)
        self.committer.write(batch)

    def not_leader(self, group_id: int, leader_id: int, what: str) -> NotLeader:
        address = self.address_of(leader_id) if leader_id not in (NONE, self.node_id) else None
        where = f"node {leader_id}" if leader_id != NONE else "no leader known yet"
        return NotLeader(
            f"node {self.node_id} is not the leader of group {group_id} for this {what} ({where})",
            detail={"group_id": group_id, "leader_id": leader_id, "leader": address},
        )

    # -- inputs ---------------------------------------------------------------------------

    def wake(self, replica: Replica) -> None:
        self._dirty[replica] = None
        if self._wake is not None:
            self._wake.set()

    def receive(self, src_node_id: int, envelopes: list[Envelope]) -> None:
        """Messages from a peer node (one frame)."""
        self.messages_received += len(envelopes)
        for group_id, message in envelopes:
            replica = self.replicas.get(group_id)
            if replica is None or message.dst != self.node_id:
                self.unknown_group_messages += 1
                continue
            try:
                replica.raw.step(message)
            except Exception:  # a malformed message from a peer must not stop the node
                log.exception("group %d: bad message from node %d", group_id, src_node_id)
                continue
            self.wake(replica)

    def peer_unreachable(self, node_id: int) -> None:
        for replica in self.replicas.values():
            if replica.role is Role.LEADER:
                replica.raw.report_unreachable(node_id)
                self.wake(replica)

    def catch_up_ticks(self) -> None:
        """Deliver every tick due by the monotonic clock (called by the ticker and before
        lease reads, so a stalled loop never reads under an expired lease)."""
        now_s = self.now()
        if self._next_tick_s == 0.0:
            self._next_tick_s = now_s + self.tick_s
            return
        if self._next_tick_s > now_s:
            return  # the common case for a read: nothing due
        while self._next_tick_s <= now_s:
            self._next_tick_s += self.tick_s
            for replica in self.replicas.values():
                replica.raw.tick()
                self.wake(replica)
        for replica in self.replicas.values():  # once per tick, not per read
            replica.expire(now_s)

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        if self._dirty:
            self._wake.set()
        self.catch_up_ticks()
        self._tasks = [
            asyncio.ensure_future(self._ready_loop()),
            asyncio.ensure_future(self._ticker()),
        ]

    async def stop(self) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 5.0)
            except (asyncio.CancelledError, TimeoutError):
                pass
            except Exception:
                log.exception("raft loop failed while stopping")
        for replica in self.replicas.values():
            replica.fail_all(Unavailable("the node is stopping"))

    async def _ticker(self) -> None:
        while not self.closed:
            await asyncio.sleep(max(0.0, self._next_tick_s - self.now()))
            self.catch_up_ticks()

    async def _ready_loop(self) -> None:
        assert self._wake is not None
        while not self.closed:
            if not self._dirty:
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # A pass that fails leaves Readies half handled: no later pass could be
                # trusted. Stop every group and report the node unhealthy (like a failed
                # fsync); a supervisor restarts it from its disk.
                log.exception("raft ready loop pass failed; the node stops serving")
                self.fail(error)
                return

    def fail(self, error: BaseException) -> None:
        self.failure = error
        self.closed = True
        for replica in self.replicas.values():
            replica.fail_all(Unavailable(f"node {self.node_id} failed: {error!r}"))

    def collect(self) -> list[tuple[Replica, Ready]]:
        """Take the Ready of every group with work (step one of a pass)."""
        dirty = self._dirty
        readies: list[tuple[Replica, Ready]] = []
        taken: list[Replica] = []
        for replica in dirty:
            if len(taken) >= READIES_PER_PASS_MAX:
                break
            taken.append(replica)
            if self.replicas.get(replica.group_id) is not replica:
                continue
            replica.flush_proposals()
            if replica.raw.has_ready():
                readies.append((replica, replica.raw.ready()))
        for replica in taken:
            del dirty[replica]
        return readies

    def persist(self, readies: list[tuple[Replica, Ready]]) -> bool:
        """Stage every Ready's writes in one batch; returns whether an fsync is needed."""
        batch = self.engine.new_batch()
        must_sync = False
        for replica, ready in readies:
            self.storages[replica.group_id].stage(batch, ready)
            must_sync = must_sync or ready.must_sync
        if len(batch):
            self.committer.write(batch)
        return must_sync

    def send_early(self, readies: list[tuple[Replica, Ready]]) -> None:
        """Before persistence: a leader's appends and heartbeats (Raft thesis 10.2.1: the
        leader writes its log in parallel with replicating it). Safe because the leader's
        own copy counts towards a commit only in memory: entries are applied, and a
        commit index that covers them is sent, only in a later pass, after this pass's
        fsync. Votes and acknowledgements always wait for the fsync."""
        self._send(readies, early=True)

    def _send(self, readies: list[tuple[Replica, Ready]], *, early: bool) -> None:
        outbox: dict[int, list[Envelope]] = {}
        for replica, ready in readies:
            for message in ready.messages:
                if (message.type in _LEADER_SENDS) is early:
                    outbox.setdefault(message.dst, []).append((replica.group_id, message))
        for node_id, envelopes in outbox.items():
            self.messages_sent += len(envelopes)
            self.send(node_id, envelopes)

    def send_and_apply(self, readies: list[tuple[Replica, Ready]]) -> None:
        """After persistence: the other messages (one frame per peer), then apply and
        advance every group."""
        self._send(readies, early=False)
        for replica, ready in readies:
            if self.replicas.get(replica.group_id) is not replica:
                continue  # removed while its Ready was being persisted
            replica.apply_ready(ready)
            replica.raw.advance()
            self._dirty[replica] = None
            self._maybe_compact(replica)

    def _maybe_compact(self, replica: Replica) -> None:
        storage = self.storages[replica.group_id]
        applied = replica.applied_index
        if applied - storage.first_index() < self.log_compact_entries:
            return
        upto = min(applied - self.log_keep_entries, storage.last_index())
        if upto < storage.first_index():
            return
        batch = self.engine.new_batch()
        storage.compact(batch, upto, replica.raw.status().conf_state)
        self.committer.write(batch)
        self.compactions += 1

    async def run_pass(self) -> None:
        readies = self.collect()
        if not readies:
            return
        self.passes += 1
        self.send_early(readies)
        must_sync = self.persist(readies)
        for replica, ready in readies:
            replica.apply_durable(ready)
        if must_sync:
            await self.committer.after_durable(None)
        self.send_and_apply(readies)

    # -- introspection --------------------------------------------------------------------

    def group_status(self, group_id: int) -> dict[str, Any]:
        replica = self.replicas[group_id]
        status = replica.raw.status()
        progress = {
            node_id: {"match": pr.match_index, "lag": status.last_index - pr.match_index}
            for node_id, pr in status.progress.items()
        }
        return {
            "group_id": group_id,
            "role": replica.role.name.lower(),
            "leader_id": replica.leader_id,
            "term": status.term,
            "commit": status.commit_index,
            "applied": replica.applied_index,
            "voters": list(status.conf_state.voters),
            "progress": progress,
        }
