"""The public face of the Raft core: inputs in, a Ready out, ``advance()`` when done.

A ``RawNode`` does no I/O and keeps no clock. The caller drives it::

    node = RawNode(Config(node_id=1), storage)
    node.tick()                      # every tick of the caller's clock
    node.step(message)               # every message received from a peer
    node.propose(b"cmd")             # returns the entry's index, or raises ProposalDropped
    while node.has_ready():
        ready = node.ready()
        storage.apply_snapshot / append / set_hard_state   # persist first
        send(ready.messages)                               # then send
        apply(ready.snapshot, ready.committed_entries)     # then apply (apply_conf_change)
        node.advance()

Exactly one Ready may be outstanding: ``ready()`` must be followed by ``advance()``. Inputs
(``tick``, ``step``, ``propose``, ``read_index``, ...) may be given while it is outstanding
(e.g. while its entries are being fsynced); what they produce comes in the next Ready.
``has_ready()`` may only be asked when no Ready is outstanding.
"""

from __future__ import annotations

from spindle.kv.raft.config import Config
from spindle.kv.raft.raft import Raft
from spindle.kv.raft.status import ProgressStatus, Status  # noqa: F401  (re-exported)
from spindle.kv.raft.storage import Storage
from spindle.kv.raft.types import (
    ConfChange,
    ConfState,
    EntryType,
    HardState,
    Message,
    NodeId,
    Ready,
    SoftState,
)


class RawNode:
    """One Raft replica as a pure state machine (etcd-io/raft's RawNode design)."""

    def __init__(self, config: Config, storage: Storage) -> None:
        """Starts from whatever ``storage`` holds (hard state, snapshot, entries).

        A new group is bootstrapped by giving every initial member a storage holding a
        snapshot whose ``conf_state`` lists the initial voters; a node joining later starts
        with an empty storage and receives a snapshot from the leader.
        """
        self._raft = Raft(config, storage)
        self._prev_soft_state = self._raft.soft_state()
        self._prev_hard_state = self._raft.hard_state()
        self._pending_ready: Ready | None = None

    # -- inputs --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advances the logical clock one tick (elections, heartbeats, leases, checkquorum)."""
        self._raft.tick()

    def campaign(self) -> None:
        """Starts an election now (a PreVote round first when enabled)."""
        self._raft.campaign()

    def propose(self, data: bytes) -> int:
        """Appends ``data`` to the leader's log; returns its index.

        Only the leader accepts proposals; followers do not forward them (etcd's MsgProp
        forwarding is deliberately absent: the node layer routes requests and the client
        gets a NotLeader hint). Raises ``ProposalDropped`` with a ``reason`` and a
        ``leader_id`` hint:

        - NOT_LEADER: a follower; ``leader_id`` is the leader it last heard from (retry
          there). NO_LEADER: no leader known (an election is in progress); ``leader_id`` 0.
        - TRANSFERRING_LEADERSHIP: ``leader_id`` is the transfer's target, likely the next
          leader. TOO_LARGE: over MAX_PROPOSAL_BYTES. NOT_A_MEMBER: a leader removed from
          the config it still leads.

        A returned index is not yet committed: watch committed entries for it (with the
        same term) to learn the outcome.
        """
        return self._raft.propose(data, EntryType.NORMAL)

    def propose_batch(self, datas: list[bytes]) -> int:
        """Proposes several entries at once (one append message per follower instead of
        one each); returns the first one's index (the others follow in order). Raises
        ``ProposalDropped`` like ``propose``, for all of them."""
        assert datas, "an empty batch"
        return self._raft.propose_batch(datas)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Proposes one membership change, like ``propose``; it takes effect when applied.

        Also raises ``ProposalDropped`` with CONF_CHANGE_PENDING while an earlier change is
        unapplied, and INVALID_CONF_CHANGE (``detail`` says why) for a change that makes no
        sense against the applied config: adding an existing voter or learner, demoting a
        voter, removing a non-member or the last voter, a non-positive node id.
        """
        return self._raft.propose_conf_change(change)

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Makes a committed membership change take effect; call it when applying its entry."""
        return self._raft.apply_conf_change(change)

    def step(self, message: Message) -> None:
        """Feeds one message received from a peer."""
        assert message.dst == self._raft.id, f"message for {message.dst} given to {self._raft.id}"
        self._raft.step(message)

    def read_index(self, request_ctx: bytes, *, use_lease: bool = False) -> None:
        """Requests a linearizable read; a ``ReadState`` with ``request_ctx`` comes in a Ready.

        The read may be served once the state machine has applied ``ReadState.index``. With
        ``use_lease`` the leader skips the heartbeat round while its lease is valid (needs
        check_quorum; safe only under the clock assumptions in config.py: ticks driven by a
        monotonic clock, drift within ``max_clock_drift_ratio``). A leader's reads wait
        until it has committed an entry of its term. Requests that cannot be served (no
        leader, leader changed) produce no ReadState: callers time out and retry. Beyond
        ``max_pending_reads`` waiting reads the leader refuses: locally this raises
        ``ReadDropped``; a forwarded request's context comes back in
        ``Ready.dropped_reads``.
        """
        self._raft.read_index(request_ctx, use_lease=use_lease)

    def transfer_leadership(self, target: NodeId) -> None:
        """Asks the leader to hand leadership to ``target`` (via TIMEOUT_NOW once caught up)."""
        self._raft.transfer_leadership(target)

    def report_unreachable(self, node_id: NodeId) -> None:
        """Tells the leader a send to ``node_id`` failed, so it probes instead of streaming."""
        self._raft.report_unreachable(node_id)

    # -- outputs -------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        assert self._pending_ready is None, "has_ready() while a Ready is outstanding"
        raft = self._raft
        return (
            raft.soft_state() != self._prev_soft_state
            or raft.hard_state() != self._prev_hard_state
            or bool(raft.msgs)
            or raft.commit_unsent
            or bool(raft.read_states)
            or bool(raft.dropped_reads)
            or raft.log.has_unstable()
            or raft.log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        """Everything the caller must do now; call ``advance()`` after doing it."""
        assert self._pending_ready is None, "ready() called twice without advance()"
        raft = self._raft
        soft_state = raft.soft_state()
        hard_state = raft.hard_state()
        entries = raft.log.unstable_entries()
        hard_changed = hard_state != self._prev_hard_state
        ready = Ready(
            soft_state=soft_state if soft_state != self._prev_soft_state else None,
            hard_state=hard_state if hard_changed else None,
            entries=entries,
            snapshot=raft.log.unstable_snapshot(),
            committed_entries=raft.log.next_committed_entries(
                raft.config.max_committed_bytes_per_ready
            ),
            messages=raft.take_messages(),
            read_states=raft.take_read_states(),
            dropped_reads=raft.take_dropped_reads(),
            must_sync=bool(entries)
            or (
                hard_changed
                and (
                    hard_state.term != self._prev_hard_state.term
                    or hard_state.vote != self._prev_hard_state.vote
                )
            ),
        )
        if ready.snapshot is not None:
            ready.must_sync = True
        self._pending_ready = ready
        return ready

    def advance(self) -> None:
        """Acknowledges that the last Ready was persisted, sent and applied."""
        ready = self._pending_ready
        assert ready is not None, "advance() without ready()"
        self._pending_ready = None
        if ready.soft_state is not None:
            self._prev_soft_state = ready.soft_state
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        log = self._raft.log
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.metadata.index)
            log.applied_to(ready.snapshot.metadata.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
        self._raft.on_advance()

    # -- introspection -------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._raft.id

    def soft_state(self) -> SoftState:
        return self._raft.soft_state()

    def hard_state(self) -> HardState:
        return self._raft.hard_state()

    def lease_valid(self) -> bool:
        """Whether this node is a leader whose lease currently allows lease-based reads."""
        return self._raft.lease_valid()

    def status(self) -> Status:
        return self._raft.status()

    def committed_index(self) -> int:
        """The highest index known committed (a lease read may serve once it is applied)."""
        return self._raft.log.committed
