"""Configuration of one Raft replica, with the named bounds of the core."""

from __future__ import annotations

import dataclasses
import math
import random

from spindle.kv.raft.types import NodeId

MAX_INFLIGHT_MSGS = 256
"""Append messages sent to one follower but not yet acknowledged (replicate state)."""
MAX_INFLIGHT_BYTES = 32 << 20
"""Payload bytes of append messages sent to one follower but not yet acknowledged: a
follower catching up is streamed its backlog in windows of this size, not up to
MAX_INFLIGHT_MSGS x MAX_MSG_BYTES (256 MiB) at once."""
MAX_MSG_BYTES = 1 << 20
"""Payload bytes of entries in one append message (at least one entry is always sent)."""
SNAPSHOT_CHUNK_BYTES = 1 << 20
"""Snapshot bytes in one SNAP message."""
MAX_COMMITTED_BYTES_PER_READY = 8 << 20
"""Payload bytes of committed entries handed out in one Ready (at least one entry)."""
MAX_PROPOSAL_BYTES = 8 << 20
"""Largest single proposal accepted."""
MAX_PENDING_READS = 4096
"""ReadIndex requests waiting at a leader (for a quorum round or for the leader's first commit
in its term); beyond it new requests are refused: ``ReadDropped`` locally, and a forwarded
request comes back to its follower in ``Ready.dropped_reads``."""

# -- leader lease: the clock assumptions ---------------------------------------------------------
#
# A follower that hears from the leader refuses (non-transfer) votes for ``election_ticks`` of
# its own ticks. The leader, measuring in its own ticks from the send tick of a message a quorum
# acknowledged, may serve lease reads for ``election_ticks - margin`` ticks. That is safe only
# while the margin covers (a) tick granularity: a message sent late in leader tick T may be
# received just before a follower tick, so the follower's hold is only ``election_ticks - 1``
# whole periods; and (b) rate drift: a follower's ticks may run faster than the leader's.
# The caller must drive ticks from a monotonic clock and deliver missed ticks (after a pause, a
# GC stall, a stopped process) before asking for lease reads; a leader whose ticks stall
# believes its lease lasts forever. Without check_quorum there is no lease at all.

LEASE_TICK_GRANULARITY_TICKS = 1
"""Lease margin for tick quantisation alone (perfectly matched clocks)."""
MAX_CLOCK_DRIFT_RATIO = 0.05
"""Assumed bound on how much faster any replica's tick clock runs than the leader's (5%).

Quartz clocks drift by ~1e-4; the rest is headroom for tick scheduling jitter. A deployment
whose clocks may be worse must raise ``Config.max_clock_drift_ratio``.
"""


def lease_margin_ticks_min(election_ticks: int, max_clock_drift_ratio: float) -> int:
    """The smallest lease margin that is safe under the given drift bound.

    The follower's hold lasts at least ``(election_ticks - 1)`` of its periods, which may be
    ``1 + drift`` times shorter than the leader's; the lease of ``election_ticks - margin``
    leader periods must fit inside: ``margin >= election_ticks - (election_ticks - 1) / (1 +
    drift)``.
    """
    assert election_ticks > 0 and max_clock_drift_ratio >= 0
    hold_leader_ticks = (election_ticks - LEASE_TICK_GRANULARITY_TICKS) / (
        1 + max_clock_drift_ratio
    )
    return max(LEASE_TICK_GRANULARITY_TICKS, math.ceil(election_ticks - hold_leader_ticks - 1e-9))


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
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    max_msg_bytes: int = MAX_MSG_BYTES
    snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
    max_committed_bytes_per_ready: int = MAX_COMMITTED_BYTES_PER_READY
    lease_margin_ticks: int = LEASE_TICK_GRANULARITY_TICKS
    """Ticks subtracted from the leader lease; raised to ``lease_margin_ticks_min`` if lower."""
    max_clock_drift_ratio: float = MAX_CLOCK_DRIFT_RATIO
    """Assumed bound on clock rate drift between replicas; sizes the lease margin."""
    max_pending_reads: int = MAX_PENDING_READS
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
        assert self.max_inflight_bytes > 0
        assert self.max_msg_bytes > 0
        assert self.snapshot_chunk_bytes > 0
        assert 0 <= self.lease_margin_ticks < self.election_ticks
        assert self.max_clock_drift_ratio >= 0
        assert self.max_pending_reads > 0

    def effective_lease_margin_ticks(self) -> int:
        """The margin the lease really uses: the configured one, never below the safe one."""
        return max(
            self.lease_margin_ticks,
            lease_margin_ticks_min(self.election_ticks, self.max_clock_drift_ratio),
        )
