"""Stable log storage the core reads from, and an in-memory implementation.

The application writes to storage (entries, hard state, snapshots) while handling a Ready; the
core only reads it. ``MemoryStorage`` is a pure data structure: a real node wraps it with a
durable write-ahead log, the simulator with a crashable disk.
"""

from __future__ import annotations

from typing import Protocol

from spindle.kv.raft.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from spindle.kv.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


class Storage(Protocol):
    """What the core needs from stable storage. Indexes are 1-based log indexes."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi); at least one if the range is non-empty, then up to max_bytes."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index``; valid for first_index()-1 .. last_index()."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def entry_bytes(entry: Entry) -> int:
    """Approximate wire size of an entry, for byte limits."""
    return len(entry.data) + 24


def limit_bytes(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within max_bytes, but never fewer than one entry."""
    if max_bytes is None or not entries:
        return entries
    total_bytes = 0
    for i, entry in enumerate(entries):
        total_bytes += entry_bytes(entry)
        if total_bytes > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """Log entries, hard state and the latest snapshot, held in memory.

    ``_entries[0]`` is a dummy entry at the snapshot's index and term so term lookups at the
    compaction point work without special cases.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- read side (Storage protocol) --------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} < compaction point {offset}")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} > last index {self.last_index()}")
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} <= compaction point {offset}")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} > last index {self.last_index()}")
        return limit_bytes(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- write side (used by the application while handling a Ready) -----------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replaces the whole log with ``snapshot`` (a follower installing the leader's)."""
        if snapshot.metadata.index < self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot {snapshot.metadata.index} < held {self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.metadata.term, index=snapshot.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Records the application's state machine image at applied ``index``."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot {index} <= held {self._snapshot.metadata.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot {index} > last index {self.last_index()}")
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(metadata=metadata, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discards entries up to and including ``index`` (callers snapshot first)."""
        offset = self._entries[0].index
        if index <= offset:
            raise CompactedError(f"index {index} <= compaction point {offset}")
        if index > self.last_index():
            raise UnavailableError(f"compact {index} > last index {self.last_index()}")
        keep = self._entries[index - offset :]
        self._entries = [Entry(term=keep[0].term, index=index), *keep[1:]]

    def append(self, entries: list[Entry]) -> None:
        """Appends entries, replacing any conflicting suffix; entries must be contiguous."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # wholly compacted already
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        assert entries[0].index <= self.last_index() + 1, "append leaves a gap in the log"
        offset = self._entries[0].index
        del self._entries[entries[0].index - offset :]
        self._entries.extend(entries)
