"""The storage engine interface every node writes through.

Writes are applied unsynced (visible at once) and made durable later by `sync()`, which a
node calls once per group of writes from a worker thread: the event loop never waits on an
fsync. Two implementations: `RocksEngine` (production) and `MemoryEngine` (tests; it can
simulate a crash that drops every write not yet synced).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Protocol


class CF(StrEnum):
    """Column families: each holds one kind of record, with its own key space."""

    DATA = "data"
    """User data of every shard: keyspace id (4 bytes) + internal key -> stored value."""
    LOG = "log"
    """Raft log entries and hard state per shard (used once shards replicate)."""
    META = "meta"
    """Catalog (tenants, keyspaces, shard map) and per-shard applied index."""
    TTL = "ttl"
    """Expiry index: keyspace id + expire_at_ms + internal key -> b'' (for the purger)."""


ALL_CFS: tuple[CF, ...] = (CF.DATA, CF.LOG, CF.META, CF.TTL)


class WriteBatch(Protocol):
    """An atomic group of writes across column families."""

    def put(self, cf: CF, key: bytes, value: bytes) -> None: ...

    def delete(self, cf: CF, key: bytes) -> None: ...

    def delete_range(self, cf: CF, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end)."""
        ...

    def __len__(self) -> int: ...


class Engine(Protocol):
    """Ordered byte key/value storage with column families and explicit durability."""

    def new_batch(self) -> WriteBatch: ...

    def write(self, batch: WriteBatch) -> None:
        """Apply the batch atomically, unsynced: readers see it at once; `sync` makes it
        durable. Cheap enough to call on the event loop."""
        ...

    def sync(self) -> None:
        """Block until every write made before the call is durable. Call from a thread."""
        ...

    def get(self, cf: CF, key: bytes) -> bytes | None: ...

    def scan(
        self, cf: CF, start: bytes, end: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for start <= key < end (end None: unbounded), ascending, or
        descending when `reverse`."""
        ...

    def approximate_bytes(self) -> int:
        """Rough size of live data, for status pages."""
        ...

    def close(self) -> None: ...
