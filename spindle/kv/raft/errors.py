"""Errors raised by the Raft core and its storage."""

from __future__ import annotations

import enum

from spindle.kv.raft.types import NONE, NodeId


class RaftError(Exception):
    """Base of every error the Raft core raises."""


class DropReason(enum.Enum):
    NO_LEADER = "no leader known"
    NOT_LEADER = "this node is not the leader"
    TRANSFERRING_LEADERSHIP = "leadership transfer in progress"
    CONF_CHANGE_PENDING = "a membership change is already pending"
    NOT_A_MEMBER = "this node is not a voter of the group"
    TOO_LARGE = "proposal exceeds MAX_PROPOSAL_BYTES"
    INVALID_CONF_CHANGE = "membership change is not valid for the current config"
    TOO_MANY_PENDING_READS = "too many reads are waiting at the leader (MAX_PENDING_READS)"


class ProposalDropped(RaftError):
    """The proposal was not appended to the log; the caller may retry (at ``leader_id``).

    ``leader_id`` is a hint: for NOT_LEADER the leader this replica last heard from (the
    caller routes the request there: the core never forwards proposals); for
    TRANSFERRING_LEADERSHIP the transfer's target; otherwise this node or ``NONE``.
    ``detail`` says what exactly was wrong (e.g. which member a change names).
    """

    def __init__(self, reason: DropReason, leader_id: NodeId = NONE, detail: str = "") -> None:
        what = f"{reason.value}: {detail}" if detail else reason.value
        super().__init__(f"proposal dropped: {what} (leader hint: {leader_id})")
        self.reason = reason
        self.leader_id = leader_id
        self.detail = detail


class ReadDropped(RaftError):
    """A read request was refused at once (``reason``); the caller may retry later."""

    def __init__(self, reason: DropReason, leader_id: NodeId = NONE) -> None:
        super().__init__(f"read dropped: {reason.value} (leader hint: {leader_id})")
        self.reason = reason
        self.leader_id = leader_id


class CompactedError(RaftError):
    """The requested index precedes the storage's first index (it is in a snapshot)."""


class UnavailableError(RaftError):
    """The requested index is beyond the storage's last index."""


class SnapshotOutOfDateError(RaftError):
    """A snapshot older than the one already held was offered."""
