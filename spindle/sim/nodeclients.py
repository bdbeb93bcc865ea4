"""Simulated clients: the full data API at every consistency level, recorded as a history.

Each client is a coroutine on the clients' event loop, "connected" to one node at a time
(it moves on after an error, and now and then at random) and talking to it over the
simulated network, so a client request can be lost or outlive its node like a real one.
It keeps what a real client keeps (spindle/kv/client.py): per shard, the version of its
last acknowledged write, sent as ``min_version`` with read-your-writes reads; per key, the
last version it saw, used for conditional writes and transactions.

Values written are unique (client and sequence number), so a value read names the write
that wrote it. Register keys take puts, conditional puts, deletes, expiries, batches and
transactions; counter keys take increments (in batches too). Scans page through the
register keys by prefix; every key a page covered and did not return is a read of absence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from typing import Any

from spindle.kv import protocol as p
from spindle.kv.errors import ErrorCode, SpindleError, Unavailable
from spindle.kv.node import RESULT_TYPES
from spindle.kv.shardmap import KeyspaceInfo
from spindle.kv.values import Stored
from spindle.sim.nodehistory import WRITE_LEVEL, ClientOp, KeyOp, Recorder
from spindle.sim.nodenet import Endpoint, SimWire

__all__ = ["ClientConfig", "KeyUniverse", "SimClient"]

TENANT = "default"
#: A TTL long enough never to expire during a run: expire is exercised as a write, not a
#: clock race (expiry under skewed clocks is not checked).
LONG_TTL_MS = 3_600_000
SCAN_PREFIX = b"r"
#: Errors that say the request certainly had no effect.
DEFINITE_ERRORS = frozenset(
    {
        ErrorCode.CONFLICT,
        ErrorCode.NOT_LEADER,
        ErrorCode.WRONG_SHARD,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.NOT_FOUND,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.UNKNOWN_OPERATION,
        ErrorCode.TOO_LARGE,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.THROTTLED,
        ErrorCode.UNAUTHENTICATED,
    }
)
READ_LEVELS = ("strong", "bounded", "read_your_writes", "eventual")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    timeout_s: float = 3.0
    think_s_max: float = 0.03
    #: Chance per operation of moving to another node without an error.
    switch_node_probability: float = 0.1
    staleness_bounds_ms: tuple[int, ...] = (20, 100, 500, 2000)
    scan_pages_max: int = 12
    #: Relative weights of the operations.
    weights: tuple[tuple[str, int], ...] = (
        ("get", 30),
        ("multi_get", 5),
        ("scan", 4),
        ("put", 14),
        ("put_if_absent", 4),
        ("put_if_version", 6),
        ("delete", 5),
        ("incr", 7),
        ("expire", 3),
        ("write_batch", 5),
        ("txn", 5),
    )


class KeyUniverse:
    """The keys clients use, where they live, and which share a shard."""

    def __init__(self, keyspace: KeyspaceInfo, registers: int, counters: int) -> None:
        self.keyspace = keyspace
        self.registers = [f"r{i}".encode() for i in range(registers)]
        self.counters = [f"c{i}".encode() for i in range(counters)]
        self.all = self.registers + self.counters
        self.internal = {key: keyspace.internal_key(key) for key in self.all}
        self.shard = {key: keyspace.shard_for(self.internal[key]).shard_id for key in self.all}
        self.by_shard: dict[int, list[bytes]] = {}
        for key in self.all:
            self.by_shard.setdefault(self.shard[key], []).append(key)
        self.shared = [keys for keys in self.by_shard.values() if len(keys) >= 2]


class _Failed(Exception):
    """The call ended without a result (already recorded)."""


class SimClient:
    def __init__(
        self,
        index: int,
        *,
        wire: SimWire,
        endpoint: Endpoint,
        recorder: Recorder,
        keys: KeyUniverse,
        node_ids: list[int],
        rng: random.Random,
        now_us: Callable[[], int],
        config: ClientConfig,
    ) -> None:
        self.index = index
        self.wire = wire
        self.endpoint = endpoint
        self.recorder = recorder
        self.keys = keys
        self.node_ids = node_ids
        self.rng = rng
        self.now_us = now_us
        self.config = config
        self.node = rng.choice(node_ids)
        self.seq = 0
        self.written: dict[int, int] = {}
        """Shard id -> version of this client's latest acknowledged write there."""
        self.seen: dict[bytes, int] = {}
        """Key -> version this client last saw (0: absent)."""
        names, weights = zip(*config.weights, strict=True)
        self._names: list[str] = list(names)
        self._weights: list[int] = list(weights)
        self._ops: dict[str, Callable[[], Any]] = {
            "get": self.get,
            "multi_get": self.multi_get,
            "scan": self.scan,
            "put": self.put,
            "put_if_absent": lambda: self.put(condition="absent"),
            "put_if_version": lambda: self.put(condition="version"),
            "delete": self.delete,
            "incr": self.incr,
            "expire": self.expire,
            "write_batch": self.write_batch,
            "txn": self.txn,
        }

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop_us: int) -> None:
        rng = self.rng
        while True:
            await asyncio.sleep(rng.uniform(0, self.config.think_s_max))
            if self.now_us() >= stop_us:
                return
            if rng.random() < self.config.switch_node_probability:
                self.node = rng.choice(self.node_ids)
            name = rng.choices(self._names, self._weights)[0]
            await self._ops[name]()

    async def final_reads(self, attempts: int = 20) -> bool:
        """A strong read of every key (retrying elsewhere): closes the history."""
        for key in self.keys.all:
            for _ in range(attempts):
                if await self.get(key=key, level="strong"):
                    break
                self.node = self.rng.choice(self.node_ids)
                await asyncio.sleep(0.2)
            else:
                return False
        return True

    # -- plumbing ----------------------------------------------------------------------------

    def _value(self) -> bytes:
        self.seq += 1
        return f"c{self.index}:{self.seq}".encode()

    def _key_op(self, key: bytes, f: str, input: Any = None) -> KeyOp:
        return KeyOp(key, f, input, internal_key=self.keys.internal[key])

    def _invoke(self, name: str, level: str, keys: list[KeyOp], **fields: Any) -> ClientOp:
        op = self.recorder.invoke(self.index, name, level, self.node, self.now_us(), keys)
        for field, value in fields.items():
            setattr(op, field, value)
        return op

    async def _call(self, op: ClientOp, request: p.Request) -> Any:
        """The request's result; records a failed op and raises _Failed otherwise."""
        try:
            return await self.wire.call(
                self.endpoint,
                op.node,
                TENANT,
                request,
                RESULT_TYPES.get(type(request), Any),
                timeout_s=self.config.timeout_s,
                forwarded=False,
            )
        except TimeoutError:
            self._fail(op, "info" if op.is_write else "fail", "client timeout")
        except SpindleError as error:
            self._fail(op, _classify(error, op.is_write), f"{error.code.value}: {error.message}")
        raise _Failed

    def _fail(self, op: ClientOp, status: Any, error: str) -> None:
        self.recorder.complete(op, status, self.now_us(), error)
        if not error.startswith(ErrorCode.CONFLICT.value):
            self.node = self.rng.choice(self.node_ids)

    def _ok(self, op: ClientOp) -> None:
        self.recorder.complete(op, "ok", self.now_us())

    def _note_write(self, key: bytes, version: int, present: bool) -> None:
        shard = self.keys.shard[key]
        self.written[shard] = max(self.written.get(shard, 0), version)
        self.seen[key] = version if present else 0

    def _level(self) -> str:
        return self.rng.choice(READ_LEVELS)

    def _read_fields(self, level: str, shard_id: int) -> dict[str, Any]:
        if level == "bounded":
            return {"max_staleness_ms": self.rng.choice(self.config.staleness_bounds_ms)}
        if level == "read_your_writes":
            return {"min_version": self.written.get(shard_id, 0)}
        return {}

    def _read_result(self, key_op: KeyOp, item: Stored | None) -> None:
        if item is None:
            key_op.output = None
            self.seen[key_op.key] = 0
        else:
            key_op.output = (item.value, item.version)
            key_op.version = item.version
            self.seen[key_op.key] = item.version

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: bytes | None = None, level: str | None = None) -> bool:
        key = key if key is not None else self.rng.choice(self.keys.all)
        level = level or self._level()
        fields = self._read_fields(level, self.keys.shard[key])
        key_op = self._key_op(key, "read")
        op = self._invoke("get", level, [key_op], **fields)
        request = p.Get(id=0, key=key, consistency=level, **fields)
        try:
            item = await self._call(op, request)
        except _Failed:
            return False
        self._read_result(key_op, item)
        self._ok(op)
        return True

    async def multi_get(self) -> None:
        level = self._level()
        if level == "read_your_writes":
            group = self.rng.choice(list(self.keys.by_shard.values()))
        else:
            group = self.keys.all
        keys = self.rng.sample(group, min(len(group), self.rng.randint(2, 4)))
        fields = self._read_fields(level, self.keys.shard[keys[0]])
        key_ops = [self._key_op(key, "read") for key in keys]
        op = self._invoke("multi_get", level, key_ops, **fields)
        request = p.MultiGet(id=0, keys=keys, consistency=level, **fields)
        try:
            items = await self._call(op, request)
        except _Failed:
            return
        for key_op, item in zip(key_ops, items, strict=True):
            self._read_result(key_op, item)
        self._ok(op)

    async def scan(self) -> None:
        rng = self.rng
        level = rng.choice(("strong", "strong", "bounded", "eventual"))
        reverse = rng.random() < 0.3
        limit = rng.randint(2, 12)
        fields = self._read_fields(level, 0)
        registers = [(self.keys.internal[k], k) for k in self.keys.registers]
        cursor: bytes | None = None
        for _ in range(self.config.scan_pages_max):
            op = self._invoke("scan", level, [], **fields)
            request = p.Scan(
                id=0,
                prefix=SCAN_PREFIX,
                reverse=reverse,
                limit=limit,
                cursor=cursor,
                consistency=level,
                **fields,
            )
            try:
                page = await self._call(op, request)
            except _Failed:
                return
            if reverse:
                low, high = page.cursor or b"", cursor
            else:
                low, high = cursor or b"", page.cursor
            found = {item.key: item for item in page.items}
            for internal_key, key in registers:
                if internal_key >= low and (high is None or internal_key < high):
                    key_op = self._key_op(key, "read")
                    item = found.pop(key, None)
                    stored = None if item is None else Stored(item.value, item.version)
                    self._read_result(key_op, stored)
                    op.keys.append(key_op)
            for key, item in found.items():  # returned, but outside what the page covered
                key_op = self._key_op(key, "read")
                key_op.output = (item.value, item.version)
                op.keys.append(key_op)
                op.error = f"item {key!r} outside the page's range [{low!r}, {high!r})"
            self._ok(op)
            if page.cursor is None:
                return
            cursor = page.cursor

    # -- writes ------------------------------------------------------------------------------

    async def put(self, condition: str | None = None) -> None:
        key = self.rng.choice(self.keys.registers)
        value = self._value()
        ttl_ms = LONG_TTL_MS if self.rng.random() < 0.2 else None
        cond: Any = None
        extra: dict[str, Any] = {}
        if condition == "absent":
            cond, extra = "absent", {"if_absent": True}
        elif condition == "version":
            expected = self.seen.get(key, 0)
            cond, extra = ("version", expected), {"if_version": expected}
        key_op = self._key_op(key, "put", (value, cond))
        op = self._invoke("put", WRITE_LEVEL, [key_op])
        request = p.Put(id=0, key=key, value=value, ttl_ms=ttl_ms, **extra)
        try:
            result = await self._call(op, request)
        except _Failed:
            return
        key_op.output = (result.version, result.existed)
        key_op.version = result.version
        self._note_write(key, result.version, True)
        self._ok(op)

    async def delete(self) -> None:
        key = self.rng.choice(self.keys.registers)
        cond: Any = None
        if_version: int | None = None
        if self.rng.random() < 0.3:
            if_version = self.seen.get(key, 0)
            cond = ("version", if_version)
        key_op = self._key_op(key, "delete", cond)
        op = self._invoke("delete", WRITE_LEVEL, [key_op])
        try:
            result = await self._call(op, p.Delete(id=0, key=key, if_version=if_version))
        except _Failed:
            return
        key_op.output = (result.version, result.deleted)
        key_op.version = result.version
        self._note_write(key, result.version, False)
        self._ok(op)

    async def incr(self) -> None:
        key = self.rng.choice(self.keys.counters)
        delta = self.rng.randint(1, 5)
        key_op = self._key_op(key, "incr", delta)
        op = self._invoke("incr", WRITE_LEVEL, [key_op])
        try:
            result = await self._call(op, p.Incr(id=0, key=key, delta=delta))
        except _Failed:
            return
        key_op.output = (result.value, result.version)
        key_op.version = result.version
        self._note_write(key, result.version, True)
        self._ok(op)

    async def expire(self) -> None:
        key = self.rng.choice(self.keys.registers)
        ttl_ms = LONG_TTL_MS if self.rng.random() < 0.7 else None
        key_op = self._key_op(key, "expire", ttl_ms)
        op = self._invoke("expire", WRITE_LEVEL, [key_op])
        try:
            existed = await self._call(op, p.Expire(id=0, key=key, ttl_ms=ttl_ms))
        except _Failed:
            return
        key_op.output = existed
        self._ok(op)

    async def write_batch(self) -> None:
        rng = self.rng
        if not self.keys.shared:
            return
        group = rng.choice(self.keys.shared)
        keys = rng.sample(group, min(len(group), rng.randint(2, 3)))
        batch: list[p.BatchOp] = []
        key_ops: list[KeyOp] = []
        for key in keys:
            if key in self.keys.counters:
                delta = rng.randint(1, 5)
                batch.append(p.BatchIncr(key=key, delta=delta))
                key_ops.append(self._key_op(key, "incr", delta))
            elif rng.random() < 0.2:
                batch.append(p.BatchDelete(key=key))
                key_ops.append(self._key_op(key, "delete", None))
            else:
                value = self._value()
                if rng.random() < 0.2:
                    expected = self.seen.get(key, 0)
                    batch.append(p.BatchPut(key=key, value=value, if_version=expected))
                    key_ops.append(self._key_op(key, "put", (value, ("version", expected))))
                else:
                    batch.append(p.BatchPut(key=key, value=value))
                    key_ops.append(self._key_op(key, "put", (value, None)))
        op = self._invoke("write_batch", WRITE_LEVEL, key_ops)
        try:
            result = await self._call(op, p.WriteBatch(id=0, ops=batch))
        except _Failed:
            return
        self._batch_result(key_ops, result)
        self._ok(op)

    def _batch_result(self, key_ops: list[KeyOp], result: p.BatchResult) -> None:
        for key_op, outcome in zip(key_ops, result.results, strict=True):
            key_op.version = result.version
            if key_op.f == "incr":
                key_op.output = (outcome, result.version)
            else:
                key_op.output = (result.version, outcome)
            self._note_write(key_op.key, result.version, key_op.f != "delete")

    async def txn(self) -> None:
        """Read a key (strong), then commit writes conditional on its version."""
        rng = self.rng
        if rng.random() < 0.5 and self.keys.shared:
            group = [k for k in rng.choice(self.keys.shared) if k in self.keys.registers]
        else:
            group = [rng.choice(self.keys.registers)]
        if not group:
            return
        read_key = rng.choice(group)
        if not await self.get(key=read_key, level="strong"):
            return
        seen = self.seen.get(read_key, 0)
        writes = rng.sample(group, min(len(group), rng.randint(1, 2)))
        key_ops: list[KeyOp] = []
        ops: list[p.BatchOp] = []
        if read_key not in writes:
            key_ops.append(self._key_op(read_key, "check", seen))
        for key in writes:
            value = self._value()
            cond = ("version", seen) if key == read_key else None
            ops.append(p.BatchPut(key=key, value=value))
            key_ops.append(self._key_op(key, "put", (value, cond)))
        op = self._invoke("txn", WRITE_LEVEL, key_ops)
        try:
            result = await self._call(op, p.Txn(id=0, reads=[(read_key, seen)], ops=ops))
        except _Failed:
            return
        writes_ops = [k for k in key_ops if k.f == "put"]
        self._batch_result(writes_ops, result)
        self._ok(op)


def _classify(error: SpindleError, is_write: bool) -> Any:
    """fail if the request certainly had no effect, else info (it may yet take effect)."""
    if not is_write or error.code in DEFINITE_ERRORS:
        return "fail"
    if isinstance(error, Unavailable) and error.message.startswith("connection refused"):
        return "fail"
    return "info"
