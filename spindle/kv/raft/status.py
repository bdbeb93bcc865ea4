"""Read-only views of a replica's state, for tests, metrics and invariant checks."""

from __future__ import annotations

import dataclasses

from spindle.kv.raft.types import ConfState, NodeId, Role


@dataclasses.dataclass(frozen=True)
class ProgressStatus:
    """The leader's view of one peer's log."""

    match_index: int
    next_index: int
    state: str
    """"probe", "replicate" or "snapshot"."""
    inflight_msgs: int
    inflight_bytes: int
    is_learner: bool
    recent_active: bool


@dataclasses.dataclass(frozen=True)
class Status:
    """A snapshot of a replica's state, for tests, metrics and the simulator's invariant checks."""

    node_id: NodeId
    role: Role
    leader_id: NodeId
    term: int
    vote: NodeId
    commit_index: int
    applied_index: int
    last_index: int
    first_index: int
    conf_state: ConfState
    lead_transferee: NodeId
    progress: dict[NodeId, ProgressStatus]
    """Empty unless this replica is the leader."""
