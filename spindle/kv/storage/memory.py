"""In-memory engine for tests and simulation. It keeps what was synced apart from what was
only written, so `crash()` can drop unsynced writes the way a power cut would."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from spindle.kv.storage.engine import ALL_CFS, CF, WriteBatch

_Op = tuple[str, CF, bytes, bytes]


class MemoryBatch:
    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def put(self, cf: CF, key: bytes, value: bytes) -> None:
        self.ops.append(("put", cf, key, value))

    def delete(self, cf: CF, key: bytes) -> None:
        self.ops.append(("del", cf, key, b""))

    def delete_range(self, cf: CF, start: bytes, end: bytes) -> None:
        self.ops.append(("delrange", cf, start, end))

    def __len__(self) -> int:
        return len(self.ops)


class _Table:
    """A sorted map of bytes to bytes (dict plus sorted key list)."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.values:
            bisect.insort(self.keys, key)
        self.values[key] = value

    def delete(self, key: bytes) -> None:
        if self.values.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]

    def delete_range(self, start: bytes, end: bytes) -> None:
        lo = bisect.bisect_left(self.keys, start)
        hi = bisect.bisect_left(self.keys, end)
        for key in self.keys[lo:hi]:
            del self.values[key]
        del self.keys[lo:hi]

    def copy(self) -> _Table:
        table = _Table()
        table.values = dict(self.values)
        table.keys = list(self.keys)
        return table


class MemoryEngine:
    """`Engine` in memory. `synced_writes` counts batches made durable, for tests."""

    def __init__(self) -> None:
        self._live = {cf: _Table() for cf in ALL_CFS}
        self._durable = {cf: _Table() for cf in ALL_CFS}
        self._unsynced: list[MemoryBatch] = []
        self.synced_writes = 0
        self.sync_calls = 0

    def new_batch(self) -> MemoryBatch:
        return MemoryBatch()

    def write(self, batch: WriteBatch) -> None:
        assert isinstance(batch, MemoryBatch), "a batch from another engine"
        _apply(self._live, batch)
        self._unsynced.append(batch)

    def sync(self) -> None:
        self.sync_calls += 1
        pending, self._unsynced = self._unsynced, []
        for batch in pending:
            _apply(self._durable, batch)
        self.synced_writes += len(pending)

    def crash(self) -> None:
        """Lose every write not yet synced, as a machine losing power would."""
        self._unsynced = []
        self._live = {cf: table.copy() for cf, table in self._durable.items()}

    @property
    def unsynced_batches(self) -> int:
        return len(self._unsynced)

    def get(self, cf: CF, key: bytes) -> bytes | None:
        return self._live[cf].values.get(key)

    def scan(
        self, cf: CF, start: bytes, end: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        table = self._live[cf]
        lo = bisect.bisect_left(table.keys, start)
        hi = len(table.keys) if end is None else bisect.bisect_left(table.keys, end)
        keys = table.keys[lo:hi]
        if reverse:
            keys.reverse()
        for key in keys:
            value = table.values.get(key)
            if value is not None:
                yield key, value

    def approximate_bytes(self) -> int:
        return sum(len(k) + len(v) for t in self._live.values() for k, v in t.values.items())

    def close(self) -> None:
        pass


def _apply(tables: dict[CF, _Table], batch: MemoryBatch) -> None:
    for op, cf, key, value in batch.ops:
        table = tables[cf]
        if op == "put":
            table.put(key, value)
        elif op == "del":
            table.delete(key)
        else:
            table.delete_range(key, value)
