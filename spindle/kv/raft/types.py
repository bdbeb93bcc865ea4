"""Wire and persistence types of the Raft core.

Everything here is a frozen ``msgspec.Struct`` so it can be sent over the wire and written to
disk with msgspec msgpack unchanged. Node ids are positive ints; ``NONE`` (0) means "no node".
"""

from __future__ import annotations

import enum

import msgspec

NodeId = int
NONE: NodeId = 0
"""The absent node id: no leader known, no vote cast."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1
    """``data`` is a msgpack-encoded :class:`ConfChange`."""


class Entry(msgspec.Struct, frozen=True):
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True):
    """What must be on stable storage before any message of the same Ready is sent."""

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0


class ConfState(msgspec.Struct, frozen=True):
    """Membership: voters count towards quorums; learners only receive the log."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    """Adds a new voter, or promotes an existing learner to voter."""
    REMOVE_NODE = 1
    """Removes a voter or a learner."""
    ADD_LEARNER = 2


class ConfChange(msgspec.Struct, frozen=True):
    """One membership change; at most one is pending (proposed but not applied) at a time."""

    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        return msgspec.msgpack.decode(data, type=ConfChange)


class SnapshotMetadata(msgspec.Struct, frozen=True):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, frozen=True):
    """State machine image up to ``metadata.index``; ``data`` is opaque application bytes."""

    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


class MessageType(enum.IntEnum):
    APP = 0
    """Append entries (leader -> follower); also probes the follower's log."""
    APP_RESP = 1
    HEARTBEAT = 2
    HEARTBEAT_RESP = 3
    VOTE = 4
    VOTE_RESP = 5
    PRE_VOTE = 6
    PRE_VOTE_RESP = 7
    SNAP = 8
    """One chunk of a snapshot (leader -> follower)."""
    SNAP_RESP = 9
    """Acknowledges snapshot bytes received so far (``index`` = bytes held, or rejects)."""
    TIMEOUT_NOW = 10
    """Leadership transfer: the recipient campaigns at once, bypassing PreVote and leases."""
    READ_INDEX = 11
    """A follower forwards a ReadIndex request to the leader (``context`` = request ctx)."""
    READ_INDEX_RESP = 12


class Message(msgspec.Struct, frozen=True):
    """A Raft message. Fields unused by a given ``type`` keep their defaults.

    - APP: ``index``/``log_term`` identify the entry preceding ``entries``; ``commit``.
    - APP_RESP: ``index`` = last index matched (accept) or rejected probe index (reject);
      on reject ``reject_hint_index``/``reject_hint_term`` let the leader skip a whole term.
    - VOTE/PRE_VOTE: ``index``/``log_term`` = candidate's last entry; ``context`` = b"transfer"
      when the campaign follows TIMEOUT_NOW.
    - HEARTBEAT(_RESP): ``commit``; ``context`` carries a ReadIndex round id, echoed back.
    - SNAP: ``snapshot`` metadata, ``snapshot_offset_bytes``, ``snapshot_chunk``,
      ``snapshot_done``. SNAP_RESP: ``index`` = bytes received so far, ``reject`` to restart.
    - READ_INDEX_RESP: ``index`` = read index, ``context`` = request ctx; ``reject`` = the
      leader refused the read (MAX_PENDING_READS), reported in ``Ready.dropped_reads``.
    - ``sent_tick``: the sender's tick counter, echoed in responses; the leader lease uses it.
    """

    type: MessageType
    src: NodeId
    dst: NodeId
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint_index: int = 0
    reject_hint_term: int = 0
    context: bytes = b""
    sent_tick: int = 0
    snapshot: SnapshotMetadata | None = None
    snapshot_offset_bytes: int = 0
    snapshot_chunk: bytes = b""
    snapshot_done: bool = False


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class SoftState(msgspec.Struct, frozen=True):
    """Volatile state worth reporting when it changes; need not be persisted."""

    leader_id: NodeId = NONE
    role: Role = Role.FOLLOWER


class ReadState(msgspec.Struct, frozen=True):
    """A linearizable read may be served once the application has applied ``index``."""

    index: int
    request_ctx: bytes


class Ready(msgspec.Struct):
    """Work for the caller, to be done in this order, then ``RawNode.advance()``:

    1. persist ``snapshot`` (if any), append ``entries``, persist ``hard_state`` (if any),
       fsync if ``must_sync``;
    2. send ``messages``;
    3. apply ``snapshot`` to the state machine, then apply ``committed_entries`` in order
       (for CONF_CHANGE entries call ``RawNode.apply_conf_change``);
    4. serve reads in ``read_states`` once their ``index`` is applied; fail those in
       ``dropped_reads``.

    Inputs (``step``, ``tick``, ``propose``, ``read_index``, ...) may be given between
    ``ready()`` and ``advance()``; their output waits for the next Ready.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = msgspec.field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    read_states: list[ReadState] = msgspec.field(default_factory=list)
    must_sync: bool = False
    dropped_reads: list[bytes] = msgspec.field(default_factory=list)
    """Request contexts of this node's forwarded reads that the leader refused (too many
    pending reads): answer them with an error at once rather than letting them time out."""

    def is_empty(self) -> bool:
        return (
            self.soft_state is None
            and self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.read_states
            and not self.dropped_reads
        )
