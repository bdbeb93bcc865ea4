"""Every call of the data API, and its errors, through the real client and a real server
on a loopback socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.client import RETRY_BACKOFF_S_MAX, AsyncClient, NotSent, retry_backoff_s
from spindle.kv.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    TooLarge,
    WrongShard,
)
from tests.conftest import ThreadServer, free_port


@pytest.fixture
async def kv(server: ThreadServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, timeout_s=10) as client:
        yield client


async def test_put_get_delete(kv: AsyncClient) -> None:
    assert await kv.get(b"missing") is None
    v1 = await kv.put(b"k", b"v1")
    assert await kv.get(b"k") == b"v1"
    item = await kv.get_item(b"k")
    assert item is not None and item.version == v1 and item.expire_at_ms == 0
    v2 = await kv.put(b"k", b"v2")
    assert v2 > v1
    assert await kv.delete(b"k") is True
    assert await kv.delete(b"k") is False
    assert await kv.get(b"k") is None


async def test_empty_and_binary_keys_and_values(kv: AsyncClient) -> None:
    await kv.put(b"", b"empty key")
    await kv.put(b"\x00\xff\x00", b"")
    assert await kv.get(b"") == b"empty key"
    assert await kv.get(b"\x00\xff\x00") == b""


async def test_multi_get(kv: AsyncClient) -> None:
    keys = [b"m%d" % i for i in range(50)]
    for key in keys[::2]:
        await kv.put(key, key.upper())
    values = await kv.multi_get(keys)
    assert values == [key.upper() if i % 2 == 0 else None for i, key in enumerate(keys)]
    with pytest.raises(TooLarge):
        await kv.multi_get([b"x"] * (limits.BATCH_OPS_MAX + 1))


async def test_conditional_put_and_delete(kv: AsyncClient) -> None:
    version = await kv.put(b"c", b"1", if_absent=True)
    with pytest.raises(Conflict, match="exists"):
        await kv.put(b"c", b"2", if_absent=True)
    with pytest.raises(Conflict, match="version mismatch"):
        await kv.put(b"c", b"2", if_version=version + 1000)
    version2 = await kv.put(b"c", b"2", if_version=version)
    with pytest.raises(Conflict):
        await kv.delete(b"c", if_version=version)
    assert await kv.delete(b"c", if_version=version2)
    with pytest.raises(Conflict, match="does not exist"):
        await kv.put(b"c", b"3", if_present=True)
    await kv.put(b"c", b"3", if_version=0)  # version 0 means: absent
    with pytest.raises(InvalidArgument):
        await kv.put(b"c", b"4", if_absent=True, if_present=True)


async def test_put_returns_previous(kv: AsyncClient) -> None:
    first = await kv.put_ex(b"prev", b"a", return_previous=True)
    assert first.previous is None and not first.existed
    second = await kv.put_ex(b"prev", b"b", return_previous=True)
    assert second.previous is not None and second.previous.value == b"a"
    assert second.previous.version == first.version


async def test_incr(kv: AsyncClient) -> None:
    assert await kv.incr(b"n") == 1
    assert await kv.incr(b"n", 41) == 42
    assert await kv.incr(b"n", -50) == -8
    await kv.put(b"text", b"abc")
    with pytest.raises(InvalidArgument, match="not an integer"):
        await kv.incr(b"text")
    await kv.put(b"big", str(2**63 - 1).encode())
    with pytest.raises(InvalidArgument, match="overflow"):
        await kv.incr(b"big")
    assert await kv.get(b"big") == str(2**63 - 1).encode()


async def test_ttl_expiry_and_persist(kv: AsyncClient) -> None:
    await kv.put(b"t", b"v", ttl_ms=500)
    item = await kv.get_item(b"t")
    assert item is not None and item.expire_at_ms > 0
    await asyncio.sleep(0.6)
    assert await kv.get(b"t") is None, "an expired key is invisible at once"
    assert await kv.put(b"t", b"again", if_absent=True), "an expired key counts as absent"
    await kv.put(b"keep", b"v", ttl_ms=100_000)
    await kv.put(b"keep", b"w", keep_ttl=True)
    kept = await kv.get_item(b"keep")
    assert kept is not None and kept.expire_at_ms > 0 and kept.value == b"w"
    assert await kv.expire(b"keep", None) is True
    persisted = await kv.get_item(b"keep")
    assert persisted is not None and persisted.expire_at_ms == 0
    assert await kv.expire(b"nothing", 1000) is False
    with pytest.raises(InvalidArgument, match="ttl_ms"):
        await kv.put(b"x", b"v", ttl_ms=0)
    with pytest.raises(InvalidArgument, match="ttl_ms"):
        await kv.put(b"x", b"v", ttl_ms=limits.TTL_MS_MAX + 1)


async def test_limits(kv: AsyncClient) -> None:
    await kv.put(b"k" * limits.KEY_BYTES_MAX, b"ok")
    with pytest.raises(TooLarge, match="key"):
        await kv.put(b"k" * (limits.KEY_BYTES_MAX + 1), b"v")
    with pytest.raises(TooLarge, match="key"):
        await kv.get(b"k" * (limits.KEY_BYTES_MAX + 1))
    await kv.put(b"big", b"v" * limits.VALUE_BYTES_MAX)
    assert await kv.get(b"big") == b"v" * limits.VALUE_BYTES_MAX
    with pytest.raises(TooLarge, match="value"):
        await kv.put(b"big", b"v" * (limits.VALUE_BYTES_MAX + 1))


async def test_a_response_over_the_frame_limit_is_an_error_not_a_lost_connection(
    kv: AsyncClient,
) -> None:
    await kv.create_keyspace("one", shards=1)
    value = b"v" * limits.VALUE_BYTES_MAX
    keys = [b"big-%d" % i for i in range(limits.FRAME_BYTES_MAX // len(value) + 1)]
    for key in keys:
        await kv.put(key, value, keyspace="one")
    # The client used to refuse the >16 MiB frame and drop the connection, failing every
    # request on it; now the server answers this one with TooLarge.
    other = asyncio.ensure_future(kv.get(keys[0], keyspace="one"))
    with pytest.raises(TooLarge, match="response"):
        await kv.multi_get(keys, keyspace="one")
    assert await other == value
    assert await kv.multi_get(keys[:2], keyspace="one") == [value, value]


async def test_the_client_retries_for_a_time_budget_bounded_in_count() -> None:
    """Retries last `retry_budget_s` (enough to ride out a leader failover), with backoff
    capped at RETRY_BACKOFF_S_MAX, and stop early at `retries`. (They were 5 retries with
    backoff doubling to 1.6 s: 3.1 s, which a failover could outlast.)"""
    address = f"127.0.0.1:{free_port()}"  # nothing listens: every try is NotSent
    started = time.monotonic()
    with pytest.raises(NotSent):
        await AsyncClient(address, retries=1_000, retry_budget_s=1.5).ping()
    elapsed_s = time.monotonic() - started
    assert 1.5 <= elapsed_s < 1.5 + RETRY_BACKOFF_S_MAX + 1.0
    assert [retry_backoff_s(n) for n in (1, 2, 3, 4, 20)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    started = time.monotonic()
    with pytest.raises(NotSent):
        await AsyncClient(address, retries=2, retry_budget_s=60).ping()
    assert time.monotonic() - started < 1.5  # 0.1 + 0.2 s of backoff


async def range_keyspace(kv: AsyncClient, name: str = "r") -> None:
    await kv.create_keyspace(name, partitioning="range", split_points=[b"d", b"m", b"t"])


async def test_batch_atomic_within_one_shard(kv: AsyncClient) -> None:
    await range_keyspace(kv)
    result = await kv.write_batch(
        [
            p.BatchPut(key=b"a1", value=b"x"),
            p.BatchPut(key=b"a2", value=b"y", ttl_ms=60_000),
            p.BatchIncr(key=b"a3", delta=5),
        ],
        keyspace="r",
    )
    assert result.results == [False, False, 5]
    assert await kv.multi_get([b"a1", b"a2", b"a3"], keyspace="r") == [b"x", b"y", b"5"]
    with pytest.raises(Conflict):
        await kv.write_batch(
            [p.BatchDelete(key=b"a1"), p.BatchPut(key=b"a2", value=b"z", if_absent=True)],
            keyspace="r",
        )
    assert await kv.get(b"a1", keyspace="r") == b"x", "a failed batch writes nothing"
    with pytest.raises(InvalidArgument, match="one shard"):
        await kv.write_batch(
            [p.BatchPut(key=b"a", value=b"1"), p.BatchPut(key=b"z", value=b"2")], keyspace="r"
        )
    with pytest.raises(TooLarge):
        await kv.write_batch(
            [p.BatchPut(key=b"b%d" % i, value=b"") for i in range(limits.BATCH_OPS_MAX + 1)],
            keyspace="r",
        )
    with pytest.raises(InvalidArgument):
        await kv.write_batch([], keyspace="r")


async def test_scan_range_prefix_reverse_cursor(kv: AsyncClient) -> None:
    await range_keyspace(kv)
    keys = [bytes([c]) + b"%02d" % i for c in b"aflqxz" for i in range(5)]
    for key in keys:
        await kv.put(key, b"v-" + key, keyspace="r")
    got = [item.key async for item in kv.scan(keyspace="r", page_size=4)]
    assert got == sorted(keys), "forward scan crosses all 4 shards in order"
    got = [item.key async for item in kv.scan(keyspace="r", reverse=True, page_size=3)]
    assert got == sorted(keys, reverse=True)
    got = [item.key async for item in kv.scan(keyspace="r", start=b"f02", end=b"q01")]
    assert got == [k for k in sorted(keys) if b"f02" <= k < b"q01"]
    got = [item.key async for item in kv.scan(keyspace="r", prefix=b"l")]
    assert got == [k for k in sorted(keys) if k.startswith(b"l")]
    got = [item.key async for item in kv.scan(keyspace="r", prefix=b"q", reverse=True)]
    assert got == [k for k in sorted(keys, reverse=True) if k.startswith(b"q")]
    got = [item.key async for item in kv.scan(keyspace="r", limit=7)]
    assert got == sorted(keys)[:7]
    page = await kv.scan_page(keyspace="r", limit=2)
    assert [i.key for i in page.items] == sorted(keys)[:2] and page.cursor is not None
    nxt = await kv.scan_page(keyspace="r", limit=2, cursor=page.cursor)
    assert [i.key for i in nxt.items] == sorted(keys)[2:4]
    with pytest.raises(InvalidArgument):
        await kv.scan_page(keyspace="r", limit=0)
    with pytest.raises(InvalidArgument):
        await kv.scan_page(keyspace="r", prefix=b"a", start=b"a")


async def test_scan_hash_keyspace_filters_by_range(kv: AsyncClient) -> None:
    keys = [b"user:%03d" % i for i in range(60)] + [b"post:%03d" % i for i in range(20)]
    for key in keys:
        await kv.put(key, b"v")
    got = [item.key async for item in kv.scan(prefix=b"post:", page_size=6)]
    assert sorted(got) == sorted(k for k in keys if k.startswith(b"post:"))
    got = [item.key async for item in kv.scan(page_size=13)]
    assert sorted(got) == sorted(keys)
    reverse = [item.key async for item in kv.scan(page_size=13, reverse=True)]
    assert reverse == list(reversed(got)), "reverse is the exact mirror of hash order"


async def test_scan_skips_expired(kv: AsyncClient) -> None:
    await kv.put(b"e1", b"v", ttl_ms=50)
    await kv.put(b"e2", b"v")
    await asyncio.sleep(0.1)
    assert [i.key async for i in kv.scan(prefix=b"e")] == [b"e2"]


async def test_delete_range(kv: AsyncClient) -> None:
    await range_keyspace(kv)
    keys = [bytes([c]) + b"%d" % i for c in b"abcmnoxyz" for i in range(3)]
    for key in keys:
        await kv.put(key, b"v", keyspace="r")
    await kv.delete_range(start=b"b", end=b"y", keyspace="r")
    left = [i.key async for i in kv.scan(keyspace="r")]
    assert left == [k for k in sorted(keys) if not (b"b" <= k < b"y")]
    await kv.delete_range(prefix=b"y", keyspace="r")
    assert [i.key async for i in kv.scan(keyspace="r", prefix=b"y")] == []
    # hash keyspace: key by key, with a count
    for i in range(30):
        await kv.put(b"h%02d" % i, b"v")
        await kv.put(b"g%02d" % i, b"v")
    assert await kv.delete_range(prefix=b"h") == 30
    assert [i.key async for i in kv.scan(prefix=b"h")] == []
    assert len([i async for i in kv.scan(prefix=b"g")]) == 30
    with pytest.raises(InvalidArgument):
        await kv.delete_range()


async def test_transactions(kv: AsyncClient) -> None:
    await kv.put(b"acct", b"100")

    async def withdraw(txn_amount: int) -> None:
        txn = kv.transaction()
        balance = int(await txn.get(b"acct") or b"0")
        txn.put(b"acct", str(balance - txn_amount).encode())
        await txn.commit()

    await withdraw(10)
    assert await kv.get(b"acct") == b"90"
    # A conflicting write between read and commit fails the commit.
    txn = kv.transaction()
    assert await txn.get(b"acct") == b"90"
    await kv.put(b"acct", b"500")
    txn.put(b"acct", b"80")
    with pytest.raises(Conflict, match="transaction read"):
        await txn.commit()
    assert await kv.get(b"acct") == b"500"
    # Reading an absent key and racing a creator conflicts too.
    txn = kv.transaction()
    assert await txn.get(b"new") is None
    await kv.put(b"new", b"x")
    txn.put(b"new", b"y")
    with pytest.raises(Conflict):
        await txn.commit()
    # Concurrent increments through run_transaction all land.

    async def bump(t: object) -> None:
        from spindle.kv.client import Transaction

        assert isinstance(t, Transaction)
        value = int(await t.get(b"counter") or b"0")
        t.put(b"counter", str(value + 1).encode())

    await asyncio.gather(*(kv.run_transaction(bump, attempts=50) for _ in range(10)))
    assert await kv.get(b"counter") == b"10"
    # Reads see the transaction's own writes; async with commits.
    async with kv.transaction() as t:
        t.put(b"own", b"1")
        assert await t.get(b"own") == b"1"
    assert await kv.get(b"own") == b"1"


async def test_transaction_must_stay_in_one_shard(kv: AsyncClient) -> None:
    await range_keyspace(kv)
    txn = kv.transaction(keyspace="r")
    await txn.get(b"a")
    txn.put(b"z", b"1")
    with pytest.raises(InvalidArgument, match="one shard"):
        await txn.commit()


async def test_keyspaces(kv: AsyncClient) -> None:
    summary = await kv.create_keyspace("photos", shards=4)
    assert summary.shards == 4 and summary.partitioning == "hash"
    names = [ks.name for ks in await kv.list_keyspaces()]
    assert "photos" in names and "default" in names
    with pytest.raises(AlreadyExists):
        await kv.create_keyspace("photos")
    with pytest.raises(InvalidArgument, match="name"):
        await kv.create_keyspace("bad name!")
    with pytest.raises(InvalidArgument, match="shards"):
        await kv.create_keyspace("zero", shards=0)
    with pytest.raises(InvalidArgument, match="partitioning"):
        await kv.create_keyspace("odd", partitioning="round-robin")
    with pytest.raises(InvalidArgument, match="increasing"):
        await kv.create_keyspace("r2", partitioning="range", split_points=[b"m", b"c"])
    with pytest.raises(NotFound, match="does not exist"):
        await kv.get(b"k", keyspace="nope")
    await kv.put(b"same", b"photos", keyspace="photos")
    await kv.put(b"same", b"default")
    assert await kv.get(b"same", keyspace="photos") == b"photos", "keyspaces are separate"


async def test_stale_epoch_gets_wrong_shard_with_map(kv: AsyncClient) -> None:
    await kv.put(b"k", b"v")
    raw = await kv._send(kv.seed, p.Get(id=0, key=b"k", epoch=999))
    assert raw.error is not None and raw.error.code == "WrongShard"
    assert raw.error.detail["name"] == "default" and raw.error.detail["shards"]
    # The client recovers by itself from a stale cached map.
    kv._maps["default"].epoch = 12345
    assert await kv.get(b"k") == b"v"
    with pytest.raises(WrongShard):
        kv.retries = 0
        kv._maps["default"].epoch = 12345
        await kv.get(b"k")


async def test_status_and_ping(kv: AsyncClient) -> None:
    pong = await kv.ping()
    assert pong["node_id"] == 1
    status = await kv.status()
    assert status["node_id"] == 1
    assert any(ks["name"] == "default" for ks in status["keyspaces"])


async def test_pipelined_requests_on_one_connection(kv: AsyncClient) -> None:
    results = await asyncio.gather(*(kv.put(b"p%d" % i, b"%d" % i) for i in range(300)))
    assert all(version >= 1 for version in results)
    values = await asyncio.gather(*(kv.get(b"p%d" % i) for i in range(300)))
    assert values == [b"%d" % i for i in range(300)]
    assert len(kv._connections) == 1, "one multiplexed connection per node"


async def test_client_bounds_requests_in_flight_per_connection(kv: AsyncClient) -> None:
    await kv.put(b"hot", b"v")
    peak = 0
    (connection,) = kv._connections.values()
    original = connection.send

    def counting_send(request: p.Request) -> asyncio.Future[p.RawResponse]:
        nonlocal peak
        peak = max(peak, len(connection.pending) + 1)
        return original(request)

    connection.send = counting_send  # type: ignore[method-assign]
    values = await asyncio.gather(*(kv.get(b"hot") for _ in range(3000)))
    assert values == [b"v"] * 3000
    assert peak <= limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX
