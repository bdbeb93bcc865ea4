"""The data model: split points, routing, catalog rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spindle.kv.errors import AlreadyExists, InvalidArgument, NotFound
from spindle.kv.shardmap import Catalog, KeyspaceInfo, Partitioning, even_split_points


def catalog_with(
    shards: int, partitioning: Partitioning, points: list[bytes] | None = None
) -> tuple[Catalog, KeyspaceInfo]:
    catalog = Catalog()
    catalog.add_tenant("t")
    ks = catalog.create_keyspace(
        "t",
        "ks",
        shards=shards,
        partitioning=partitioning,
        split_points=points,
        place=lambda i: (1,),
    )
    return catalog, ks


@pytest.mark.parametrize("partitioning", list(Partitioning))
@pytest.mark.parametrize("shards", [1, 2, 3, 8, 100])
def test_even_split_points_tile_the_space(partitioning: Partitioning, shards: int) -> None:
    points = even_split_points(shards, partitioning)
    assert len(points) == shards - 1
    assert points == sorted(set(points))
    _, ks = catalog_with(shards, partitioning)
    ks.check()
    assert len(ks.shards) == shards


@given(st.lists(st.binary(max_size=12), max_size=200))
def test_every_key_routes_to_the_shard_containing_it(keys: list[bytes]) -> None:
    for partitioning in Partitioning:
        _, ks = catalog_with(7, partitioning)
        counts = [0] * 7
        for key in keys:
            internal = ks.internal_key(key)
            assert ks.user_key(internal) == key
            index = ks.shard_index(internal)
            assert ks.shards[index].contains(internal)
            counts[index] += 1
        assert sum(counts) == len(keys)


def test_hash_partitioning_spreads_sequential_keys() -> None:
    _, ks = catalog_with(8, Partitioning.HASH)
    counts = [0] * 8
    for i in range(8000):
        counts[ks.shard_index(ks.internal_key(b"user:%d" % i))] += 1
    assert min(counts) > 800, counts


def test_explicit_split_points_and_epochs() -> None:
    catalog, ks = catalog_with(0, Partitioning.RANGE, [b"g", b"p"])
    assert [s.start for s in ks.shards] == [b"", b"g", b"p"]
    assert ks.shard_for(b"h").start == b"g"
    assert ks.shard_for(b"p").start == b"p"
    assert ks.shard_for(b"").start == b""
    epoch = catalog.epoch
    other = catalog.create_keyspace(
        "t",
        "other",
        shards=2,
        partitioning=Partitioning.HASH,
        split_points=None,
        place=lambda i: (1,),
    )
    assert catalog.epoch == epoch + 1 and other.epoch == catalog.epoch
    assert other.keyspace_id != ks.keyspace_id
    assert {s.shard_id for s in other.shards}.isdisjoint({s.shard_id for s in ks.shards})


@pytest.mark.parametrize(
    ("points", "partitioning", "message"),
    [
        ([b"b", b"a"], Partitioning.RANGE, "increasing"),
        ([b"a", b"a"], Partitioning.RANGE, "increasing"),
        ([b""], Partitioning.RANGE, "empty"),
        ([b"a"], Partitioning.HASH, "range-partitioned"),
    ],
)
def test_bad_split_points(points: list[bytes], partitioning: Partitioning, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        catalog_with(0, partitioning, points)


def test_catalog_rules() -> None:
    catalog, _ = catalog_with(2, Partitioning.HASH)
    with pytest.raises(AlreadyExists):
        catalog.add_tenant("t")
    with pytest.raises(AlreadyExists):
        catalog.create_keyspace(
            "t",
            "ks",
            shards=1,
            partitioning=Partitioning.HASH,
            split_points=None,
            place=lambda i: (1,),
        )
    with pytest.raises(NotFound):
        catalog.create_keyspace(
            "nobody",
            "ks",
            shards=1,
            partitioning=Partitioning.HASH,
            split_points=None,
            place=lambda i: (1,),
        )
    with pytest.raises(NotFound):
        catalog.keyspace("t", "missing")
    with pytest.raises(InvalidArgument):
        catalog.add_tenant("x" * 200)
