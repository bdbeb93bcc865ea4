"""A simulated disk for one replica: writes land at once, survive a crash only once synced.

The replica reads and writes a ``MemoryStorage`` (the page-cache view). Every mutation is also
appended to an operation log in write batches (one per Ready, as a write-ahead log would
write a snapshot, entries and hard state in one record); ``sync()`` marks everything so far
durable. ``crash()`` keeps the synced batches plus a random prefix of the unsynced ones
(batches reach the platter in order, each atomically) and rebuilds the storage by replay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from spindle.kv.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot

__all__ = ["DiskOp", "SimDisk"]


@dataclass(frozen=True, slots=True)
class DiskOp:
    """One storage mutation, replayable onto a fresh ``MemoryStorage``."""

    kind: str  # "append" | "hard_state" | "apply_snapshot" | "create_snapshot" | "compact"
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    index: int = 0
    conf_state: ConfState | None = None
    data: bytes = b""


def _replay(storage: MemoryStorage, op: DiskOp) -> None:
    if op.kind == "append":
        storage.append(list(op.entries))
    elif op.kind == "hard_state":
        assert op.hard_state is not None
        storage.set_hard_state(op.hard_state)
    elif op.kind == "apply_snapshot":
        assert op.snapshot is not None
        storage.apply_snapshot(op.snapshot)
    elif op.kind == "create_snapshot":
        assert op.conf_state is not None
        storage.create_snapshot(op.index, op.conf_state, op.data)
    elif op.kind == "compact":
        storage.compact(op.index)
    else:
        raise AssertionError(f"unknown disk op {op.kind}")


class SimDisk:
    """Storage with an explicit durability boundary (see module docstring)."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self._batches: list[list[DiskOp]] = []
        self._open_batch: list[DiskOp] | None = None
        self._synced_batches = 0
        self.syncs = 0

    def begin_batch(self) -> None:
        """Groups the following writes into one atomic record until ``end_batch``."""
        assert self._open_batch is None, "nested write batch"
        self._open_batch = []

    def end_batch(self) -> None:
        assert self._open_batch is not None, "end_batch without begin_batch"
        if self._open_batch:
            self._batches.append(self._open_batch)
        self._open_batch = None

    def write(self, op: DiskOp) -> None:
        _replay(self.storage, op)
        if self._open_batch is not None:
            self._open_batch.append(op)
        else:
            self._batches.append([op])

    def append(self, entries: list[Entry]) -> None:
        if entries:
            self.write(DiskOp("append", entries=tuple(entries)))

    def set_hard_state(self, hard_state: HardState) -> None:
        self.write(DiskOp("hard_state", hard_state=hard_state))

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self.write(DiskOp("apply_snapshot", snapshot=snapshot))

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> None:
        self.write(DiskOp("create_snapshot", index=index, conf_state=conf_state, data=data))

    def compact(self, index: int) -> None:
        self.write(DiskOp("compact", index=index))

    def sync(self) -> None:
        assert self._open_batch is None, "sync inside a write batch"
        self._synced_batches = len(self._batches)
        self.syncs += 1

    @property
    def unsynced_batches(self) -> int:
        return len(self._batches) - self._synced_batches

    def durable_storage(self) -> MemoryStorage:
        """What a crash right now would certainly keep (for the durability invariant)."""
        storage = MemoryStorage()
        for batch in self._batches[: self._synced_batches]:
            for op in batch:
                _replay(storage, op)
        return storage

    def crash(self, rng: random.Random) -> int:
        """Loses a random suffix of the unsynced batches; returns how many were lost."""
        self._open_batch = None
        survivors = self._synced_batches + rng.randint(0, self.unsynced_batches)
        lost = len(self._batches) - survivors
        del self._batches[survivors:]
        self._synced_batches = len(self._batches)
        self.storage = MemoryStorage()
        for batch in self._batches:
            for op in batch:
                _replay(self.storage, op)
        return lost
