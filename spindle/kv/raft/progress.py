"""The leader's per-follower replication state: match/next indexes, flow control, quorums."""

from __future__ import annotations

import collections
import enum

from spindle.kv.raft.config import MAX_INFLIGHT_BYTES
from spindle.kv.raft.types import NodeId, Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    """Follower's log position unknown: one append in flight at a time until it answers."""
    REPLICATE = "replicate"
    """Follower is in sync: stream appends optimistically, up to max_inflight_msgs (and
    max_inflight_bytes)."""
    SNAPSHOT = "snapshot"
    """Follower needs entries we compacted: send snapshot chunks, nothing else."""


class Inflights:
    """Each append message sent but not yet acknowledged: its last index and payload bytes,
    oldest first. Full at `capacity_msgs` messages or `capacity_bytes` bytes (the message
    that crosses the byte budget is still sent, so one entry larger than it goes out)."""

    def __init__(self, capacity_msgs: int, capacity_bytes: int = MAX_INFLIGHT_BYTES) -> None:
        assert capacity_msgs > 0 and capacity_bytes > 0
        self.capacity_msgs = capacity_msgs
        self.capacity_bytes = capacity_bytes
        self._sent: collections.deque[tuple[int, int]] = collections.deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._sent)

    def full(self) -> bool:
        return len(self._sent) >= self.capacity_msgs or self.bytes >= self.capacity_bytes

    def add(self, last_index: int, size_bytes: int = 0) -> None:
        assert not self.full(), "append sent beyond max_inflight_msgs / max_inflight_bytes"
        assert not self._sent or last_index > self._sent[-1][0]
        self._sent.append((last_index, size_bytes))
        self.bytes += size_bytes

    def free_le(self, index: int) -> None:
        """Frees every message whose entries are all acknowledged by a match at ``index``."""
        while self._sent and self._sent[0][0] <= index:
            self.bytes -= self._sent.popleft()[1]

    def free_first_one(self) -> None:
        if self._sent:
            self.bytes -= self._sent.popleft()[1]

    def reset(self) -> None:
        self._sent.clear()
        self.bytes = 0


class Progress:
    """What the leader knows of one peer's log."""

    def __init__(
        self,
        next_index: int,
        max_inflight_msgs: int,
        is_learner: bool,
        max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
    ) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """In PROBE: an append is outstanding, so wait for its answer (or a heartbeat's)."""
        self.inflights = Inflights(max_inflight_msgs, max_inflight_bytes)
        self.is_learner = is_learner
        self.recent_active = False
        """Heard from within the current check-quorum period."""
        self.acked_sent_tick = -1
        """Latest leader tick of a message this peer acknowledged in this term (lease)."""
        self.pending_snapshot: Snapshot | None = None
        self.snapshot_offset_bytes = 0
        """Snapshot bytes the peer has acknowledged holding."""

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.state = state
        self.inflights.reset()
        self.pending_snapshot = None
        self.snapshot_offset_bytes = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT and self.pending_snapshot is not None:
            snapshot_index = self.pending_snapshot.metadata.index
            self._reset_state(ProgressState.PROBE)
            self.next_index = max(self.match_index + 1, snapshot_index + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next_index = self.match_index + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next_index = self.match_index + 1

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot

    def maybe_update(self, index: int) -> bool:
        """Records an acknowledged match at ``index``; False if it is stale."""
        updated = index > self.match_index
        if updated:
            self.match_index = index
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        return updated

    def optimistic_update(self, last_sent_index: int) -> None:
        self.next_index = last_sent_index + 1

    def maybe_decrease_to(self, rejected_index: int, match_hint_index: int) -> bool:
        """Handles a rejected append of ``rejected_index``; False if the rejection is stale.

        ``match_hint_index`` is the leader's guess of the last index the logs agree on,
        derived from the follower's conflict hint, so one round trip skips a whole term.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected_index <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected_index:
            return False
        self.next_index = max(min(rejected_index, match_hint_index + 1), self.match_index + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voter_count: int) -> int:
    return voter_count // 2 + 1


def quorum_min(values: list[int]) -> int:
    """The largest value that a quorum of ``values`` (one per voter) is at or above."""
    assert values, "no voters"
    ordered = sorted(values, reverse=True)
    return ordered[quorum_size(len(ordered)) - 1]


def tally_votes(voters: frozenset[NodeId], votes: dict[NodeId, bool]) -> VoteResult:
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    rejected = sum(1 for voter in voters if votes.get(voter) is False)
    needed = quorum_size(len(voters))
    if granted >= needed:
        return VoteResult.WON
    if len(voters) - rejected < needed:
        return VoteResult.LOST
    return VoteResult.PENDING
