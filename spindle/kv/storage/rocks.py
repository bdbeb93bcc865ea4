"""RocksDB engine via rocksdict, in raw (bytes) mode, one column family per `CF`."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import rocksdict

from spindle.kv.storage.engine import ALL_CFS, CF, WriteBatch

WRITE_BUFFER_BYTES = 32 * 1024 * 1024
"""Memtable size per column family; bounds unflushed memory together with the count below."""
MAX_WRITE_BUFFERS = 3
BLOCK_CACHE_BYTES = 64 * 1024 * 1024
"""Shared block cache: bounds the engine's read-side memory."""


def _options() -> Any:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
    opts.set_max_background_jobs(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(BLOCK_CACHE_BYTES))
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


class RocksBatch:
    """A rocksdict WriteBatch addressed by `CF`."""

    __slots__ = ("_batch", "_handles")

    def __init__(self, handles: dict[CF, Any]) -> None:
        self._batch = rocksdict.WriteBatch(raw_mode=True)
        self._handles = handles

    def put(self, cf: CF, key: bytes, value: bytes) -> None:
        self._batch.put(key, value, self._handles[cf])

    def delete(self, cf: CF, key: bytes) -> None:
        self._batch.delete(key, self._handles[cf])

    def delete_range(self, cf: CF, start: bytes, end: bytes) -> None:
        self._batch.delete_range(start, end, self._handles[cf])

    def __len__(self) -> int:
        return int(self._batch.len())


class RocksEngine:
    """Production engine. Writes use sync=False; `sync()` is one `flush_wal(True)`, which
    releases the GIL, so a thread can fsync while the event loop keeps serving."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        opts = _options()
        existing = set(rocksdict.Rdict.list_cf(path, opts)) if _db_exists(path) else set()
        column_families: dict[str, Any] = {
            cf.value: _options() for cf in ALL_CFS if cf.value in existing
        }
        self._db: Any = rocksdict.Rdict(path, opts, column_families=column_families or None)
        self._cfs: dict[CF, Any] = {}
        self._handles: dict[CF, Any] = {}
        for cf in ALL_CFS:
            if cf.value not in existing:
                self._db.create_column_family(cf.value, _options())
            self._cfs[cf] = self._db.get_column_family(cf.value)
            self._handles[cf] = self._db.get_column_family_handle(cf.value)
        write_opts = rocksdict.WriteOptions()
        write_opts.sync = False
        self._write_opts = write_opts
        self.path = path

    def new_batch(self) -> RocksBatch:
        return RocksBatch(self._handles)

    def write(self, batch: WriteBatch) -> None:
        assert isinstance(batch, RocksBatch), "a batch from another engine"
        self._db.write(batch._batch, self._write_opts)

    def sync(self) -> None:
        self._db.flush_wal(True)

    def get(self, cf: CF, key: bytes) -> bytes | None:
        value: bytes | None = self._cfs[cf].get(key)
        return value

    def scan(
        self, cf: CF, start: bytes, end: bytes | None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        it = self._cfs[cf].iter()
        if not reverse:
            it.seek(start)
            while it.valid():
                key: bytes = it.key()
                if end is not None and key >= end:
                    return
                yield key, it.value()
                it.next()
        else:
            if end is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(end)
                if it.valid() and it.key() >= end:
                    it.prev()
            while it.valid():
                key = it.key()
                if key < start:
                    return
                yield key, it.value()
                it.prev()

    def approximate_bytes(self) -> int:
        total = 0
        for cf in ALL_CFS:
            size = self._cfs[cf].property_int_value("rocksdb.estimate-live-data-size")
            total += int(size or 0)
        return total

    def close(self) -> None:
        """Close the database. Column-family objects keep the DB lock alive, so every
        reference is dropped and collected before returning."""
        if self._db is None:
            return
        self._db.flush_wal(True)
        self._db.close()
        self._cfs.clear()
        self._handles.clear()
        self._db = None
        gc.collect()


def _db_exists(path: str) -> bool:
    return os.path.exists(os.path.join(path, "CURRENT"))
