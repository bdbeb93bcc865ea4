"""Hypothesis drives the real blocking client against a real server and a model dict;
any difference in results or state fails the test."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spindle.kv import protocol as p
from spindle.kv.client import Client
from spindle.kv.errors import Conflict, InvalidArgument
from tests.conftest import ThreadServer

KEYS = st.sampled_from([b"a", b"ab", b"abc", b"b", b"ba", b"c", b"m", b"z", b"\x00", b""])
VALUES = st.binary(max_size=20)
_names = itertools.count()


class StoreVsModel(RuleBasedStateMachine):
    client: ClassVar[Client]

    def __init__(self) -> None:
        super().__init__()
        self.keyspace = f"ks{next(_names)}"
        self.partitioning = "range" if next(_names) % 2 else "hash"
        self.client.create_keyspace(self.keyspace, shards=3, partitioning=self.partitioning)
        self.model: dict[bytes, tuple[bytes, int]] = {}

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        version = self.client.put(key, value, keyspace=self.keyspace)
        self.model[key] = (value, version)

    @rule(key=KEYS)
    def get(self, key: bytes) -> None:
        item = self.client.get_item(key, keyspace=self.keyspace)
        expected = self.model.get(key)
        assert (None if item is None else (item.value, item.version)) == expected

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        existed = self.client.delete(key, keyspace=self.keyspace)
        assert existed == (key in self.model)
        self.model.pop(key, None)

    @rule(key=KEYS, value=VALUES)
    def put_if_absent(self, key: bytes, value: bytes) -> None:
        try:
            version = self.client.put(key, value, if_absent=True, keyspace=self.keyspace)
        except Conflict:
            assert key in self.model
        else:
            assert key not in self.model
            self.model[key] = (value, version)

    @rule(key=KEYS, value=VALUES, stale=st.booleans())
    def put_if_version(self, key: bytes, value: bytes, stale: bool) -> None:
        current = self.model.get(key, (b"", 0))[1]
        wanted = current + 1 if stale else current
        try:
            version = self.client.put(key, value, if_version=wanted, keyspace=self.keyspace)
        except Conflict:
            assert stale
        else:
            assert not stale
            self.model[key] = (value, version)

    @rule(key=KEYS, delta=st.integers(-1000, 1000))
    def incr(self, key: bytes, delta: int) -> None:
        old = self.model.get(key)
        try:
            value = self.client.incr(key, delta, keyspace=self.keyspace)
        except InvalidArgument:
            assert old is not None
            return
        base = 0 if old is None else int(old[0])
        assert value == base + delta
        item = self.client.get_item(key, keyspace=self.keyspace)
        assert item is not None
        self.model[key] = (str(value).encode(), item.version)

    @rule(keys=st.lists(KEYS, max_size=5))
    def multi_get(self, keys: list[bytes]) -> None:
        values = self.client.multi_get(keys, keyspace=self.keyspace)
        assert values == [self.model[k][0] if k in self.model else None for k in keys]

    @rule(prefix=st.sampled_from([b"a", b"b", b"", b"ab"]), reverse=st.booleans())
    def scan_prefix(self, prefix: bytes, reverse: bool) -> None:
        items = list(
            self.client.scan(
                prefix=prefix or None, reverse=reverse, page_size=2, keyspace=self.keyspace
            )
        )
        got = {item.key: (item.value, item.version) for item in items}
        assert len(got) == len(items), "no key twice"
        assert got == {k: v for k, v in self.model.items() if k.startswith(prefix)}
        if self.partitioning == "range":
            keys = [item.key for item in items]
            assert keys == sorted(keys, reverse=reverse)

    @precondition(lambda self: self.partitioning == "range")
    @rule(key=KEYS)
    def batch_in_one_shard(self, key: bytes) -> None:
        # Keys that share the first byte share a range shard (split points are 2-byte).
        other = key + b"\x01"
        self.client.write_batch(
            [p.BatchPut(key=key, value=b"b1"), p.BatchPut(key=other, value=b"b2")],
            keyspace=self.keyspace,
        )
        for k, v in ((key, b"b1"), (other, b"b2")):
            item = self.client.get_item(k, keyspace=self.keyspace)
            assert item is not None
            self.model[k] = (v, item.version)

    @rule(prefix=st.sampled_from([b"a", b"b", b"ab"]))
    def delete_prefix(self, prefix: bytes) -> None:
        self.client.delete_range(prefix=prefix, keyspace=self.keyspace)
        for key in [k for k in self.model if k.startswith(prefix)]:
            del self.model[key]

    @invariant()
    def full_scan_matches(self) -> None:
        items = list(self.client.scan(page_size=3, keyspace=self.keyspace))
        assert {i.key: (i.value, i.version) for i in items} == self.model


@pytest.fixture
def stateful_server(tmp_path: Path) -> ThreadServer:
    srv = ThreadServer(tmp_path / "stateful")
    srv.start()
    return srv


def test_store_matches_model(stateful_server: ThreadServer) -> None:
    try:
        with Client(stateful_server.address) as client:
            StoreVsModel.client = client
            run = StoreVsModel.TestCase()
            run.settings = settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            run.runTest()
    finally:
        stateful_server.stop()
