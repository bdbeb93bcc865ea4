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
