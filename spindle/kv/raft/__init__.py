"""Raft core: a pure state machine with no I/O (etcd-io/raft's design). See rawnode.py."""

from spindle.kv.raft.config import (
    MAX_INFLIGHT_MSGS,
    MAX_MSG_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    Config,
)
from spindle.kv.raft.errors import (
    CompactedError,
    DropReason,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDateError,
    UnavailableError,
)
from spindle.kv.raft.rawnode import RawNode
from spindle.kv.raft.status import ProgressStatus, Status
from spindle.kv.raft.storage import MemoryStorage, Storage
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
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)

__all__ = [
    "MAX_INFLIGHT_MSGS",
    "MAX_MSG_BYTES",
    "NONE",
    "SNAPSHOT_CHUNK_BYTES",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "DropReason",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NodeId",
    "ProgressStatus",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "SoftState",
    "Status",
    "Storage",
    "UnavailableError",
]
