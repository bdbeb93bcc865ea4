"""A Raft cluster, its clients and its faults, all inside one deterministic event loop.

Each replica is the real ``RawNode`` driven the way a node's Ready loop drives it: persist
(to a ``SimDisk``), fsync when the Ready says so (which takes simulated time, and a slow disk
stalls the replica as a single-threaded loop would), then send, then apply, then advance.
Each replica ticks on its own clock (rate drift and phase skew), so leases see real drift.
Clients send get/put/delete/cas over the same faulty network and record a Jepsen history.
After every event the safety invariants are checked; at the end the history is checked for
linearizability. Everything random comes from one ``random.Random(seed)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import Callable

import msgspec

from spindle.kv.raft import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    EntryType,
    Message,
    MessageType,
    NodeId,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from spindle.sim.disk import SimDisk
from spindle.sim.faults import FaultConfig
from spindle.sim.invariants import Invariants
from spindle.sim.kv import ClientReply, ClientRequest, KVCommand, KVStateMachine, ReadMode
from spindle.sim.linearizability import Event, History
from spindle.sim.network import Address, SimNetwork
from spindle.sim.scheduler import Scheduler, Trace

__all__ = ["CLIENT_ADDRESS_BASE", "Cluster", "SimConfig", "SimNode"]

#: Client addresses start here so they never collide with replica ids.
CLIENT_ADDRESS_BASE = 1000


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Shape and duration of one simulated run."""

    nodes: int = 3
    clients: int = 4
    keys: tuple[str, ...] = ("a", "b", "c")
    tick_us: int = 10_000
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    lease_margin_ticks: int = 1
    #: Faults are injected during this phase...
    fault_phase_us: int = 2_000_000
    #: ...then the network heals and crashed nodes restart, so the run ends in a quiet phase.
    quiet_phase_us: int = 1_000_000
    client_timeout_us: int = 300_000
    client_think_us_max: int = 20_000
    #: Back-off before re-sending a request a replica refused as not leader.
    client_retry_us: int = 10_000
    read_modes: tuple[ReadMode, ...] = ("log", "read_index", "lease")
    #: A replica snapshots and compacts its log when this many applied entries are in it.
    compact_after_entries: int = 40
    #: Bound on events per run, so a livelocked configuration fails instead of hanging.
    max_events: int = 400_000

    @property
    def duration_us(self) -> int:
        return self.fault_phase_us + self.quiet_phase_us


def _describe_message(m: Message) -> str:
    parts = [f"{m.type.name} {m.src}->{m.dst} t{m.term}"]
    if m.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"i{m.index}/t{m.log_term}")
    if m.entries:
        parts.append(f"+{len(m.entries)}e[{m.entries[0].index}..{m.entries[-1].index}]")
    if m.type in (MessageType.APP, MessageType.HEARTBEAT):
        parts.append(f"c{m.commit}")
    if m.type is MessageType.APP_RESP:
        parts.append(f"i{m.index}")
    if m.reject:
        parts.append("REJECT")
    if m.snapshot is not None:
        parts.append(f"snap@{m.snapshot.index}")
    return " ".join(parts)


class _Lazy:
    """Formats its value only if the trace is printed."""

    __slots__ = ("_arg", "_fn")

    def __init__(self, fn: Callable[[Message], str], arg: Message) -> None:
        self._fn, self._arg = fn, arg

    def __str__(self) -> str:
        return self._fn(self._arg)


class SimNode:
    """One replica: a RawNode, its disk, its state machine and its local clock."""

    def __init__(self, cluster: Cluster, node_id: NodeId, voters: tuple[NodeId, ...]) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.disk = SimDisk()
        self.disk.apply_snapshot(
            Snapshot(metadata=SnapshotMetadata(index=0, term=0, conf_state=ConfState(voters)))
        )
        self.disk.sync()
        self.sm = KVStateMachine()
        self.raw: RawNode | None = None
        self.incarnation = 0
        self.busy = False
        self.paused = False
        self.resume_action: Callable[[], None] | None = None
        self.backlog: list[Callable[[], None]] = []
        rng, faults = cluster.rng, cluster.faults
        drift_ppm = 0
        phase_us = 0
        if faults.on("clock"):
            drift_ppm = rng.randint(-faults.clock_drift_ppm_max, faults.clock_drift_ppm_max)
            phase_us = rng.randint(0, faults.clock_skew_us_max)
        self.drift_ppm = drift_ppm
        self.tick_interval_us = cluster.config.tick_us * (1_000_000 + drift_ppm) // 1_000_000
        self.tick_phase_us = phase_us
        #: Highest commit index persisted / observed this incarnation (it must not regress).
        self.commit_floor = 0
        self.commit_high = 0
        self.applied_index = 0
        self.waiters: dict[tuple[int, int], Address] = {}
        self.read_waiters: dict[bytes, tuple[Address, KVCommand]] = {}
        self.pending_reads: list[tuple[int, bytes]] = []

    @property
    def up(self) -> bool:
        return self.raw is not None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        cluster = self.cluster
        storage = self.disk.storage
        snapshot = storage.snapshot()
        self.sm = KVStateMachine()
        self.sm.restore(snapshot.metadata.index, snapshot.data)
        self.applied_index = snapshot.metadata.index
        config = Config(
            node_id=self.node_id,
            election_ticks=cluster.config.election_ticks,
            heartbeat_ticks=cluster.config.heartbeat_ticks,
            lease_margin_ticks=cluster.config.lease_margin_ticks,
            applied_index=snapshot.metadata.index,
            rng=random.Random(cluster.rng.getrandbits(64)),
        )
        self.raw = RawNode(config, storage)
        self.incarnation += 1
        self.busy = False
        self.paused = False
        self.resume_action = None
        self.backlog = []
        self.commit_floor = self.raw.hard_state().commit
        self.commit_high = self.commit_floor
        cluster.network.register(self.node_id, self._receive)
        cluster.trace.log(
            cluster.now_us,
            "n%d   start (incarnation %d) hs=%s last=%d",
            self.node_id,
            self.incarnation,
            self.raw.hard_state(),
            storage.last_index(),
        )
        incarnation = self.incarnation
        first_tick_us = self.tick_phase_us + self.tick_interval_us
        cluster.scheduler.after(first_tick_us, lambda: self._tick(incarnation))

    def crash(self) -> None:
        cluster = self.cluster
        self.raw = None
        self.incarnation += 1
        self.busy = False
        self.paused = False
        self.resume_action = None
        self.backlog = []
        self.waiters.clear()
        self.read_waiters.clear()
        self.pending_reads = []
        cluster.network.unregister(self.node_id)
        lost_batches = self.disk.crash(cluster.rng)
        cluster.trace.log(
            cluster.now_us,
            "n%d   CRASH (lost %d unsynced write batches)",
            self.node_id,
            lost_batches,
        )

    # -- inputs ------------------------------------------------------------------------------

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.cluster.scheduler.after(self.tick_interval_us, lambda: self._tick(incarnation))
        self._run_or_defer(self._do_tick)

    def _do_tick(self) -> None:
        assert self.raw is not None
        self.raw.tick()

    def _receive(self, src: Address, payload: object) -> None:
        if isinstance(payload, Message):
            self._run_or_defer(lambda: self._step(payload))
        elif isinstance(payload, ClientRequest):
            self._run_or_defer(lambda: self._client_request(src, payload))
        else:
            raise AssertionError(f"unexpected payload {payload!r}")

    def _run_or_defer(self, action: Callable[[], None]) -> None:
        """A replica blocked in fsync processes nothing until the fsync returns."""
        if self.busy or self.paused:
            self.backlog.append(action)
            return
        action()
        self.pump()

    def _step(self, message: Message) -> None:
        assert self.raw is not None
        self.cluster.trace.log(
            self.cluster.now_us, "n%d   recv %s", self.node_id, _Lazy(_describe_message, message)
        )
        self.raw.step(message)

    def _client_request(self, src: Address, request: ClientRequest) -> None:
        assert self.raw is not None
        command = request.command
        trace, now_us = self.cluster.trace, self.cluster.now_us
        if command.op == "get" and request.read_mode != "log":
            ctx = command.encode()
            self.read_waiters[ctx] = (src, command)
            self.raw.read_index(ctx, use_lease=request.read_mode == "lease")
            trace.log(now_us, "n%d   %s read %s", self.node_id, request.read_mode, command)
            return
        try:
            index = self.raw.propose(command.encode())
        except ProposalDropped as dropped:
            trace.log(now_us, "n%d   drop %s: %s", self.node_id, command, dropped)
            reply = ClientReply(
                command.client_id, command.request_id, "not_leader", None, dropped.leader_id
            )
            self._reply(src, reply)
            return
        trace.log(now_us, "n%d   propose %s at %d", self.node_id, command, index)
        self.waiters[(command.client_id, command.request_id)] = src

    def _reply(self, dst: Address, reply: ClientReply) -> None:
        self.cluster.network.send(self.node_id, dst, reply, "reply")

    # -- the Ready loop ----------------------------------------------------------------------

    def pump(self) -> None:
        """Handles Readies until there are none, or an fsync is in flight."""
        while not self.busy and not self.paused and self.raw is not None and self.raw.has_ready():
            ready = self.raw.ready()
            self._persist(ready)
            if ready.must_sync:
                self.busy = True
                incarnation = self.incarnation
                delay_us = self.cluster.fsync_latency_us()
                synced = functools.partial(self._synced, ready, incarnation)
                self.cluster.scheduler.after(delay_us, synced)
                return
            self._finish(ready)

    def _synced(self, ready: Ready, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return  # crashed during the fsync: the Ready is lost with the process
        self.disk.sync()
        if self.paused:
            self.resume_action = functools.partial(self._finish_synced, ready)
            return
        self._finish_synced(ready)

    def _finish_synced(self, ready: Ready) -> None:
        self.busy = False
        self._finish(ready)
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        # Everything that queued up during the fsync (or pause) goes in before the next Ready,
        # so it is persisted and sent as one batch (group commit, as a real Ready loop does).
        backlog, self.backlog = self.backlog, []
        for action in backlog:
            action()
        self.pump()
        self.cluster.check_invariants()

    def pause(self, duration_us: int) -> None:
        """Stops the process (a GC pause, SIGSTOP): inputs queue, timers fire late."""
        if self.paused or self.raw is None:
            return
        self.paused = True
        incarnation = self.incarnation
        self.cluster.scheduler.after(duration_us, functools.partial(self._resume, incarnation))

    def _resume(self, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.paused:
            return
        self.paused = False
        self.cluster.trace.log(self.cluster.now_us, "n%d   resume", self.node_id)
        action, self.resume_action = self.resume_action, None
        if action is not None:
            action()
        elif not self.busy:
            self._drain_backlog()

    def _persist(self, ready: Ready) -> None:
        assert self.raw is not None
        invariants, disk, node_id = self.cluster.invariants, self.disk, self.node_id
        disk.begin_batch()
        if ready.snapshot is not None:
            disk.apply_snapshot(ready.snapshot)
        disk.append(ready.entries)
        if ready.hard_state is not None:
            disk.set_hard_state(ready.hard_state)
        disk.end_batch()
        storage = disk.storage
        if ready.snapshot is not None:
            meta = ready.snapshot.metadata
            invariants.on_snapshot_installed(node_id, meta.index, meta.term)
        if ready.entries:
            invariants.on_append(node_id, ready.entries, storage)
        if ready.hard_state is not None:
            commit = ready.hard_state.commit
            if commit > self.commit_floor:
                invariants.on_commit(node_id, self.commit_floor, commit, storage)
                self.commit_floor = commit
        if ready.soft_state is not None and ready.soft_state.role is Role.LEADER:
            term = self.raw.hard_state().term
            invariants.on_leader(node_id, term)
            invariants.check_leader_completeness(node_id, term, storage)
            self.cluster.trace.log(self.cluster.now_us, "n%d   LEADER of term %d", node_id, term)

    def _finish(self, ready: Ready) -> None:
        """After persistence: send, apply, serve reads, advance."""
        raw = self.raw
        assert raw is not None
        network, node_id = self.cluster.network, self.node_id
        for message in ready.messages:
            network.send(node_id, message.dst, message, _Lazy(_describe_message, message))
        if ready.snapshot is not None:
            meta = ready.snapshot.metadata
            self.sm.restore(meta.index, ready.snapshot.data)
            self.applied_index = meta.index
        for entry in ready.committed_entries:
            self.cluster.invariants.on_apply(node_id, entry, self.applied_index + 1)
            self.applied_index = entry.index
            if entry.type is EntryType.CONF_CHANGE:
                raw.apply_conf_change(ConfChange.decode(entry.data))
                self.sm.skip(entry.index)
            elif not entry.data:
                self.sm.skip(entry.index)
            else:
                self._apply_command(entry.index, KVCommand.decode(entry.data))
        for read_state in ready.read_states:
            self.pending_reads.append((read_state.index, read_state.request_ctx))
        self._serve_reads()
        raw.advance()
        self._maybe_compact()

    def _apply_command(self, index: int, command: KVCommand) -> None:
        status, value = self.sm.apply(index, command)
        waiter = self.waiters.pop((command.client_id, command.request_id), None)
        if waiter is not None and status != "stale":
            self._reply(waiter, ClientReply(command.client_id, command.request_id, status, value))

    def _serve_reads(self) -> None:
        if not self.pending_reads:
            return
        still_waiting: list[tuple[int, bytes]] = []
        for index, ctx in self.pending_reads:
            if index > self.sm.applied_index:
                still_waiting.append((index, ctx))
                continue
            waiter = self.read_waiters.pop(ctx, None)
            if waiter is None:
                continue
            client, command = waiter
            value = self.sm.read(command.key)
            self.cluster.trace.log(
                self.cluster.now_us,
                "n%d   read@%d %s = %r",
                self.node_id,
                index,
                command.key,
                value,
            )
            self._reply(client, ClientReply(command.client_id, command.request_id, "ok", value))
        self.pending_reads = still_waiting

    def _maybe_compact(self) -> None:
        """Snapshots the state machine and drops the log prefix, so snapshots get sent."""
        assert self.raw is not None
        storage = self.disk.storage
        applied = self.sm.applied_index
        if applied - storage.first_index() < self.cluster.config.compact_after_entries:
            return
        if applied > storage.last_index():
            return
        conf_state = self.raw.status().conf_state
        self.disk.begin_batch()
        self.disk.create_snapshot(applied, conf_state, self.sm.snapshot_bytes())
        self.disk.compact(applied)
        self.disk.end_batch()
        self.cluster.trace.log(self.cluster.now_us, "n%d   compact to %d", self.node_id, applied)

    # -- invariant support -------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.raw is not None and self.raw.soft_state().role is Role.LEADER

    def check(self) -> None:
        raw = self.raw
        if raw is None:
            return
        status = raw.status()
        invariants = self.cluster.invariants
        invariants.check_replica(
            self.node_id,
            status.applied_index,
            status.commit_index,
            status.last_index,
            self.commit_high,
        )
        self.commit_high = status.commit_index
        if status.role is Role.LEADER:
            invariants.on_leader(self.node_id, status.term)


class SimClient:
    """A sequential client: one operation at a time, a fresh process id after a timeout."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.client_id = index + 1
        self.address = CLIENT_ADDRESS_BASE + index
        self.process = index
        self.request_id = 0
        self.leader_hint: NodeId = NONE
        self.outstanding: KVCommand | None = None
        self.read_mode: ReadMode = "log"
        self.next_value = 0
        self.last_seen: dict[str, int | None] = {}
        cluster.network.register(self.address, self._receive)

    def schedule_next(self) -> None:
        delay_us = self.cluster.rng.randint(0, self.cluster.config.client_think_us_max)
        self.cluster.scheduler.after(delay_us, self._issue)

    def _issue(self) -> None:
        cluster = self.cluster
        if cluster.now_us >= cluster.clients_stop_us:
            return
        rng = cluster.rng
        key = rng.choice(cluster.config.keys)
        roll = rng.random()
        self.request_id += 1
        self.next_value += 1
        value = self.client_id * 1_000_000 + self.next_value
        read_mode: ReadMode = "log"
        if roll < 0.4:
            command = KVCommand(self.client_id, self.request_id, "get", key)
            read_mode = rng.choice(cluster.config.read_modes)
            cluster.history.invoke(self.process, "get", key=key, time=cluster.now_us)
        elif roll < 0.7:
            command = KVCommand(self.client_id, self.request_id, "put", key, value)
            cluster.history.invoke(self.process, "put", value, key=key, time=cluster.now_us)
        elif roll < 0.8:
            command = KVCommand(self.client_id, self.request_id, "delete", key)
            cluster.history.invoke(self.process, "delete", key=key, time=cluster.now_us)
        else:
            expected = self.last_seen.get(key) if rng.random() < 0.7 else None
            command = KVCommand(self.client_id, self.request_id, "cas", key, value, expected)
            cluster.history.invoke(
                self.process, "cas", (expected, value), key=key, time=cluster.now_us
            )
        self.outstanding = command
        self.read_mode = read_mode
        self._send(command)
        request_id = self.request_id
        cluster.scheduler.after(cluster.config.client_timeout_us, lambda: self._timeout(request_id))

    def _send(self, command: KVCommand) -> None:
        cluster = self.cluster
        target = (
            self.leader_hint if self.leader_hint != NONE else cluster.rng.choice(cluster.node_ids)
        )
        request = ClientRequest(command, self.read_mode)
        cluster.network.send(self.address, target, request, "request")

    def _retry(self, request_id: int) -> None:
        command = self.outstanding
        if command is not None and command.request_id == request_id:
            self._send(command)

    def _receive(self, src: Address, payload: object) -> None:
        assert isinstance(payload, ClientReply)
        command = self.outstanding
        if command is None or payload.request_id != command.request_id:
            return  # a late or duplicated reply to an operation already resolved
        self.outstanding = None
        history, now_us = self.cluster.history, self.cluster.now_us
        if payload.status == "ok":
            history.ok(self.process, payload.value, time=now_us)
            if command.op in ("get", "cas", "put"):
                self.last_seen[command.key] = payload.value
            elif command.op == "delete":
                self.last_seen[command.key] = None
            self.leader_hint = src
        elif payload.status == "mismatch":
            history.fail(self.process, time=now_us)
            self.last_seen[command.key] = payload.value
        elif payload.status == "not_leader":
            # Not a definite failure: the network may hold a duplicate of this request that
            # another replica (or this one, once leader) will propose. Retry the same request
            # id, which the state machine's session deduplicates, until it is done or times out.
            self.outstanding = command
            self.leader_hint = payload.leader_hint
            if self.leader_hint == NONE:
                self.leader_hint = self.cluster.rng.choice(self.cluster.node_ids)
            retry = functools.partial(self._retry, command.request_id)
            self.cluster.scheduler.after(self.cluster.config.client_retry_us, retry)
            return
        else:
            raise AssertionError(f"unexpected reply {payload}")
        self.schedule_next()

    def _timeout(self, request_id: int) -> None:
        command = self.outstanding
        if command is None or command.request_id != request_id:
            return
        self.outstanding = None
        history = self.cluster.history
        history.info(self.process, time=self.cluster.now_us)
        if command.op != "get":
            self.cluster.timed_out[len(history) - 1] = (command.client_id, command.request_id)
        self.process += self.cluster.config.clients  # Jepsen: a fresh process after info
        self.leader_hint = NONE
        self.schedule_next()


class Cluster:
    """Everything in one simulated world. ``run()`` drives it to the end."""

    def __init__(
        self, seed: int, faults: FaultConfig, config: SimConfig, trace: Trace | None = None
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.config = config
        self.scheduler = Scheduler()
        self.trace = trace if trace is not None else Trace()
        self.network = SimNetwork(self.scheduler, self.rng, faults, self.trace)
        self.node_ids: tuple[NodeId, ...] = tuple(range(1, config.nodes + 1))
        self.invariants = Invariants(self.node_ids)
        self.history = History()
        self.nodes = {node_id: SimNode(self, node_id, self.node_ids) for node_id in self.node_ids}
        self.clients = [SimClient(self, i) for i in range(config.clients)]
        self.clients_stop_us = config.duration_us - config.client_timeout_us
        self.crashes = 0
        self.partitions = 0
        #: History index of each timed-out write's ``info`` -> its (client_id, request_id).
        self.timed_out: dict[int, tuple[int, int]] = {}

    @property
    def now_us(self) -> int:
        return self.scheduler.now_us

    def fsync_latency_us(self) -> int:
        faults = self.faults
        if faults.on("slow-disk") and self.rng.random() < faults.slow_fsync_probability:
            return self.rng.randint(faults.fsync_us, faults.slow_fsync_us_max)
        return faults.fsync_us

    # -- faults ------------------------------------------------------------------------------

    def _schedule_fault(self) -> None:
        delay_us = int(self.rng.expovariate(1 / self.faults.fault_interval_us))
        if self.now_us + delay_us < self.config.fault_phase_us:
            self.scheduler.after(delay_us, self._inject_fault)

    def _inject_fault(self) -> None:
        choices = [name for name in ("partition", "crash", "pause") if self.faults.on(name)]
        if choices:
            action = self.rng.choice(choices)
            if action == "partition":
                self._partition()
            elif action == "crash":
                self._crash_one()
            else:
                self._pause_one()
        self._schedule_fault()

    def _partition(self) -> None:
        rng = self.rng
        nodes = list(self.node_ids)
        rng.shuffle(nodes)
        cut = rng.randint(1, len(nodes) - 1)
        side_a, side_b = nodes[:cut], nodes[cut:]
        one_way = rng.random() < 0.4
        self.network.heal()
        self.network.partition(side_a, side_b, one_way=one_way)
        self.partitions += 1
        self.trace.log(
            self.now_us, "fault PARTITION %s %s %s", side_a, "->|" if one_way else "|", side_b
        )
        duration_us = rng.randint(50_000, self.faults.partition_duration_us_max)
        self.scheduler.after(duration_us, self._heal)

    def _heal(self) -> None:
        if self.network.cut_links():
            self.network.heal()
            self.trace.log(self.now_us, "fault HEAL")

    def _crash_one(self) -> None:
        up = [n for n in self.node_ids if self.nodes[n].up]
        down = len(self.node_ids) - len(up)
        if self.faults.crash_minority_only and down + 1 > (len(self.node_ids) - 1) // 2:
            return
        leaders = [n for n in up if self.nodes[n].is_leader()]
        if leaders and self.rng.random() < self.faults.crash_leader_probability:
            node = self.nodes[leaders[0]]
        else:
            node = self.nodes[self.rng.choice(up)]
        node.crash()
        self.crashes += 1
        self.check_durability()
        downtime_us = self.rng.randint(1_000, self.faults.crash_downtime_us_max)
        self.scheduler.after(downtime_us, lambda: self._restart(node))

    def _pause_one(self) -> None:
        up = [n for n in self.node_ids if self.nodes[n].up]
        leaders = [n for n in up if self.nodes[n].is_leader()]
        if leaders and self.rng.random() < self.faults.crash_leader_probability:
            node = self.nodes[leaders[0]]
        else:
            node = self.nodes[self.rng.choice(up)]
        duration_us = self.rng.randint(1_000, self.faults.pause_us_max)
        self.trace.log(self.now_us, "fault PAUSE n%d for %dus", node.node_id, duration_us)
        node.pause(duration_us)

    def _restart(self, node: SimNode) -> None:
        if not node.up:
            node.start()

    def _quiet(self) -> None:
        """End of the fault phase: heal everything so the run can finish its work."""
        self.network.heal()
        self.network.chaos = False
        for node in self.nodes.values():
            if not node.up:
                node.start()
        self.trace.log(self.now_us, "fault QUIET: network healed, all nodes up")

    # -- checks ------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        for node in self.nodes.values():
            node.check()

    def check_durability(self) -> None:
        self.invariants.check_durability(
            {node_id: node.disk.durable_storage() for node_id, node in self.nodes.items()}
        )

    def resolved_history(self) -> list[Event]:
        """The history, with timed-out writes that no replica ever applied marked ``fail``.

        Sound: a command absent from every replica's applied log had no effect on any read
        by the end of the run, which is exactly what ``fail`` asserts. It keeps the checker
        from having to consider every unknown write open until the end (exponential).
        """
        applied: set[tuple[int, int]] = set()
        for data in self.invariants.applied_payloads():
            if data:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    command = KVCommand.decode(data)
                    applied.add((command.client_id, command.request_id))
        events = self.history.events
        for index, request in self.timed_out.items():
            if request not in applied:
                events[index] = dataclasses.replace(events[index], type="fail")
        return events

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Runs to the end of the quiet phase; raises on any invariant violation."""
        for node in self.nodes.values():
            node.start()
        for client in self.clients:
            client.schedule_next()
        self._schedule_fault()
        self.scheduler.at(self.config.fault_phase_us, self._quiet)
        end_us = self.config.duration_us
        while True:
            next_us = self.scheduler.next_time_us()
            if next_us is None or next_us > end_us:
                break
            if self.scheduler.events_run >= self.config.max_events:
                raise RuntimeError(f"event bound {self.config.max_events} reached")
            self.scheduler.run_next()
            self.check_invariants()
        self.check_durability()
