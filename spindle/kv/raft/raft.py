"""The Raft protocol: one step function per role, driven by ticks and messages.

Written from the Raft paper (Ongaro & Ousterhout 2014) and Ongaro's thesis (PreVote §9.6,
leadership transfer §3.10, ReadIndex and leases §6.4, single-server membership changes §4.1).
Nothing here performs I/O: outgoing messages accumulate in ``msgs`` and read results in
``read_states``; ``RawNode`` hands them to the caller in a Ready.

Invariants the core asserts (an AssertionError means a bug here or a broken caller contract):

- Terms never decrease (``_reset``); a replica votes at most once per term
  (``_handle_vote_request``: the vote can only go from NONE to one candidate).
- At most one leader per term: a leader never receives APP/HEARTBEAT/SNAP of its own term,
  and a follower never hears two different leaders in one term (``step``).
- The commit index never decreases (``RaftLog.commit_to``) nor passes the last index; a
  committed entry is never overwritten (``RaftLog.append``, ``RaftLog.maybe_append``).
- A leader commits by counting replicas only entries of its own term (``RaftLog.maybe_commit``).
- applied <= committed <= last index after every Ready (``check_invariants``); a leader is its
  own leader and voted for itself.
- A leader lease is only trusted with check_quorum, after the leader committed an entry of
  its term, never once it sent TIMEOUT_NOW in the term, and with a margin no smaller than
  ``lease_margin_ticks_min`` for the configured clock drift (``lease_valid``).
- Progress: in-flight appends never exceed max_inflight_msgs, nor max_inflight_bytes but
  for the message that crosses it (``Inflights.add``).
"""

from __future__ import annotations

import dataclasses
import random

import msgspec

from spindle.kv.raft.config import MAX_PROPOSAL_BYTES, Config
from spindle.kv.raft.errors import DropReason, ProposalDropped, ReadDropped
from spindle.kv.raft.log import RaftLog
from spindle.kv.raft.progress import (
    Progress,
    ProgressState,
    VoteResult,
    quorum_min,
    tally_votes,
)
from spindle.kv.raft.status import ProgressStatus, Status
from spindle.kv.raft.storage import Storage
from spindle.kv.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

TRANSFER_CONTEXT = b"transfer"
"""Context of votes cast after TIMEOUT_NOW: recipients grant them despite a leader lease."""

_ROUND_ID_BYTES = 8


@dataclasses.dataclass
class _ReadRequest:
    """A ReadIndex request waiting for a quorum to confirm this leader's leadership."""

    index: int
    request_ctx: bytes
    requester: NodeId
    round_id: int
    acks: set[NodeId]


@dataclasses.dataclass
class _IncomingSnapshot:
    """Chunks of a snapshot received so far from the leader.

    Chunks are only joined if they come from the same leader in the same term: two leaders'
    snapshots at one index hold the same state but not necessarily the same bytes.
    """

    metadata: SnapshotMetadata
    data: bytearray
    leader: NodeId
    term: int


class Raft:
    """One replica's protocol state. Use it through ``RawNode``."""

    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.config = config
        self.id: NodeId = config.node_id
        self.log = RaftLog(storage)
        self.rng = config.rng if config.rng is not None else random.Random(config.seed)
        self.term = 0
        self.vote: NodeId = NONE
        self.lead: NodeId = NONE
        self.role = Role.FOLLOWER
        self.msgs: list[Message] = []
        self.commit_unsent = False
        """The commit index advanced; followers hear of it when the next Ready is taken."""
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.voters: frozenset[NodeId] = frozenset()
        self.learners: frozenset[NodeId] = frozenset()
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.pending_conf_index = 0
        """Index of the latest conf change proposed by this leader; one may be unapplied."""
        self.lead_transferee: NodeId = NONE
        self.transfer_elapsed_ticks = 0
        """Ticks since the current leadership transfer began; aborted at election_ticks."""
        self._timeout_now_sent = False
        """This leader sent TIMEOUT_NOW in its term: a forced election may depose it at any
        time (the message may be delayed arbitrarily), so its lease is void for the term."""
        self._vote_hold_until_tick = 0
        """A restarted replica refuses non-transfer votes until this tick: before the crash it
        may have acknowledged a leader whose lease still counts on it."""
        self.election_elapsed_ticks = 0
        self.heartbeat_elapsed_ticks = 0
        self.randomized_election_ticks = config.election_ticks
        self.tick_count = 0
        """Ticks since this replica started; the leader lease is measured in it."""
        self._read_round_id = 0
        self._pending_reads: list[_ReadRequest] = []
        self._reads_awaiting_commit: list[tuple[bytes, NodeId, bool]] = []
        self._incoming_snapshot: _IncomingSnapshot | None = None

        hard_state, conf_state = storage.initial_state()
        self._set_conf_state(conf_state)
        if hard_state != HardState():
            assert self.log.committed <= hard_state.commit <= self.log.last_index(), (
                f"hard state commit {hard_state.commit} outside the stored log"
            )
            self.term = hard_state.term
            self.vote = hard_state.vote
            self.log.commit_to(hard_state.commit)
            self._vote_hold_until_tick = config.election_ticks
        if config.applied_index > 0:
            self.log.applied_to(config.applied_index)
        self._become_follower(self.term, NONE)

    # -- state reports --------------------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(leader_id=self.lead, role=self.role)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def conf_state(self) -> ConfState:
        return ConfState(voters=tuple(sorted(self.voters)), learners=tuple(sorted(self.learners)))

    def take_messages(self) -> list[Message]:
        if self.commit_unsent:
            self._send_commit()
        msgs, self.msgs = self.msgs, []
        return msgs

    def _send_commit(self) -> None:
        """Tell followers a commit index that advanced since the last Ready, once, unless
        an append already going to them carries it (a commit learnt from several acks,
        or followed by new proposals, costs no extra messages)."""
        self.commit_unsent = False
        if self.role is not Role.LEADER:
            return
        committed = self.log.committed
        told = {m.dst for m in self.msgs if m.type is MessageType.APP and m.commit >= committed}
        for node_id in sorted(self.progress):
            if node_id != self.id and node_id not in told:
                self._send_append(node_id)

    def take_read_states(self) -> list[ReadState]:
        read_states, self.read_states = self.read_states, []
        return read_states

    def take_dropped_reads(self) -> list[bytes]:
        dropped, self.dropped_reads = self.dropped_reads, []
        return dropped

    def status(self) -> Status:
        progress: dict[NodeId, ProgressStatus] = {}
        if self.role is Role.LEADER:
            for node_id, pr in sorted(self.progress.items()):
                progress[node_id] = ProgressStatus(
                    match_index=pr.match_index,
                    next_index=pr.next_index,
                    state=pr.state.value,
                    inflight_msgs=len(pr.inflights),
                    inflight_bytes=pr.inflights.bytes,
                    is_learner=pr.is_learner,
                    recent_active=pr.recent_active,
                )
        return Status(
            node_id=self.id,
            role=self.role,
            leader_id=self.lead,
            term=self.term,
            vote=self.vote,
            commit_index=self.log.committed,
            applied_index=self.log.applied,
            last_index=self.log.last_index(),
            first_index=self.log.first_index(),
            conf_state=self.conf_state(),
            lead_transferee=self.lead_transferee,
            progress=progress,
        )

    def on_advance(self) -> None:
        """Checks invariants after the caller has handled a Ready."""
        self.check_invariants()

    def check_invariants(self) -> None:
        log = self.log
        assert log.applied <= log.committed <= log.last_index(), (
            f"node {self.id}: applied {log.applied} <= committed {log.committed}"
            f" <= last {log.last_index()} violated"
        )
        if self.role is Role.LEADER:
            assert self.lead == self.id and self.vote == self.id

    # -- role transitions -----------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            assert term > self.term, f"term moving backwards {self.term} -> {term}"
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed_ticks = 0
        self.heartbeat_elapsed_ticks = 0
        self.randomized_election_ticks = self.config.election_ticks + self.rng.randrange(
            self.config.election_ticks
        )
        self.lead_transferee = NONE
        self.transfer_elapsed_ticks = 0
        self._timeout_now_sent = False
        self.votes = {}
        self._pending_reads = []
        self._reads_awaiting_commit = []
        last_index = self.log.last_index()
        for node_id, pr in list(self.progress.items()):
            fresh = Progress(
                last_index + 1,
                self.config.max_inflight_msgs,
                pr.is_learner,
                self.config.max_inflight_bytes,
            )
            if node_id == self.id:
                fresh.match_index = last_index
            self.progress[node_id] = fresh

    def _become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER
        # PreVote changes neither term nor vote, so a partitioned node cannot inflate terms.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.progress[self.id].become_replicate()
        self.progress[self.id].recent_active = True
        # Conservatively treat any conf change in the log as unapplied until it is.
        self.pending_conf_index = self.log.last_index()
        # An entry of the new term lets earlier-term entries commit (paper section 5.4.2).
        self._append_entries([Entry(term=0, index=0)])
        self._broadcast_append()

    # -- ticks ----------------------------------------------------------------------------------

    def tick(self) -> None:
        self.tick_count += 1
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed_ticks += 1
        if self._promotable() and self.election_elapsed_ticks >= self.randomized_election_ticks:
            self.election_elapsed_ticks = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed_ticks += 1
        self.election_elapsed_ticks += 1
        if self.lead_transferee != NONE:
            self.transfer_elapsed_ticks += 1
            if self.transfer_elapsed_ticks >= self.config.election_ticks:
                self.lead_transferee = NONE  # a transfer not done within an election timeout
        if self.election_elapsed_ticks >= self.config.election_ticks:
            self.election_elapsed_ticks = 0
            if self.config.check_quorum:
                if not self._quorum_recently_active():
                    self._become_follower(self.term, NONE)
                    return
                for node_id, pr in self.progress.items():
                    pr.recent_active = node_id == self.id
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed_ticks = 0
            self._broadcast_heartbeat(b"")

    def _quorum_recently_active(self) -> bool:
        active = sum(1 for v in self.voters if v == self.id or self.progress[v].recent_active)
        return active >= len(self.voters) // 2 + 1

    def _promotable(self) -> bool:
        return self.id in self.voters and self.log.unstable.snapshot is None

    # -- elections ------------------------------------------------------------------------------

    def campaign(self, *, transfer: bool = False) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_change():
            return  # the outcome of an election could depend on a config we do not have yet
        if self.config.pre_vote and not transfer:
            self._start_election(pre_vote=True, transfer=False)
        else:
            self._start_election(pre_vote=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        if lo >= hi or lo < self.log.first_index():
            return False
        return any(e.type is EntryType.CONF_CHANGE for e in self.log.slice(lo, hi))

    def _start_election(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self.term + 1
            vote_type = MessageType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term = self.term
            vote_type = MessageType.VOTE
        if self._record_vote(self.id, granted=True):
            return
        for voter in sorted(self.voters):
            if voter == self.id:
                continue
            self._send(
                Message(
                    type=vote_type,
                    src=self.id,
                    dst=voter,
                    term=vote_term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=TRANSFER_CONTEXT if transfer else b"",
                )
            )

    def _record_vote(self, voter: NodeId, *, granted: bool) -> bool:
        """Counts a vote; returns True if the election was decided (won or lost)."""
        self.votes.setdefault(voter, granted)
        result = tally_votes(self.voters, self.votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._start_election(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self.term, NONE)
            return True
        return False

    def _handle_vote_request(self, m: Message) -> None:
        is_pre_vote = m.type is MessageType.PRE_VOTE
        can_vote = (
            self.vote == m.src
            or (self.vote == NONE and self.lead == NONE)
            or (is_pre_vote and m.term > self.term)
        )
        resp_type = MessageType.PRE_VOTE_RESP if is_pre_vote else MessageType.VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted PreVote echoes the proposed term so the pre-candidate counts it.
            self._send(Message(type=resp_type, src=self.id, dst=m.src, term=m.term))
            if not is_pre_vote:
                assert self.vote in (NONE, m.src), f"second vote in term {self.term}"
                assert m.term == self.term
                self.vote = m.src
                self.election_elapsed_ticks = 0
        else:
            self._send(Message(type=resp_type, src=self.id, dst=m.src, term=self.term, reject=True))

    # -- the step function ----------------------------------------------------------------------

    def _in_lease(self) -> bool:
        """Whether we promised a leader not to help elect another (thesis section 4.2.3).

        True within election_ticks of hearing from the leader, and for election_ticks after a
        restart (the promise may predate the crash). The leader lease rests on it.
        """
        if not self.config.check_quorum:
            return False
        if self.lead != NONE:
            return self.election_elapsed_ticks < self.config.election_ticks
        return self.tick_count < self._vote_hold_until_tick

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                forced = m.context == TRANSFER_CONTEXT
                if self._in_lease() and not forced:
                    return  # we heard from a live leader recently: keep its lease intact
            elif (
                self.role is Role.FOLLOWER
                and m.type not in _FROM_LEADER_TYPES
                and m.type is not MessageType.TIMEOUT_NOW
                and self._in_lease()
            ):
                # A higher term that does not come from a leader (a delayed vote response, an
                # ack to a former role) must not reset our election state while we hold a
                # lease for the leader: with no leader and no vote, we would grant the next
                # vote request at once and a new leader could commit while the old one still
                # serves lease reads counting on us. A real new leader reaches us by APP.
                return
            if m.type is MessageType.PRE_VOTE or (
                m.type is MessageType.PRE_VOTE_RESP and not m.reject
            ):
                pass  # PreVote traffic does not move terms
            elif m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MessageType.APP, MessageType.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # Tell a stale leader about the newer term, else it might never step down
                # (with PreVote our higher term would never reach it in a vote request).
                self._send(
                    Message(type=MessageType.APP_RESP, src=self.id, dst=m.src, term=self.term)
                )
            elif m.type is MessageType.PRE_VOTE:
                self._send(
                    Message(
                        type=MessageType.PRE_VOTE_RESP,
                        src=self.id,
                        dst=m.src,
                        term=self.term,
                        reject=True,
                    )
                )
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _step_follower(self, m: Message) -> None:
        if m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            assert self.lead in (NONE, m.src), (
                f"node {self.id}: two leaders in term {self.term}: {self.lead} and {m.src}"
            )
            self.election_elapsed_ticks = 0
            self.lead = m.src
            self._handle_from_leader(m)
        elif m.type is MessageType.TIMEOUT_NOW:
            self.campaign(transfer=True)
        elif m.type is MessageType.READ_INDEX_RESP:
            if m.reject:
                self.dropped_reads.append(m.context)
            else:
                self.read_states.append(ReadState(index=m.index, request_ctx=m.context))

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            # A leader exists for our term: we lost.
            self._become_follower(m.term, m.src)
            self._handle_from_leader(m)
            return
        expected = (
            MessageType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if m.type is expected:
            self._record_vote(m.src, granted=not m.reject)

    def _handle_from_leader(self, m: Message) -> None:
        if m.type is MessageType.APP:
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self._handle_heartbeat(m)
        else:
            self._handle_snapshot_chunk(m)

    # -- follower: replication ------------------------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        resp = Message(type=MessageType.APP_RESP, src=self.id, dst=m.src, term=self.term)
        if m.index < self.log.committed:
            self._send(_with(resp, index=self.log.committed, sent_tick=m.sent_tick))
            return
        last_new_index = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new_index is not None:
            self._send(_with(resp, index=last_new_index, sent_tick=m.sent_tick))
            return
        # Reject, with a hint: the last index at or below m.index whose term is <= the
        # leader's term there. The leader can skip every entry above it in one round trip.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            _with(
                resp,
                index=m.index,
                reject=True,
                reject_hint_index=hint_index,
                reject_hint_term=hint_term,
                sent_tick=m.sent_tick,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(
            Message(
                type=MessageType.HEARTBEAT_RESP,
                src=self.id,
                dst=m.src,
                term=self.term,
                context=m.context,
                sent_tick=m.sent_tick,
            )
        )

    def _handle_snapshot_chunk(self, m: Message) -> None:
        metadata = m.snapshot
        assert metadata is not None, "SNAP message without metadata"
        resp = Message(
            type=MessageType.SNAP_RESP, src=self.id, dst=m.src, term=self.term, snapshot=metadata
        )
        incoming = self._incoming_snapshot
        if (
            incoming is None
            or incoming.metadata != metadata
            or incoming.leader != m.src
            or incoming.term != m.term
        ):
            self._incoming_snapshot = None
            if m.snapshot_offset_bytes != 0:
                self._send(_with(resp, index=0, reject=True))  # restart from the beginning
                return
            incoming = _IncomingSnapshot(metadata, bytearray(), m.src, m.term)
            self._incoming_snapshot = incoming
        if m.snapshot_offset_bytes == len(incoming.data):
            incoming.data += m.snapshot_chunk
            if m.snapshot_done:
                self._incoming_snapshot = None
                self._install_snapshot(Snapshot(metadata=metadata, data=bytes(incoming.data)), m)
                return
        # A duplicate or out-of-order chunk: tell the leader what we hold.
        self._send(_with(resp, index=len(incoming.data)))

    def _install_snapshot(self, snapshot: Snapshot, m: Message) -> None:
        resp = Message(
            type=MessageType.APP_RESP,
            src=self.id,
            dst=m.src,
            term=self.term,
            sent_tick=m.sent_tick,
        )
        meta = snapshot.metadata
        if meta.index <= self.log.committed:
            self._send(_with(resp, index=self.log.committed))
            return
        if self.log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            self._send(_with(resp, index=self.log.committed))
            return
        self.log.restore(snapshot)
        self._set_conf_state(meta.conf_state)
        self._send(_with(resp, index=self.log.last_index()))

    # -- leader ---------------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        assert m.type not in _FROM_LEADER_TYPES, (
            f"node {self.id}: two leaders in term {self.term}: {self.id} and {m.src}"
        )
        if m.type is MessageType.READ_INDEX:
            self._leader_read_index(m.context, m.src, use_lease=False)
            return
        pr = self.progress.get(m.src)
        if pr is None:
            return  # not (or no longer) a member
        if m.type is MessageType.APP_RESP:
            pr.recent_active = True
            self._record_lease_ack(pr, m)
            self._handle_append_response(m, pr)
        elif m.type is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            self._record_lease_ack(pr, m)
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()  # a lost append must not stall the stream
            if pr.state is ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(m.src, pr)  # resend in case a chunk was lost
            elif pr.match_index < self.log.last_index():
                self._send_append(m.src)
            if m.context:
                self._handle_read_ack(m.src, int.from_bytes(m.context, "big"))
        elif m.type is MessageType.SNAP_RESP:
            pr.recent_active = True
            pending = pr.pending_snapshot
            if pr.state is not ProgressState.SNAPSHOT or pending is None:
                return
            if m.snapshot != pending.metadata:
                return  # about a snapshot we are no longer sending
            pr.snapshot_offset_bytes = 0 if m.reject else m.index
            self._send_snapshot_chunk(m.src, pr)

    def _record_lease_ack(self, pr: Progress, m: Message) -> None:
        if m.sent_tick > pr.acked_sent_tick:
            pr.acked_sent_tick = m.sent_tick

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            match_hint = m.reject_hint_index
            if m.reject_hint_term > 0:
                match_hint, _ = self.log.find_conflict_by_term(
                    m.reject_hint_index, m.reject_hint_term
                )
            if pr.maybe_decrease_to(m.index, match_hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match_index + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self.commit_unsent = True  # sent with the next Ready (take_messages)
        if was_paused:
            self._send_append(m.src)
        while self._send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match_index == self.log.last_index():
            self._send_timeout_now(m.src)

    def _maybe_commit(self) -> bool:
        if not self.voters or self.id not in self.progress:
            return False
        quorum_match = quorum_min([self.progress[v].match_index for v in self.voters])
        old_commit = self.log.committed
        if not self.log.maybe_commit(quorum_match, self.term):
            return False
        assert self.log.committed > old_commit
        self._release_reads_awaiting_commit()
        return True

    def _append_entries(self, entries: list[Entry]) -> int:
        last_index = self.log.last_index()
        stamped = [
            Entry(term=self.term, index=last_index + 1 + i, type=e.type, data=e.data)
            for i, e in enumerate(entries)
        ]
        last_index = self.log.append(stamped)
        self.progress[self.id].maybe_update(last_index)
        self._maybe_commit()
        return last_index

    def _broadcast_append(self) -> None:
        for node_id in sorted(self.progress):
            if node_id != self.id:
                self._send_append(node_id)

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for node_id in sorted(self.progress):
            if node_id == self.id:
                continue
            pr = self.progress[node_id]
            self._send(
                Message(
                    type=MessageType.HEARTBEAT,
                    src=self.id,
                    dst=node_id,
                    term=self.term,
                    # Never past what the follower holds: it cannot commit what it lacks.
                    commit=min(pr.match_index, self.log.committed),
                    context=context,
                    sent_tick=self.tick_count,
                )
            )

    def _send_append(self, to: NodeId, *, send_if_empty: bool = True) -> bool:
        """Sends entries (or a snapshot) to ``to`` if flow control allows; True if sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next_index - 1
        prev_term = self.log.term(prev_index)
        entries = self.log.entries_from(pr.next_index, self.config.max_msg_bytes)
        if prev_term is None or entries is None:
            return self._start_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                type=MessageType.APP,
                src=self.id,
                dst=to,
                term=self.term,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
                sent_tick=self.tick_count,
            )
        )
        if pr.state is ProgressState.REPLICATE:
            if entries:
                pr.optimistic_update(entries[-1].index)
                pr.inflights.add(entries[-1].index, sum(len(entry.data) for entry in entries))
        else:
            pr.probe_sent = True
        return True

    def _start_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a peer that may be down
        snapshot = self.log.snapshot()
        assert not snapshot.is_empty(), "log compacted without a snapshot"
        pr.become_snapshot(snapshot)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: NodeId, pr: Progress) -> None:
        snapshot = pr.pending_snapshot
        assert snapshot is not None
        offset = pr.snapshot_offset_bytes
        chunk = snapshot.data[offset : offset + self.config.snapshot_chunk_bytes]
        self._send(
            Message(
                type=MessageType.SNAP,
                src=self.id,
                dst=to,
                term=self.term,
                snapshot=snapshot.metadata,
                snapshot_offset_bytes=offset,
                snapshot_chunk=chunk,
                snapshot_done=offset + len(chunk) >= len(snapshot.data),
                sent_tick=self.tick_count,
            )
        )

    def _send_timeout_now(self, to: NodeId) -> None:
        self._timeout_now_sent = True
        self._send(Message(type=MessageType.TIMEOUT_NOW, src=self.id, dst=to, term=self.term))

    def _send(self, m: Message) -> None:
        assert m.src == self.id and m.dst != self.id
        self.msgs.append(m)

    # -- proposals ------------------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            reason = DropReason.NO_LEADER if self.lead == NONE else DropReason.NOT_LEADER
            raise ProposalDropped(reason, self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(DropReason.TRANSFERRING_LEADERSHIP, self.lead_transferee)
        if self.id not in self.progress:
            raise ProposalDropped(DropReason.NOT_A_MEMBER, NONE)

    def propose(self, data: bytes, entry_type: EntryType) -> int:
        self._check_can_propose()
        if len(data) > MAX_PROPOSAL_BYTES:
            raise ProposalDropped(DropReason.TOO_LARGE, self.id)
        index = self._append_entries([Entry(term=0, index=0, type=entry_type, data=data)])
        self._broadcast_append()
        return index

    def propose_batch(self, datas: list[bytes]) -> int:
        """Append several normal entries with one broadcast; returns the first's index."""
        self._check_can_propose()
        if any(len(data) > MAX_PROPOSAL_BYTES for data in datas):
            raise ProposalDropped(DropReason.TOO_LARGE, self.id)
        last = self._append_entries([Entry(term=0, index=0, data=data) for data in datas])
        self._broadcast_append()
        return last - len(datas) + 1

    def propose_conf_change(self, change: ConfChange) -> int:
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(DropReason.CONF_CHANGE_PENDING, self.id)
        problem = self._conf_change_problem(change)
        if problem:
            raise ProposalDropped(DropReason.INVALID_CONF_CHANGE, self.id, problem)
        index = self.propose(change.encode(), EntryType.CONF_CHANGE)
        self.pending_conf_index = index
        return index

    def _conf_change_problem(self, change: ConfChange) -> str:
        """Why ``change`` is invalid against the (applied) config, or "" if it is valid."""
        node_id = change.node_id
        if node_id <= 0:
            return f"node id {node_id} is not positive"
        if change.type is ConfChangeType.ADD_VOTER:
            if node_id in self.voters:
                return f"node {node_id} is already a voter"
            return ""
        if change.type is ConfChangeType.ADD_LEARNER:
            if node_id in self.voters:
                return f"node {node_id} is a voter (demoting a voter is not supported)"
            if node_id in self.learners:
                return f"node {node_id} is already a learner"
            return ""
        # REMOVE_NODE: must exist, and a group keeps at least one voter.
        if node_id in self.learners:
            return ""
        if node_id not in self.voters:
            return f"node {node_id} is not a member"
        if len(self.voters) == 1:
            return f"removing node {node_id} would leave the group without voters"
        return ""

    # -- membership -----------------------------------------------------------------------------

    def _set_conf_state(self, conf_state: ConfState) -> None:
        voters = frozenset(conf_state.voters)
        learners = frozenset(conf_state.learners)
        assert not voters & learners, "a node is both voter and learner"
        self.voters, self.learners = voters, learners
        next_index = self.log.last_index() + 1
        for node_id in list(self.progress):
            if node_id not in voters and node_id not in learners:
                del self.progress[node_id]
        for node_id in voters | learners:
            pr = self.progress.get(node_id)
            if pr is None:
                pr = Progress(
                    next_index,
                    self.config.max_inflight_msgs,
                    node_id in learners,
                    self.config.max_inflight_bytes,
                )
                if node_id == self.id:
                    pr.match_index = next_index - 1
                self.progress[node_id] = pr
            pr.is_learner = node_id in learners

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        voters, learners = set(self.voters), set(self.learners)
        if change.type is ConfChangeType.ADD_VOTER:
            learners.discard(change.node_id)
            voters.add(change.node_id)
        elif change.type is ConfChangeType.ADD_LEARNER:
            if change.node_id not in voters:
                learners.add(change.node_id)
        else:
            voters.discard(change.node_id)
            learners.discard(change.node_id)
        self._set_conf_state(
            ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
        )
        if self.role is Role.LEADER:
            if self.id not in self.voters:
                self._become_follower(self.term, NONE)  # removed: let the others elect
            else:
                if self.lead_transferee not in (NONE, *self.voters):
                    self.lead_transferee = NONE
                if self._maybe_commit():  # the quorum may have shrunk
                    self._broadcast_append()
                for node_id in sorted(self.progress):
                    pr = self.progress[node_id]
                    if node_id != self.id and pr.match_index == 0 and not pr.probe_sent:
                        self._send_append(node_id)  # probe new members at once
        return self.conf_state()

    # -- leadership transfer --------------------------------------------------------------------

    def transfer_leadership(self, target: NodeId) -> None:
        if self.role is not Role.LEADER or target == self.id or target not in self.voters:
            return
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.transfer_elapsed_ticks = 0  # the transfer is aborted after one election timeout
        if self.progress[target].match_index == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def report_unreachable(self, node_id: NodeId) -> None:
        pr = self.progress.get(node_id)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    # -- reads ----------------------------------------------------------------------------------

    def lease_valid(self) -> bool:
        """Whether a quorum acknowledged us recently enough that no other leader can exist.

        A follower that hears from us at tick T refuses votes until T + election_ticks (its
        ticks), so our lease runs to the quorum's oldest acknowledged send tick plus
        election_ticks, less ``Config.effective_lease_margin_ticks()`` for tick granularity
        and clock drift (see config.py for the assumptions). Only with check_quorum, and
        never once this leader has sent TIMEOUT_NOW in its term: a transfer may complete
        (and the new leader commit) after we gave up waiting for it.
        """
        if (
            self.role is not Role.LEADER
            or not self.config.check_quorum
            or self.lead_transferee != NONE
            or self._timeout_now_sent
            or not self._committed_in_current_term()
        ):
            return False
        acked_ticks = [
            self.tick_count if v == self.id else self.progress[v].acked_sent_tick
            for v in self.voters
        ]
        quorum_tick = quorum_min(acked_ticks)
        if quorum_tick < 0:
            return False
        margin_ticks = self.config.effective_lease_margin_ticks()
        lease_end_tick = quorum_tick + self.config.election_ticks - margin_ticks
        return self.tick_count < lease_end_tick

    def _committed_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def read_index(self, request_ctx: bytes, *, use_lease: bool) -> None:
        if self.role is Role.LEADER:
            if self._reads_waiting() >= self.config.max_pending_reads:
                raise ReadDropped(DropReason.TOO_MANY_PENDING_READS, self.id)
            self._leader_read_index(request_ctx, self.id, use_lease=use_lease)
        elif self.role is Role.FOLLOWER and self.lead != NONE:
            self._send(
                Message(
                    type=MessageType.READ_INDEX,
                    src=self.id,
                    dst=self.lead,
                    term=self.term,
                    context=request_ctx,
                )
            )
        # Otherwise dropped: no leader to ask. The caller times out and retries.

    def _reads_waiting(self) -> int:
        return len(self._pending_reads) + len(self._reads_awaiting_commit)

    def _refuse_read(self, request_ctx: bytes, requester: NodeId) -> None:
        """Tells a follower its forwarded read was refused (the local case raises instead)."""
        assert requester != self.id
        self._send(
            Message(
                type=MessageType.READ_INDEX_RESP,
                src=self.id,
                dst=requester,
                term=self.term,
                context=request_ctx,
                reject=True,
            )
        )

    def _leader_read_index(self, request_ctx: bytes, requester: NodeId, *, use_lease: bool) -> None:
        if not self._committed_in_current_term():
            # Our commit index may lag the previous leader's until an entry of our term
            # commits (thesis section 6.4): wait for that.
            if requester != self.id and self._reads_waiting() >= self.config.max_pending_reads:
                self._refuse_read(request_ctx, requester)
                return
            self._reads_awaiting_commit.append((request_ctx, requester, use_lease))
            return
        if self.voters == frozenset({self.id}) or (use_lease and self.lease_valid()):
            self._respond_read(self.log.committed, request_ctx, requester)
            return
        if requester != self.id and self._reads_waiting() >= self.config.max_pending_reads:
            self._refuse_read(request_ctx, requester)
            return
        self._read_round_id += 1
        self._pending_reads.append(
            _ReadRequest(
                index=self.log.committed,
                request_ctx=request_ctx,
                requester=requester,
                round_id=self._read_round_id,
                acks={self.id},
            )
        )
        self._broadcast_heartbeat(self._read_round_id.to_bytes(_ROUND_ID_BYTES, "big"))

    def _handle_read_ack(self, voter: NodeId, round_id: int) -> None:
        """A heartbeat ack for ``round_id`` confirms every earlier round too."""
        if voter not in self.voters:
            return
        quorum = len(self.voters) // 2 + 1
        confirmed = 0
        for i, request in enumerate(self._pending_reads):
            if request.round_id <= round_id:
                request.acks.add(voter)
            if len(request.acks & self.voters) >= quorum:
                confirmed = i + 1
        released, self._pending_reads = (
            self._pending_reads[:confirmed],
            self._pending_reads[confirmed:],
        )
        for request in released:
            self._respond_read(request.index, request.request_ctx, request.requester)

    def _release_reads_awaiting_commit(self) -> None:
        if not self._reads_awaiting_commit or not self._committed_in_current_term():
            return
        waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
        for request_ctx, requester, use_lease in waiting:
            self._leader_read_index(request_ctx, requester, use_lease=use_lease)

    def _respond_read(self, index: int, request_ctx: bytes, requester: NodeId) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index=index, request_ctx=request_ctx))
        else:
            self._send(
                Message(
                    type=MessageType.READ_INDEX_RESP,
                    src=self.id,
                    dst=requester,
                    term=self.term,
                    index=index,
                    context=request_ctx,
                )
            )


_FROM_LEADER_TYPES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
"""Messages only a leader sends (about its log); receiving one proves a leader of its term."""


def _with(m: Message, **changes: object) -> Message:
    """A copy of ``m`` with some fields changed."""
    return msgspec.structs.replace(m, **changes)
