"""Raft safety invariants, checked incrementally as the simulation runs.

Each check is phrased over global ledgers the simulator builds from what replicas persist
and apply, so that one step costs time proportional to what changed, not to the log length:

- election safety: ``leader_by_term`` maps a term to the one node that led it;
- log matching: an entry is identified by (index, term); every replica that ever holds that
  pair must hold the same payload preceded by the same term. By induction on the index that
  is the Log Matching Property without comparing whole logs;
- the commit ledger: index -> term of every entry any replica reported committed. Two
  replicas committing different terms at one index is a violation;
- leader completeness: a new leader's log contains every ledger entry;
- state machine safety: index -> (term, payload) of every applied entry, shared by all;
- durability: every ledger entry is on the synced storage of a quorum (checked after
  crashes and at the end, since it needs a replay of each disk);
- per replica: applied <= committed <= last index, and commit never moves backwards
  within one incarnation (a restart may forget an unsynced commit index).
"""

from __future__ import annotations

from spindle.kv.raft import CompactedError, Entry, MemoryStorage, NodeId, UnavailableError

__all__ = ["InvariantViolation", "Invariants"]


class InvariantViolation(AssertionError):
    """A safety property failed; the message names it and the replicas involved."""


def _term_or_none(storage: MemoryStorage, index: int) -> int | None:
    try:
        return storage.term(index)
    except (CompactedError, UnavailableError):
        return None


class Invariants:
    def __init__(self, voters: tuple[NodeId, ...]) -> None:
        self.voters = voters
        self.quorum = len(voters) // 2 + 1
        self.leader_by_term: dict[int, NodeId] = {}
        self._entries: dict[tuple[int, int], tuple[bytes, int, int | None]] = {}
        self.committed: dict[int, int] = {}
        self.commit_max = 0
        self._applied: dict[int, tuple[int, bytes]] = {}
        self.checks = 0

    def _fail(self, message: str) -> None:
        raise InvariantViolation(message)

    def on_leader(self, node_id: NodeId, term: int) -> None:
        holder = self.leader_by_term.setdefault(term, node_id)
        if holder != node_id:
            self._fail(f"election safety: nodes {holder} and {node_id} both lead term {term}")

    def on_append(self, node_id: NodeId, entries: list[Entry], storage: MemoryStorage) -> None:
        """After ``entries`` were written to ``storage``: the log matching ledger."""
        for entry in entries:
            prev_term = _term_or_none(storage, entry.index - 1)
            identity = (entry.data, int(entry.type), prev_term)
            seen = self._entries.setdefault((entry.index, entry.term), identity)
            if seen[:2] != identity[:2] or (
                seen[2] is not None and prev_term is not None and seen[2] != prev_term
            ):
                self._fail(
                    f"log matching: node {node_id} holds entry index={entry.index} "
                    f"term={entry.term} as {identity!r}, another replica as {seen!r}"
                )
            if seen[2] is None and prev_term is not None:
                self._entries[(entry.index, entry.term)] = identity

    def on_commit(
        self, node_id: NodeId, commit_from: int, commit_to: int, storage: MemoryStorage
    ) -> None:
        """A replica's commit index moved from ``commit_from`` to ``commit_to``."""
        if commit_to > storage.last_index():
            self._fail(
                f"commit beyond log: node {node_id} commit={commit_to} "
                f"last_index={storage.last_index()}"
            )
        for index in range(max(commit_from + 1, storage.first_index() - 1), commit_to + 1):
            term = _term_or_none(storage, index)
            if term is None:
                continue
            known = self.committed.setdefault(index, term)
            if known != term:
                self._fail(
                    f"commit safety: node {node_id} committed term {term} at index {index}, "
                    f"another replica committed term {known}"
                )
        self.commit_max = max(self.commit_max, commit_to)

    def check_leader_completeness(self, node_id: NodeId, term: int, storage: MemoryStorage) -> None:
        """A leader's (persisted) log holds every committed entry of earlier terms."""
        snapshot_index = storage.first_index() - 1
        for index, committed_term in self.committed.items():
            if index < snapshot_index:
                continue
            held = _term_or_none(storage, index)
            if held != committed_term:
                self._fail(
                    f"leader completeness: node {node_id}, leader of term {term}, holds "
                    f"term {held} at committed index {index} (committed term {committed_term})"
                )

    def on_apply(self, node_id: NodeId, entry: Entry, expected_index: int) -> None:
        if entry.index != expected_index:
            self._fail(
                f"apply order: node {node_id} applied index {entry.index}, "
                f"expected {expected_index}"
            )
        identity = (entry.term, entry.data)
        seen = self._applied.setdefault(entry.index, identity)
        if seen != identity:
            self._fail(
                f"state machine safety: node {node_id} applied {identity!r} at index "
                f"{entry.index}, another replica applied {seen!r}"
            )
        committed_term = self.committed.get(entry.index)
        if committed_term is not None and committed_term != entry.term:
            self._fail(
                f"apply of uncommitted entry: node {node_id} applied term {entry.term} at "
                f"index {entry.index}, committed term is {committed_term}"
            )

    def applied_payloads(self) -> list[bytes]:
        """Payloads of every entry applied anywhere, in index order."""
        return [data for _, (_, data) in sorted(self._applied.items())]

    def on_snapshot_installed(self, node_id: NodeId, index: int, term: int) -> None:
        committed_term = self.committed.get(index)
        if committed_term is not None and committed_term != term:
            self._fail(
                f"snapshot safety: node {node_id} installed snapshot at index {index} "
                f"term {term}, committed term there is {committed_term}"
            )

    def check_replica(
        self,
        node_id: NodeId,
        applied: int,
        commit: int,
        last_index: int,
        commit_floor: int,
    ) -> None:
        """applied <= commit <= last index, and commit >= its earlier value this incarnation."""
        self.checks += 1
        if not applied <= commit <= last_index:
            self._fail(
                f"index order: node {node_id} applied={applied} commit={commit} "
                f"last_index={last_index}"
            )
        if commit < commit_floor:
            self._fail(f"commit regressed: node {node_id} commit {commit} < earlier {commit_floor}")

    def check_durability(self, durable: dict[NodeId, MemoryStorage]) -> None:
        """Each committed entry survives on the synced storage of a quorum."""
        for index, term in sorted(self.committed.items()):
            holders = [
                node_id
                for node_id, storage in durable.items()
                if storage.first_index() - 1 >= index or _term_or_none(storage, index) == term
            ]
            if len(holders) < self.quorum:
                self._fail(
                    f"durability: committed index {index} (term {term}) is durable only on "
                    f"{holders}, fewer than a quorum of {self.quorum}"
                )
