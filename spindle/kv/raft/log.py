"""The Raft log: stable storage below, not-yet-persisted (unstable) entries above.

Indexes: ``first_index() - 1`` is the compaction point (a snapshot's index) whose term is
still known; entries exist from ``first_index()`` to ``last_index()``.
"""

from __future__ import annotations

from spindle.kv.raft.errors import CompactedError, UnavailableError
from spindle.kv.raft.storage import Storage, limit_bytes
from spindle.kv.raft.types import Entry, Snapshot


class Unstable:
    """Entries (and possibly a snapshot) handed to the caller but not yet persisted."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        """Index of ``entries[0]``; everything below it is in storage (or the snapshot)."""

    def maybe_first_index(self) -> int | None:
        return self.snapshot.metadata.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.metadata.index if self.snapshot is not None else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == index:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        if index < self.offset or self.maybe_term(index) != term:
            return  # already persisted, or replaced by a newer leader's entries since
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            self.offset = after  # replaces entries already given to storage, too
            self.entries = list(entries)
        else:
            self.entries = self.entries[: after - self.offset] + entries

    def slice(self, lo: int, hi: int) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries)
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(offset=last + 1)
        self.committed = first - 1
        self.applied = first - 1
        """Highest index the application has applied (advance() moves it)."""

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # -- indexes and terms ----------------------------------------------------------------------

    def first_index(self) -> int:
        index = self.unstable.maybe_first_index()
        return index if index is not None else self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.maybe_last_index()
        return index if index is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """Term of ``index``, or None if it is compacted away or beyond the log."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- reading entries ------------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); raises CompactedError if lo is compacted."""
        if lo < self.first_index():
            raise CompactedError(f"index {lo} < first index {self.first_index()}")
        assert hi <= self.last_index() + 1, f"slice [{lo}, {hi}) beyond last {self.last_index()}"
        if lo >= hi:
            return []
        offset = self.unstable.offset
        entries: list[Entry] = []
        if lo < offset:
            stored_hi = min(hi, offset)
            entries = self.storage.entries(lo, stored_hi, max_bytes)
            if len(entries) < stored_hi - lo:
                return entries  # byte limit reached inside storage
        if hi > offset:
            entries = entries + self.unstable.slice(max(lo, offset), hi)
        return limit_bytes(entries, max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry] | None:
        """Entries from ``lo`` to the end, byte-limited; None if ``lo`` is compacted."""
        if lo < self.first_index():
            return None
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def unstable_snapshot(self) -> Snapshot | None:
        return self.unstable.snapshot

    def has_unstable(self) -> bool:
        return bool(self.unstable.entries) or self.unstable.snapshot is not None

    def _next_committed_range(self) -> tuple[int, int]:
        return max(self.applied + 1, self.first_index()), self.committed + 1

    def has_next_committed_entries(self) -> bool:
        lo, hi = self._next_committed_range()
        return lo < hi

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        lo, hi = self._next_committed_range()
        return self.slice(lo, hi, max_bytes) if lo < hi else []

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- changing the log -----------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        if entries:
            assert entries[0].index > self.committed, (
                f"overwriting committed entry {entries[0].index} <= {self.committed}"
            )
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry not already in our log (different term or new), or 0."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term.

        Used for fast backtracking: everything above the returned index is known to differ.
        A compacted index returns term 0 ("unknown").
        """
        while True:
            our_term = self.term(index)
            if our_term is None:
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Appends a leader's entries that follow (index, log_term); None if we lack that.

        Returns the last index known to match the leader's log.
        """
        if not self.match_term(index, log_term):
            return None
        last_new_index = index + len(entries)
        conflict_index = self.find_conflict(entries)
        if conflict_index != 0:
            assert conflict_index > self.committed, (
                f"leader's entry {conflict_index} conflicts with committed {self.committed}"
            )
            self.append(list(entries[conflict_index - index - 1 :]))
        self.commit_to(min(committed, last_new_index))
        return last_new_index

    def commit_to(self, index: int) -> None:
        """Raises the commit index to ``index`` (never lowers it)."""
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} beyond last index {self.last_index()}"
            )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commits up to ``index`` only if it is from ``term`` (the leader's current term).

        This is the Raft paper's figure 8 rule: entries of earlier terms commit only
        indirectly, by committing a later entry of the current term.
        """
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (
            f"applied {index} out of range [{self.applied}, {self.committed}]"
        )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        assert snapshot.metadata.index > self.committed
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)
