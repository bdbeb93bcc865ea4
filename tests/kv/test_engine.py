"""Both engines honour one contract; the memory engine also simulates crashes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spindle.kv.storage import CF, Engine, MemoryEngine, RocksEngine


@pytest.fixture(params=["rocks", "memory"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng: Engine = RocksEngine(str(tmp_path / "db")) if request.param == "rocks" else MemoryEngine()
    try:
        yield eng
    finally:
        eng.close()


def put_all(engine: Engine, cf: CF, items: dict[bytes, bytes]) -> None:
    batch = engine.new_batch()
    for key, value in items.items():
        batch.put(cf, key, value)
    engine.write(batch)


def test_put_get_delete(engine: Engine) -> None:
    put_all(engine, CF.DATA, {b"a": b"1", b"b": b"2"})
    assert engine.get(CF.DATA, b"a") == b"1"
    assert engine.get(CF.META, b"a") is None, "column families are separate"
    batch = engine.new_batch()
    batch.delete(CF.DATA, b"a")
    assert len(batch) == 1
    engine.write(batch)
    assert engine.get(CF.DATA, b"a") is None
    assert engine.get(CF.DATA, b"b") == b"2"


def test_scan_forward_reverse_bounds(engine: Engine) -> None:
    put_all(engine, CF.DATA, {bytes([c]): bytes([c]) for c in b"abcdef"})
    assert [k for k, _ in engine.scan(CF.DATA, b"b", b"e")] == [b"b", b"c", b"d"]
    assert [k for k, _ in engine.scan(CF.DATA, b"b", b"e", reverse=True)] == [b"d", b"c", b"b"]
    assert [k for k, _ in engine.scan(CF.DATA, b"", None, reverse=True)][:2] == [b"f", b"e"]
    assert [k for k, _ in engine.scan(CF.DATA, b"e", None)] == [b"e", b"f"]
    assert list(engine.scan(CF.DATA, b"x", None)) == []


def test_delete_range(engine: Engine) -> None:
    put_all(engine, CF.DATA, {bytes([c]): b"v" for c in b"abcdef"})
    batch = engine.new_batch()
    batch.delete_range(CF.DATA, b"b", b"e")
    engine.write(batch)
    assert [k for k, _ in engine.scan(CF.DATA, b"", None)] == [b"a", b"e", b"f"]


def test_batch_is_atomic_across_families(engine: Engine) -> None:
    batch = engine.new_batch()
    batch.put(CF.DATA, b"k", b"v")
    batch.put(CF.META, b"applied", b"1")
    engine.write(batch)
    engine.sync()
    assert engine.get(CF.DATA, b"k") == b"v"
    assert engine.get(CF.META, b"applied") == b"1"


def test_rocks_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    engine = RocksEngine(path)
    put_all(engine, CF.DATA, {b"k": b"v"})
    put_all(engine, CF.TTL, {b"t": b""})
    engine.sync()
    engine.close()
    reopened = RocksEngine(path)
    try:
        assert reopened.get(CF.DATA, b"k") == b"v"
        assert reopened.get(CF.TTL, b"t") == b""
    finally:
        reopened.close()


def test_memory_crash_drops_only_unsynced() -> None:
    engine = MemoryEngine()
    put_all(engine, CF.DATA, {b"durable": b"1"})
    engine.sync()
    put_all(engine, CF.DATA, {b"lost": b"2"})
    batch = engine.new_batch()
    batch.delete(CF.DATA, b"durable")
    engine.write(batch)
    assert engine.get(CF.DATA, b"lost") == b"2"
    assert engine.unsynced_batches == 2
    engine.crash()
    assert engine.get(CF.DATA, b"lost") is None
    assert engine.get(CF.DATA, b"durable") == b"1"
    assert engine.synced_writes == 1


def test_batching_engine_reads_its_queued_writes_and_flushes_once() -> None:
    from spindle.kv.storage.batching import BatchingEngine

    inner = MemoryEngine()
    put_all(inner, CF.DATA, {b"old": b"1", b"gone": b"2"})
    engine = BatchingEngine(inner)
    for key, value in ((b"a", b"x"), (b"b", b"y")):
        batch = engine.new_batch()
        batch.put(CF.DATA, key, value)
        batch.put(CF.META, b"applied", value)
        engine.write(batch)
    batch = engine.new_batch()
    batch.delete(CF.DATA, b"gone")
    engine.write(batch)
    assert engine.get(CF.DATA, b"a") == b"x", "queued writes are visible at once"
    assert engine.get(CF.DATA, b"gone") is None
    assert engine.get(CF.DATA, b"old") == b"1"
    assert inner.get(CF.DATA, b"a") is None, "nothing reached the engine yet"
    assert engine.queued == 4, "the applied record written twice is queued once"
    assert engine.get(CF.META, b"applied") == b"y", "other families flush first"
    assert inner.get(CF.DATA, b"a") == b"x" and engine.flushes == 1
    assert inner.unsynced_batches == 2, "one engine write for the whole group"


def test_batching_engine_keeps_the_last_write_of_a_key_and_orders_ranges() -> None:
    from spindle.kv.storage.batching import BatchingEngine

    inner = MemoryEngine()
    engine = BatchingEngine(inner)
    for ops in (
        [("put", b"k", b"1")],
        [("del", b"k", b"")],
        [("put", b"k", b"2"), ("put", b"j", b"1")],
        [("del", b"j", b"")],
    ):
        batch = engine.new_batch()
        for kind, key, value in ops:
            if kind == "put":
                batch.put(CF.DATA, key, value)
            else:
                batch.delete(CF.DATA, key)
        engine.write(batch)
    assert engine.queued == 2
    engine.flush()
    assert inner.get(CF.DATA, b"k") == b"2" and inner.get(CF.DATA, b"j") is None
    # A range in a batch is applied in the batch's order: before a later put, after an
    # earlier one.
    batch = engine.new_batch()
    batch.put(CF.DATA, b"a", b"gone")
    batch.delete_range(CF.DATA, b"a", b"z")
    batch.put(CF.DATA, b"m", b"kept")
    engine.write(batch)
    assert engine.get(CF.DATA, b"a") is None and engine.get(CF.DATA, b"k") is None
    assert engine.get(CF.DATA, b"m") == b"kept"
    assert inner.get(CF.DATA, b"m") == b"kept"


def test_batching_engine_scans_and_ranges_see_everything() -> None:
    from spindle.kv.storage.batching import BatchingEngine

    engine = BatchingEngine(MemoryEngine())
    batch = engine.new_batch()
    for c in b"abcd":
        batch.put(CF.DATA, bytes([c]), b"v")
    engine.write(batch)
    assert [k for k, _ in engine.scan(CF.DATA, b"", None)] == [b"a", b"b", b"c", b"d"]
    batch = engine.new_batch()
    batch.put(CF.DATA, b"e", b"v")
    engine.write(batch)
    batch = engine.new_batch()
    batch.delete_range(CF.DATA, b"b", b"d")
    engine.write(batch)
    assert engine.get(CF.DATA, b"b") is None, "a range delete is written through at once"
    assert engine.queued == 0
    assert [k for k, _ in engine.scan(CF.DATA, b"", None)] == [b"a", b"d", b"e"]
