"""One engine write per group commit: the writes of many requests gathered into one batch.

`BatchingEngine` wraps an engine. `write` only queues a batch's operations (and remembers
the data-family values in an overlay, so that reads see them at once); `flush` hands all
queued operations to the engine as one write batch. The group committer flushes right
before each fsync, so a group of N requests costs one engine write instead of N (the
design's "one engine write batch, one fsync"). Within the group only the last write of each
key reaches the engine (the write is atomic, so nothing could observe the earlier ones):
each entry's applied-index record, rewritten by every entry of a shard, costs one engine
write per group instead of one per entry. Scans and reads of other families flush first, so
they never miss a queued write. Memory is bounded by the group: what arrives while one
fsync runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from spindle.kv.storage.engine import CF, Engine, WriteBatch

_Op = tuple[int, CF, bytes, bytes]
_PUT, _DELETE, _DELETE_RANGE = 0, 1, 2


class QueuedBatch:
    """Operations kept as plain tuples until the flush."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def put(self, cf: CF, key: bytes, value: bytes) -> None:
        self.ops.append((_PUT, cf, key, value))

    def delete(self, cf: CF, key: bytes) -> None:
        self.ops.append((_DELETE, cf, key, b""))

    def delete_range(self, cf: CF, start: bytes, end: bytes) -> None:
        self.ops.append((_DELETE_RANGE, cf, start, end))

    def __len__(self) -> int:
        return len(self.ops)


class BatchingEngine:
    """An `Engine` that turns many small writes into one engine write per flush."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self._queued: dict[tuple[CF, bytes], tuple[int, bytes]] = {}
        """(family, key) -> (kind, value) of the last queued write of each key."""
        self._overlay: dict[bytes, bytes | None] = {}
        """Data-family keys written since the last flush: value, or None if deleted."""
        self.flushes = 0

    def new_batch(self) -> QueuedBatch:
        return QueuedBatch()

    def write(self, batch: WriteBatch) -> None:
        assert isinstance(batch, QueuedBatch), "a batch from another engine"
        overlay = self._overlay
        queued = self._queued
        ops = batch.ops
        for kind, cf, key, value in ops:
            if kind == _DELETE_RANGE:
                # A range cannot live in the overlay (nor be coalesced): write what is
                # queued (this batch's ops before the range too: rewritten below, no
                # harm), then the whole batch in its own order.
                self.flush()
                self._write_through(ops)
                return
            if cf is CF.DATA:
                overlay[key] = value if kind == _PUT else None
            queued[cf, key] = (kind, value)

    def flush(self) -> None:
        """Hand every queued operation to the engine as one atomic write."""
        if not self._queued:
            return
        batch = self.inner.new_batch()
        put = batch.put
        delete = batch.delete
        for (cf, key), (kind, value) in self._queued.items():
            if kind == _PUT:
                put(cf, key, value)
            else:
                delete(cf, key)
        self.inner.write(batch)
        self._queued = {}
        self._overlay = {}
        self.flushes += 1

    def _write_through(self, ops: list[_Op]) -> None:
        batch = self.inner.new_batch()
        for kind, cf, key, value in ops:
            if kind == _PUT:
                batch.put(cf, key, value)
            elif kind == _DELETE:
                batch.delete(cf, key)
            else:
                batch.delete_range(cf, key, value)
        self.inner.write(batch)
        self._overlay = {}
        self.flushes += 1

    @property
    def queued(self) -> int:
        return len(self._queued)

    def sync(self) -> None:
        """Make flushed writes durable. The caller flushes first, on its own thread."""
        self.inner.sync()

    def get(self, cf: CF, key: bytes) -> bytes | None:
        if self._queued:
            if cf is CF.DATA:
                if key in self._overlay:
                    return self._overlay[key]
            else:
                self.flush()
        return self.inner.get(cf, key)

    def scan(
        self, cf: CF, start: bytes, end: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        self.flush()
        return self.inner.scan(cf, start, end, reverse=reverse)

    def approximate_bytes(self) -> int:
        return self.inner.approximate_bytes()

    def close(self) -> None:
        self.flush()
        self.inner.close()
