"""Configuration of one Raft replica, with the named bounds of the core."""

from __future__ import annotations

import dataclasses
import random

from spindle.kv.raft.types import NodeId

MAX_INFLIGHT_MSGS = 256
"""Append messages sent to one follower but not yet acknowledged (replicate state)."""
MAX_MSG_BYTES = 1 << 20
"""Payload bytes of entries in one append message (at least one entry is always sent)."""
SNAPSHOT_CHUNK_BYTES = 1 << 20
"""Snapshot bytes in one SNAP message."""
MAX_COMMITTED_BYTES_PER_READY = 8 << 20
"""Payload bytes of committed entries handed out in one Ready (at least one entry)."""
MAX_PROPOSAL_BYTES = 8 << 20
"""Largest single proposal accepted."""
MAX_PENDING_READS = 4096
"""ReadIndex requests waiting at a leader; beyond it new requests are dropped."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings of one replica. Times are in ticks; the caller decides a tick's length."""

    node_id: NodeId
    election_ticks: int = 10
    """Base election timeout; the actual one is random in [election_ticks, 2*election_ticks)."""
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = MAX_INFLIGHT_MSGS
    max_msg_bytes: int = MAX_MSG_BYTES
    snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
    max_committed_bytes_per_ready: int = MAX_COMMITTED_BYTES_PER_READY
    lease_margin_ticks: int = 1
    """Ticks subtracted from the leader lease to absorb clock drift between replicas."""
    applied_index: int = 0
    """Last index applied by the state machine, when restarting from storage."""
    seed: int = 0
    """Seeds the election-timeout RNG when ``rng`` is not given (deterministic runs)."""
    rng: random.Random | None = None

    def validate(self) -> None:
        assert self.node_id > 0, "node_id must be positive"
        assert self.heartbeat_ticks > 0
        assert self.election_ticks > self.heartbeat_ticks, "election must outlast heartbeats"
        assert self.max_inflight_msgs > 0
        assert self.max_msg_bytes > 0
        assert self.snapshot_chunk_bytes > 0
        assert 0 <= self.lease_margin_ticks < self.election_ticks
