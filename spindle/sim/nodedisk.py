"""A simulated node's disk: the engine outlives the process, unsynced writes may not.

``SimDisk`` is a ``MemoryEngine`` that survives crashes of the node process using it. A
crash keeps every synced write and a random prefix of the unsynced ones (write batches
reach the platter in order, each atomically, as a write-ahead log's records do), which is
harsher than losing all of them: a vote or a log entry that was never acknowledged may or
may not come back.

Each incarnation of the process gets its own ``ProcessEngine`` handle. Once the incarnation
is dead its handle ignores writes and syncs, so nothing a dead process left half-done (a
coroutine finalized late) can touch the disk its successor uses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from spindle.kv.storage import CF, MemoryEngine, WriteBatch
from spindle.kv.storage.memory import MemoryBatch

__all__ = ["ProcessEngine", "SimDisk"]


class SimDisk:
    """The durable side of one simulated machine (see module docstring)."""

    def __init__(self, node_id: int = 0) -> None:
        self.node_id = node_id
        self.engine = MemoryEngine()
        self._unsynced: list[MemoryBatch] = []
        self.crashes = 0
        self.batches_lost = 0

    def write(self, batch: MemoryBatch) -> None:
        self.engine.write(batch)
        self._unsynced.append(batch)

    def sync(self) -> None:
        self.engine.sync()
        self._unsynced = []

    def handle(self) -> ProcessEngine:
        return ProcessEngine(self)

    def crash(self, rng: random.Random) -> tuple[int, int]:
        """Power cut: keep a random prefix of the unsynced batches. Returns (kept, lost)."""
        pending = self._unsynced
        kept = rng.randint(0, len(pending))
        self.engine.crash()
        self._unsynced = []
        for batch in pending[:kept]:
            self.engine.write(batch)
        self.engine.sync()
        self.crashes += 1
        self.batches_lost += len(pending) - kept
        return kept, len(pending) - kept


class ProcessEngine:
    """The ``Engine`` one incarnation of a node writes through."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self.dead = False

    def new_batch(self) -> MemoryBatch:
        return MemoryBatch()

    def write(self, batch: WriteBatch) -> None:
        assert isinstance(batch, MemoryBatch), "a batch from another engine"
        if not self.dead:
            self.disk.write(batch)

    def sync(self) -> None:
        if not self.dead:
            self.disk.sync()

    def get(self, cf: CF, key: bytes) -> bytes | None:
        return self.disk.engine.get(cf, key)

    def scan(
        self, cf: CF, start: bytes, end: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return self.disk.engine.scan(cf, start, end, reverse=reverse)

    def approximate_bytes(self) -> int:
        return self.disk.engine.approximate_bytes()

    def close(self) -> None:
        pass
