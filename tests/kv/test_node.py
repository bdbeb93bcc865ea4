"""The node without the network: group commit, durability of acknowledged writes, TTL
purge, recovery from a crash that drops unsynced writes (memory engine)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from spindle.kv import protocol as p
from spindle.kv.node import Node
from spindle.kv.storage import MemoryEngine


class SlowSyncEngine(MemoryEngine):
    """Memory engine whose fsync blocks until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def sync(self) -> None:
        self.release.wait(5)
        super().sync()


async def put(node: Node, key: bytes, value: bytes, **options: object) -> p.PutResult:
    request = p.Put(id=1, key=key, value=value, **options)  # type: ignore[arg-type]
    result = node.execute("default", request)
    return await result  # type: ignore[no-any-return]


async def test_write_is_acknowledged_only_after_sync() -> None:
    engine = SlowSyncEngine()
    engine.release.set()
    node = Node(engine)
    await node.ensure_default_keyspace()
    engine.release.clear()
    future = asyncio.ensure_future(put(node, b"k", b"v"))
    await asyncio.sleep(0.05)
    assert not future.done(), "acknowledged before the fsync"
    engine.release.set()
    result = await future
    assert result.version == 1
    assert engine.unsynced_batches == 0
    await node.close()


async def test_group_commit_shares_fsyncs_and_survives_crash() -> None:
    engine = MemoryEngine()
    node = Node(engine)
    await node.ensure_default_keyspace()
    syncs_before = engine.sync_calls
    keys = [b"key-%d" % i for i in range(500)]
    results = await asyncio.gather(*(put(node, key, key * 2) for key in keys))
    assert all(r.version >= 1 for r in results)
    syncs = engine.sync_calls - syncs_before
    assert syncs < len(keys) / 5, f"{syncs} fsyncs for {len(keys)} writes: no grouping"
    await node.close()
    engine.crash()
    recovered = Node(engine)
    for key in keys:
        stored = recovered.execute("default", p.Get(id=1, key=key))
        assert stored is not None and stored.value == key * 2


async def test_unsynced_write_is_lost_on_crash_but_was_never_acknowledged() -> None:
    engine = SlowSyncEngine()
    engine.release.set()
    node = Node(engine)
    await node.ensure_default_keyspace()
    engine.release.clear()
    pending = asyncio.ensure_future(put(node, b"k", b"v"))
    await asyncio.sleep(0.02)
    engine.crash()  # power cut while the fsync is still waiting
    recovered = Node(engine)
    assert recovered.execute("default", p.Get(id=1, key=b"k")) is None
    assert not pending.done()
    engine.release.set()
    await pending  # the old node's fsync completes; that is not a recovered-node concern
    await node.close()


async def test_reads_wait_for_durability_of_what_they_saw() -> None:
    engine = SlowSyncEngine()
    engine.release.set()
    node = Node(engine)
    await node.ensure_default_keyspace()
    engine.release.clear()
    write = asyncio.ensure_future(put(node, b"k", b"v"))
    await asyncio.sleep(0.01)
    read = node.execute("default", p.Get(id=2, key=b"k"))
    assert isinstance(read, asyncio.Future), "a read of an unsynced write must wait"
    await asyncio.sleep(0.02)
    assert not read.done()
    engine.release.set()
    assert (await read).value == b"v"
    await write
    await node.close()


async def test_reads_of_other_shards_do_not_wait_for_unsynced_writes() -> None:
    engine = SlowSyncEngine()
    engine.release.set()
    node = Node(engine)
    await node.ensure_default_keyspace()
    await node.execute("default", p.CreateKeyspace(id=1, name="r", partitioning="range"))
    await put(node, b"\xf0-other-shard", b"old", keyspace="r")
    engine.release.clear()
    write = asyncio.ensure_future(put(node, b"\x10a", b"v", keyspace="r"))
    await asyncio.sleep(0.01)
    other = node.execute("default", p.Get(id=2, key=b"\xf0-other-shard", keyspace="r"))
    assert not isinstance(other, asyncio.Future), "no unsynced write in that shard"
    assert other.value == b"old"
    same = node.execute("default", p.Get(id=3, key=b"\x10a", keyspace="r"))
    assert isinstance(same, asyncio.Future)
    scan = node.execute("default", p.Scan(id=4, keyspace="r"))
    assert isinstance(scan, asyncio.Future), "a scan over the written shard waits too"
    engine.release.set()
    assert (await same).value == b"v"
    assert [item.key for item in (await scan).items] == [b"\x10a", b"\xf0-other-shard"]
    await write
    await node.close()


async def test_ttl_purge_removes_expired_keys_from_engine() -> None:
    now = [1_000_000]
    engine = MemoryEngine()
    node = Node(engine, clock_ms=lambda: now[0])
    await node.ensure_default_keyspace()
    await put(node, b"short", b"1", ttl_ms=100)
    await put(node, b"long", b"2", ttl_ms=100_000)
    await put(node, b"rewritten", b"3", ttl_ms=100)
    await put(node, b"rewritten", b"4")  # no TTL any more: the old index entry is stale
    now[0] += 200
    assert node.execute("default", p.Get(id=1, key=b"short")) is None, "invisible at once"
    purged = await node.purge_expired()
    assert purged == 1
    assert node.execute("default", p.Get(id=1, key=b"rewritten")).value == b"4"
    assert node.execute("default", p.Get(id=1, key=b"long")).value == b"2"
    assert await node.purge_expired() == 0
    await node.close()


@pytest.mark.parametrize("partitioning", ["hash", "range"])
async def test_scan_crosses_every_shard(partitioning: str) -> None:
    node = Node(MemoryEngine())
    await node.ensure_default_keyspace()
    await node.execute(
        "default", p.CreateKeyspace(id=1, name="s", shards=16, partitioning=partitioning)
    )
    keys = sorted(bytes([i, j]) for i in range(0, 256, 8) for j in (0, 255))
    for key in keys:
        await put(node, key, b"v", keyspace="s")
    seen: list[bytes] = []
    cursor = None
    while True:
        page = node.execute("default", p.Scan(id=1, keyspace="s", limit=7, cursor=cursor))
        seen += [item.key for item in page.items]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert sorted(seen) == keys
    assert len(seen) == len(set(seen))
    if partitioning == "range":
        assert seen == keys
    await node.close()


async def test_key_of_a_shard_hosted_elsewhere_gets_wrong_shard() -> None:
    from spindle.kv.errors import WrongShard

    node = Node(MemoryEngine())
    await node.ensure_default_keyspace()
    keyspace = node.catalog.keyspace("default", "default")
    internal = keyspace.internal_key(b"k")
    moved = keyspace.shard_for(internal).shard_id
    del node.shards[moved]  # as if the shard had moved to another node
    with pytest.raises(WrongShard, match=f"shard {moved} is not on node 1") as caught:
        node.execute("default", p.Get(id=1, key=b"k"))
    assert caught.value.detail["name"] == "default"
    with pytest.raises(WrongShard):
        node.execute("default", p.Put(id=1, key=b"k", value=b"v"))
    page = node.execute("default", p.Scan(id=1, limit=1000))
    assert page.cursor is not None, "a scan stops at the shard it cannot serve"


async def test_stored_bytes_match_the_engine_after_any_history() -> None:
    """The per-shard byte count the quotas rely on equals what the engine holds."""
    import random

    from spindle.kv.keys import keyspace_prefix
    from spindle.kv.storage import CF

    rng = random.Random(7)
    now = [1_000_000]
    engine = MemoryEngine()
    node = Node(engine, clock_ms=lambda: now[0])
    await node.ensure_default_keyspace()
    await node.execute("default", p.CreateKeyspace(id=1, name="r", partitioning="range"))
    for _ in range(600):
        keyspace = rng.choice(["default", "r"])
        key = b"k%d" % rng.randrange(40)
        choice = rng.random()
        try:
            if choice < 0.5:
                ttl = rng.choice([None, None, 50])
                value = b"v" * rng.randrange(30)
                await put(node, key, value, keyspace=keyspace, ttl_ms=ttl)
            elif choice < 0.7:
                await node.execute("default", p.Delete(id=1, key=key, keyspace=keyspace))
            elif choice < 0.8:
                await node.execute("default", p.Incr(id=1, key=b"n", keyspace=keyspace))
            elif choice < 0.85:
                prefix = b"k%d" % rng.randrange(4)
                request = p.DeleteRangeReq(id=1, prefix=prefix, keyspace=keyspace)
                await node.execute("default", request)
            elif choice < 0.9:
                now[0] += 60
                await node.purge_expired()
            else:
                ops = [p.BatchPut(key=key, value=b"b"), p.BatchDelete(key=key)]
                await node.execute("default", p.WriteBatch(id=1, ops=ops, keyspace=keyspace))
        except Exception as error:
            from spindle.kv.errors import SpindleError

            assert isinstance(error, SpindleError)
    for ks in node.catalog.keyspaces.values():
        prefix = keyspace_prefix(ks.keyspace_id)
        actual = sum(
            len(k) - len(prefix) + len(v)
            for k, v in engine.scan(CF.DATA, prefix, keyspace_prefix(ks.keyspace_id + 1))
        )
        counted = sum(node.shards[s.shard_id].state.stored_bytes for s in ks.shards)
        assert counted == actual, ks.name
    assert actual > 0
