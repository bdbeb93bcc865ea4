"""The Python client: asyncio (`AsyncClient`, via `spindle.connect`) and blocking (`Client`).

It caches each keyspace's shard map, routes every key to the node serving its shard,
refreshes the map when a node answers `WrongShard`, keeps one multiplexed connection per
node, times requests out, and retries what is safe to retry: anything refused with
`WrongShard` (it was not executed) and idempotent reads after a lost connection.

    async with spindle.connect("127.0.0.1:7379") as kv:
        await kv.put(b"greeting", b"hello")
        print(await kv.get(b"greeting"))
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import random
import threading
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.errors import (
    InvalidArgument,
    NotLeader,
    SpindleError,
    Timeout,
    Unavailable,
    WrongShard,
    error_from_code,
)
from spindle.kv.keys import hash_prefix
from spindle.kv.tenancy import Quota
from spindle.kv.values import Stored

T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:7379"
DEFAULT_TIMEOUT_S = 10.0
RETRY_BACKOFF_S = 0.05
"""First pause before a retry; doubles per attempt ..."""
RETRY_BACKOFF_S_MAX = 0.5
"""... up to this, so a client riding out an election tries again soon after it ends."""


def retry_backoff_s(attempt: int) -> float:
    """The pause before retry number `attempt` (1, 2, ...)."""
    return min(RETRY_BACKOFF_S * 2.0**attempt, RETRY_BACKOFF_S_MAX)


Item = Stored
"""A value with its version and expiry (expire_at_ms 0: never)."""

_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(p.RawResponse)


class _MapShard(msgspec.Struct):
    shard_id: int
    start: bytes
    end: bytes | None
    epoch: int
    node_id: int
    """The preferred leader."""
    replicas: list[int] = []
    leader_id: int = 0
    """The leader as the serving node knew it (0: unknown); NotLeader hints update it."""


class _KeyspaceMap(msgspec.Struct):
    name: str
    keyspace_id: int
    partitioning: str
    epoch: int
    shards: list[_MapShard]
    nodes: dict[str, tuple[str, int]]

    def internal_key(self, key: bytes) -> bytes:
        return hash_prefix(key) + key if self.partitioning == "hash" else key

    def shard(self, internal_key: bytes) -> _MapShard:
        starts = [shard.start for shard in self.shards]
        return self.shards[bisect.bisect_right(starts, internal_key) - 1]

    def address_for(self, internal_key: bytes, *, any_replica: bool = False) -> tuple[str, int]:
        """Where to send a request for the shard holding `internal_key`: its leader, or
        (for reads that any replica may serve) a random replica, spreading load."""
        shard = self.shard(internal_key)
        node_id = shard.leader_id or shard.node_id
        if any_replica and shard.replicas:
            node_id = random.choice(shard.replicas)
        target = self.nodes.get(str(node_id))
        return target if target is not None else self.nodes[str(shard.node_id)]

    def shard_of(self, internal_key: bytes) -> int:
        return self.shard(internal_key).shard_id

    def skip(self, internal_key: bytes, unreachable: tuple[str, int]) -> None:
        """The node at `unreachable` did not answer: aim the shard at its next replica."""
        shard = self.shard(internal_key)
        replicas = shard.replicas or [shard.node_id]
        current = next(
            (r for r in replicas if tuple(self.nodes.get(str(r), ())) == tuple(unreachable)),
            shard.leader_id or shard.node_id,
        )
        position = replicas.index(current) if current in replicas else -1
        shard.leader_id = replicas[(position + 1) % len(replicas)]


class _Connection(asyncio.Protocol):
    """One multiplexed connection: requests carry ids, responses may come in any order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[p.RawResponse]] = {}
        self.closed = asyncio.Event()
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._out: list[bytes] = []
        """Frames of this event-loop turn, sent in one socket write at its end."""
        self.slots = asyncio.Semaphore(limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX)
        """Requests in flight on this connection, bounded like the server's side: beyond
        it, callers wait for a response to free a slot."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()  # once: each lookup is a getpid call

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"connection lost: {exc or 'closed by peer'}"))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = p.FRAME_HEADER.unpack_from(buffer, offset)
            if length > limits.FRAME_BYTES_MAX:
                assert self.transport is not None
                self.transport.close()
                return
            end = offset + 4 + length
            if end > len(buffer):
                break
            response = _response_decoder.decode(buffer[offset + 4 : end])
            offset = end
            future = self.pending.pop(response.id, None)
            if future is not None and not future.done():
                future.set_result(response)
        del buffer[:offset]

    def send(self, request: p.Request) -> asyncio.Future[p.RawResponse]:
        if self.transport is None or self.transport.is_closing():
            raise Unavailable("connection is closed")
        request.id = next(self._ids)
        future: asyncio.Future[p.RawResponse] = self._loop.create_future()
        self.pending[request.id] = future
        body = _encoder.encode(request)
        if len(body) > limits.FRAME_BYTES_MAX:
            del self.pending[request.id]
            raise InvalidArgument(
                f"request of {len(body)} bytes exceeds the frame limit {limits.FRAME_BYTES_MAX}"
            )
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(p.FRAME_HEADER.pack(len(body)) + body)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def forget(self, request_id: int) -> None:
        self.pending.pop(request_id, None)


class NotSent(Unavailable):
    """The request never left: no connection to the node. Safe to retry anywhere."""


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class AsyncClient:
    """asyncio client for a Spindle store. Use `async with spindle.connect(...) as kv`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        keyspace: str = "default",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = limits.CLIENT_RETRIES_MAX,
        retry_budget_s: float = limits.CLIENT_RETRY_BUDGET_S,
        tenant: str | None = None,
        token: str | None = None,
        consistency: str = "strong",
        max_staleness_ms: int = 0,
    ) -> None:
        """`consistency` is the default read level (see protocol.CONSISTENCY_LEVELS);
        with "read_your_writes" the client remembers, per shard, the version of its last
        write and asks the replica to have applied it."""
        if consistency not in p.CONSISTENCY_LEVELS:
            raise InvalidArgument(
                f"consistency must be one of {', '.join(p.CONSISTENCY_LEVELS)}, got {consistency!r}"
            )
        self.consistency = consistency
        self.max_staleness_ms = max_staleness_ms
        self._written: dict[tuple[str, int], int] = {}
        """(keyspace, shard id) -> version of this client's latest write there."""
        self.seed = parse_address(address or os.environ.get("SPINDLE_ADDR", DEFAULT_ADDRESS))
        self.tenant = tenant or os.environ.get("SPINDLE_TENANT") or None
        self.token = token or os.environ.get("SPINDLE_TOKEN") or None
        if self.token is not None and self.tenant is None:
            self.tenant = "default"
        self.keyspace = keyspace
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_budget_s = retry_budget_s
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[_Connection]] = {}
        self._maps: dict[str, _KeyspaceMap] = {}

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._connection(self.seed)

    async def close(self) -> None:
        for connection in self._connections.values():
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()

    # -- plumbing ------------------------------------------------------------------------

    async def _connection(self, address: tuple[str, int]) -> _Connection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed.is_set():
            return connection
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._open(address))
            self._connecting[address] = pending
        try:
            return await asyncio.shield(pending)
        finally:
            self._connecting.pop(address, None)

    async def _open(self, address: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, address[0], address[1]), self.timeout_s
            )
        except (OSError, TimeoutError) as error:
            raise NotSent(f"cannot connect to {address[0]}:{address[1]}: {error}") from None
        if self.token is not None:
            assert self.tenant is not None
            auth = p.Auth(id=0, tenant=self.tenant, token=self.token)
            try:
                response = await asyncio.wait_for(connection.send(auth), self.timeout_s)
            except TimeoutError:
                raise Timeout("no answer to authentication") from None
            if response.error is not None:
                if connection.transport is not None:
                    connection.transport.close()
                raise error_from_code(
                    response.error.code, response.error.message, response.error.detail
                )
        self._connections[address] = connection
        return connection

    async def _send(self, address: tuple[str, int], request: p.Request) -> p.RawResponse:
        connection = await self._connection(address)
        async with connection.slots:  # bounded in flight: waits, never fails
            future = connection.send(request)
            try:
                return await asyncio.wait_for(future, self.timeout_s)
            except TimeoutError:
                connection.forget(request.id)
                raise Timeout(
                    f"no answer from {address[0]}:{address[1]} in {self.timeout_s}s"
                ) from None

    async def call(
        self,
        request: p.Request,
        result_type: type[T],
        *,
        idempotent: bool,
        route_key: bytes | None = None,
        keyspace: str | None = None,
    ) -> T:
        """Send one request to the node serving `route_key` (an internal key) and decode
        its result, retrying on WrongShard, on NotLeader (the write was not applied: go
        where the hint points) and, when idempotent, on connection loss and Unavailable."""
        attempt = 0
        clock = asyncio.get_running_loop().time  # the loop's clock, as asyncio.sleep's
        retry_until_s = clock() + self.retry_budget_s
        unreachable: set[tuple[str, int]] = set()
        any_replica = isinstance(request, p.ReadRequest) and request.consistency != "strong"

        def may_retry() -> bool:
            return attempt < self.retries and clock() < retry_until_s

        while True:
            address = self.seed
            if keyspace is not None and isinstance(request, p.KeyspaceRequest):
                ks_map = await self._map(keyspace)
                request.epoch = ks_map.epoch
                if route_key is not None:
                    address = tuple(  # type: ignore[assignment]
                        ks_map.address_for(route_key, any_replica=any_replica and attempt == 0)
                    )
            try:
                response = await self._send(address, request)
            except NotSent:
                if not may_retry():
                    raise
                attempt += 1
                unreachable.add(tuple(address))  # type: ignore[arg-type]
                if keyspace is not None and route_key is not None and keyspace in self._maps:
                    self._maps[keyspace].skip(route_key, address)
                await asyncio.sleep(retry_backoff_s(attempt))
                continue
            except Unavailable:
                if not idempotent or not may_retry():
                    raise
                attempt += 1
                await asyncio.sleep(retry_backoff_s(attempt))
                continue
            if response.error is None:
                return msgspec.msgpack.decode(response.result, type=result_type)
            error = error_from_code(
                response.error.code, response.error.message, response.error.detail
            )
            if isinstance(error, WrongShard) and keyspace is not None and may_retry():
                attempt += 1
                self._update_map(keyspace, error.detail)
                continue
            if isinstance(error, NotLeader) and may_retry():
                attempt += 1
                hint = error.detail.get("leader_id", 0) if isinstance(error.detail, dict) else 0
                if keyspace is not None and route_key is not None and keyspace in self._maps:
                    self._maps[keyspace].shard(route_key).leader_id = hint
                named = self._address_of(keyspace, hint) if hint else None
                if named is None or named == tuple(address) or named in unreachable:
                    # An election is on, or the replica still names a leader that we asked
                    # or could not reach: wait for the vote.
                    await asyncio.sleep(retry_backoff_s(attempt))
                continue
            if isinstance(error, Unavailable) and idempotent and may_retry():
                attempt += 1  # a replica too stale, or no leader yet: retry at the leader
                await asyncio.sleep(retry_backoff_s(attempt))
                continue
            raise error

    def _address_of(self, keyspace: str | None, node_id: int) -> tuple[str, int] | None:
        known = self._maps.get(keyspace) if keyspace is not None else None
        address = known.nodes.get(str(node_id)) if known is not None else None
        return (address[0], address[1]) if address is not None else None

    async def _map(self, keyspace: str) -> _KeyspaceMap:
        found = self._maps.get(keyspace)
        if found is None:
            raw = await self._send_anywhere(p.GetShardMap(id=0, keyspace=keyspace))
            if raw.error is not None:
                raise error_from_code(raw.error.code, raw.error.message, raw.error.detail)
            found = msgspec.msgpack.decode(raw.result, type=_KeyspaceMap)
            self._maps[keyspace] = found
        return found

    async def _send_anywhere(self, request: p.Request) -> p.RawResponse:
        """Send to the seed node, or, if it cannot be reached, to another known node."""
        candidates = [self.seed]
        for known in self._maps.values():
            candidates += [tuple(a) for a in known.nodes.values()]  # type: ignore[misc]
        last: NotSent | None = None
        for address in dict.fromkeys(candidates):
            try:
                return await self._send(address, request)
            except NotSent as error:
                last = error
        assert last is not None
        raise last

    def _update_map(self, keyspace: str, detail: Any) -> None:
        try:
            self._maps[keyspace] = msgspec.convert(detail, _KeyspaceMap)
        except (msgspec.ValidationError, TypeError):
            self._maps.pop(keyspace, None)

    async def _keyed(
        self, request: p.KeyspaceRequest, key: bytes, result_type: type[T], idempotent: bool
    ) -> T:
        keyspace = request.keyspace
        ks_map = await self._map(keyspace)
        route = ks_map.internal_key(key)
        if isinstance(request, p.ReadRequest):
            self._read_level(request, keyspace, ks_map.shard_of(route))
        result = await self.call(
            request, result_type, idempotent=idempotent, route_key=route, keyspace=keyspace
        )
        version = getattr(result, "version", None)
        if isinstance(version, int) and not isinstance(request, p.ReadRequest):
            self._note_write(keyspace, ks_map.shard_of(route), version)
        return result

    def _note_write(self, keyspace: str, shard_id: int, version: int) -> None:
        key = (keyspace, shard_id)
        if version > self._written.get(key, 0):
            self._written[key] = version

    def _read_level(self, request: p.ReadRequest, keyspace: str, shard_id: int) -> None:
        """Fill in what the request's level needs: the staleness bound, or the version
        of this client's last write to the shard."""
        if request.consistency == "bounded" and not request.max_staleness_ms:
            request.max_staleness_ms = self.max_staleness_ms
        elif request.consistency == "read_your_writes":
            request.min_version = self._written.get((keyspace, shard_id), 0)

    def _ks(self, keyspace: str | None) -> str:
        return keyspace or self.keyspace

    # -- data API ------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self.call(p.Ping(id=0), dict, idempotent=True)

    async def get(
        self,
        key: bytes,
        *,
        keyspace: str | None = None,
        consistency: str | None = None,
        max_staleness_ms: int = 0,
    ) -> bytes | None:
        item = await self.get_item(
            key, keyspace=keyspace, consistency=consistency, max_staleness_ms=max_staleness_ms
        )
        return None if item is None else item.value

    async def get_item(
        self,
        key: bytes,
        *,
        keyspace: str | None = None,
        consistency: str | None = None,
        max_staleness_ms: int = 0,
    ) -> Item | None:
        """The value with its version (for conditional writes and transactions).
        `consistency` overrides the client's default level for this read."""
        request = p.Get(
            id=0,
            keyspace=self._ks(keyspace),
            key=key,
            consistency=consistency or self.consistency,
            max_staleness_ms=max_staleness_ms,
        )
        return await self._keyed(request, key, Stored | None, True)  # type: ignore[arg-type]

    async def multi_get(
        self, keys: list[bytes], *, keyspace: str | None = None, consistency: str | None = None
    ) -> list[bytes | None]:
        items = await self.multi_get_items(keys, keyspace=keyspace, consistency=consistency)
        return [None if item is None else item.value for item in items]

    async def multi_get_items(
        self, keys: list[bytes], *, keyspace: str | None = None, consistency: str | None = None
    ) -> list[Item | None]:
        """Values of many keys, one request per shard (sent to its leader, or for
        non-strong levels, to one of its replicas)."""
        name = self._ks(keyspace)
        ks_map = await self._map(name)
        by_shard: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_shard.setdefault(ks_map.shard_of(ks_map.internal_key(key)), []).append(index)
        results: list[Item | None] = [None] * len(keys)

        async def fetch(positions: list[int]) -> None:
            request = p.MultiGet(
                id=0,
                keyspace=name,
                keys=[keys[i] for i in positions],
                consistency=consistency or self.consistency,
            )
            route = ks_map.internal_key(keys[positions[0]])
            self._read_level(request, name, ks_map.shard_of(route))
            found = await self.call(
                request, list[Stored | None], idempotent=True, route_key=route, keyspace=name
            )
            for position, item in zip(positions, found, strict=True):
                results[position] = item

        await asyncio.gather(*(fetch(positions) for positions in by_shard.values()))
        return results

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        keep_ttl: bool = False,
        if_absent: bool = False,
        if_present: bool = False,
        if_version: int | None = None,
        keyspace: str | None = None,
    ) -> int:
        """Write `value`; returns its version. Conditions that fail raise `Conflict`."""
        result = await self.put_ex(
            key,
            value,
            ttl_ms=ttl_ms,
            keep_ttl=keep_ttl,
            if_absent=if_absent,
            if_present=if_present,
            if_version=if_version,
            keyspace=keyspace,
        )
        return result.version

    async def put_ex(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        keep_ttl: bool = False,
        if_absent: bool = False,
        if_present: bool = False,
        if_version: int | None = None,
        return_previous: bool = False,
        keyspace: str | None = None,
    ) -> p.PutResult:
        request = p.Put(
            id=0,
            keyspace=self._ks(keyspace),
            key=key,
            value=value,
            ttl_ms=ttl_ms,
            keep_ttl=keep_ttl,
            if_absent=if_absent,
            if_present=if_present,
            if_version=if_version,
            return_previous=return_previous,
        )
        return await self._keyed(request, key, p.PutResult, False)

    async def delete(
        self, key: bytes, *, if_version: int | None = None, keyspace: str | None = None
    ) -> bool:
        """Delete `key`; True if it existed."""
        request = p.Delete(id=0, keyspace=self._ks(keyspace), key=key, if_version=if_version)
        result = await self._keyed(request, key, p.DeleteResult, False)
        return result.deleted

    async def incr(self, key: bytes, delta: int = 1, *, keyspace: str | None = None) -> int:
        """Add `delta` to the integer at `key` (absent: 0); returns the new value."""
        request = p.Incr(id=0, keyspace=self._ks(keyspace), key=key, delta=delta)
        result = await self._keyed(request, key, p.IncrResult, False)
        return result.value

    async def expire(self, key: bytes, ttl_ms: int | None, *, keyspace: str | None = None) -> bool:
        """Set (or with None, remove) a key's time to live; False if the key is absent."""
        request = p.Expire(id=0, keyspace=self._ks(keyspace), key=key, ttl_ms=ttl_ms)
        return await self._keyed(request, key, bool, False)

    async def write_batch(
        self, ops: list[p.BatchOp], *, keyspace: str | None = None
    ) -> p.BatchResult:
        """Apply `ops` (BatchPut / BatchDelete / BatchIncr) atomically; all keys must be in
        one shard."""
        if not ops:
            raise InvalidArgument("a batch needs at least one operation")
        request = p.WriteBatch(id=0, keyspace=self._ks(keyspace), ops=ops)
        return await self._keyed(request, ops[0].key, p.BatchResult, False)

    def transaction(self, *, keyspace: str | None = None) -> Transaction:
        """An optimistic read-modify-write transaction over keys of one shard."""
        return Transaction(self, self._ks(keyspace))

    async def run_transaction(
        self,
        body: Callable[[Transaction], Awaitable[T]],
        *,
        attempts: int = 10,
        keyspace: str | None = None,
    ) -> T:
        """Run `body` in a transaction, retrying it on Conflict up to `attempts` times."""
        from spindle.kv.errors import Conflict

        for attempt in range(attempts):
            txn = self.transaction(keyspace=keyspace)
            result = await body(txn)
            try:
                await txn.commit()
                return result
            except Conflict:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def scan_page(
        self,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        prefix: bytes | None = None,
        reverse: bool = False,
        limit: int = 100,
        cursor: bytes | None = None,
        keyspace: str | None = None,
        consistency: str | None = None,
    ) -> p.ScanPage:
        """One page of a scan; pass `page.cursor` back for the next (None: done)."""
        name = self._ks(keyspace)
        ks_map = await self._map(name)
        if cursor is not None:
            route = cursor
        elif ks_map.partitioning == "hash":
            route = b"\xff" * 8 if reverse else b""
        elif reverse:
            route = end if end is not None else b"\xff" * (limits.KEY_BYTES_MAX + 1)
        else:
            route = prefix if prefix is not None else (start or b"")
        request = p.Scan(
            id=0,
            keyspace=name,
            start=start,
            end=end,
            prefix=prefix,
            reverse=reverse,
            limit=limit,
            cursor=cursor,
            consistency=consistency or self.consistency,
        )
        self._read_level(request, name, ks_map.shard_of(route))
        return await self.call(request, p.ScanPage, idempotent=True, route_key=route, keyspace=name)

    async def scan(
        self,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        prefix: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
        page_size: int = 256,
        keyspace: str | None = None,
    ) -> AsyncIterator[p.ScanItem]:
        """Every live key in range (or with prefix), across shards, page by page. Range
        keyspaces yield keys in order; hash keyspaces in hash order."""
        remaining = limit
        cursor: bytes | None = None
        while True:
            size = page_size if remaining is None else min(page_size, remaining)
            if size <= 0:
                return
            page = await self.scan_page(
                start=start,
                end=end,
                prefix=prefix,
                reverse=reverse,
                limit=size,
                cursor=cursor,
                keyspace=keyspace,
            )
            for item in page.items:
                yield item
            if remaining is not None:
                remaining -= len(page.items)
            if page.cursor is None:
                return
            if not page.items and page.cursor == cursor:
                raise Unavailable(f"scan made no progress at cursor {cursor!r}")
            cursor = page.cursor

    async def delete_range(
        self,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        prefix: bytes | None = None,
        keyspace: str | None = None,
    ) -> int:
        """Delete every key in [start, end) or with `prefix`; returns the count, or -1 when
        range tombstones made counting needless."""
        name = self._ks(keyspace)
        request = p.DeleteRangeReq(id=0, keyspace=name, start=start, end=end, prefix=prefix)
        result = await self.call(request, p.DeleteRangeResult, idempotent=True, keyspace=name)
        return result.deleted

    # -- admin ---------------------------------------------------------------------------

    async def create_keyspace(
        self,
        name: str,
        *,
        shards: int = 8,
        partitioning: str = "hash",
        split_points: list[bytes] | None = None,
    ) -> p.KeyspaceSummary:
        request = p.CreateKeyspace(
            id=0, name=name, shards=shards, partitioning=partitioning, split_points=split_points
        )
        return await self.call(request, p.KeyspaceSummary, idempotent=False)

    async def list_keyspaces(self) -> list[p.KeyspaceSummary]:
        return await self.call(p.ListKeyspaces(id=0), list[p.KeyspaceSummary], idempotent=True)

    async def status(self) -> dict[str, Any]:
        return await self.call(p.Status(id=0), dict, idempotent=True)

    # -- tenants (admin credential) --------------------------------------------------------

    async def create_tenant(self, name: str, quota: Quota | None = None) -> p.TenantCredentials:
        request = p.CreateTenant(id=0, name=name, quota=quota)
        return await self.call(request, p.TenantCredentials, idempotent=False)

    async def list_tenants(self) -> list[p.TenantSummary]:
        return await self.call(p.ListTenants(id=0), list[p.TenantSummary], idempotent=True)

    async def set_quota(
        self, tenant: str, quota: Quota | None, *, keyspace: str | None = None
    ) -> p.TenantSummary:
        request = p.SetQuota(id=0, tenant=tenant, quota=quota, keyspace=keyspace)
        return await self.call(request, p.TenantSummary, idempotent=True)

    async def delete_tenant(self, name: str) -> bool:
        return await self.call(p.DeleteTenant(id=0, name=name), bool, idempotent=False)

    async def rotate_token(self, tenant: str) -> p.TenantCredentials:
        request = p.RotateToken(id=0, tenant=tenant)
        return await self.call(request, p.TenantCredentials, idempotent=False)


class Transaction:
    """Reads record the version they saw; writes are buffered; `commit` sends both and
    fails with `Conflict` if any key read has changed since. Reads see the transaction's
    own buffered writes. Every key must belong to one shard."""

    def __init__(self, client: AsyncClient, keyspace: str) -> None:
        self.client = client
        self.keyspace = keyspace
        self.reads: dict[bytes, int] = {}
        self.writes: dict[bytes, p.BatchOp] = {}
        self.committed: p.BatchResult | None = None

    async def get(self, key: bytes) -> bytes | None:
        buffered = self.writes.get(key)
        if isinstance(buffered, p.BatchPut):
            return buffered.value
        if isinstance(buffered, p.BatchDelete):
            return None
        if isinstance(buffered, p.BatchIncr):
            raise InvalidArgument("read of a key incremented in this transaction")
        item = await self.client.get_item(key, keyspace=self.keyspace)
        self.reads.setdefault(key, 0 if item is None else item.version)
        return None if item is None else item.value

    def put(self, key: bytes, value: bytes, *, ttl_ms: int | None = None) -> None:
        self.writes[key] = p.BatchPut(key=key, value=value, ttl_ms=ttl_ms)

    def delete(self, key: bytes) -> None:
        self.writes[key] = p.BatchDelete(key=key)

    async def commit(self) -> p.BatchResult:
        if self.committed is not None:
            raise InvalidArgument("transaction already committed")
        keys = list(self.reads) + list(self.writes)
        if not keys:
            raise InvalidArgument("empty transaction")
        request = p.Txn(
            id=0,
            keyspace=self.keyspace,
            reads=list(self.reads.items()),
            ops=list(self.writes.values()),
        )
        self.committed = await self.client._keyed(request, keys[0], p.BatchResult, False)
        return self.committed

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc_type is None and self.committed is None:
            await self.commit()


def connect(
    address: str | None = None,
    *,
    keyspace: str = "default",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    tenant: str | None = None,
    token: str | None = None,
    consistency: str = "strong",
    max_staleness_ms: int = 0,
) -> AsyncClient:
    """An asyncio client; use as `async with spindle.connect(...) as kv`. Without a token
    (argument or SPINDLE_TOKEN) a loopback client acts as the default tenant.
    `consistency` is the default read level (see `AsyncClient`)."""
    return AsyncClient(
        address,
        keyspace=keyspace,
        timeout_s=timeout_s,
        tenant=tenant,
        token=token,
        consistency=consistency,
        max_staleness_ms=max_staleness_ms,
    )


class Client:
    """Blocking client: the asyncio client on a private event loop in a daemon thread."""

    def __init__(
        self,
        address: str | None = None,
        *,
        keyspace: str = "default",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tenant: str | None = None,
        token: str | None = None,
        consistency: str = "strong",
        max_staleness_ms: int = 0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._timeout_s = timeout_s
        self.aio = AsyncClient(
            address,
            keyspace=keyspace,
            timeout_s=timeout_s,
            tenant=tenant,
            token=token,
            consistency=consistency,
            max_staleness_ms=max_staleness_ms,
        )
        try:
            self._run(self.aio.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        # Retries stop after the budget, but the attempt under way may take a connect and a
        # request timeout, and a backoff.
        return future.result(limits.CLIENT_RETRY_BUDGET_S + 2 * self._timeout_s + 1.0)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            if hasattr(self, "aio"):
                asyncio.run_coroutine_threadsafe(self.aio.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def ping(self) -> dict[str, Any]:
        return self._run(self.aio.ping())

    def get(self, key: bytes, **options: Any) -> bytes | None:
        """Options as `AsyncClient.get`: keyspace, consistency, max_staleness_ms."""
        return self._run(self.aio.get(key, **options))

    def get_item(self, key: bytes, **options: Any) -> Item | None:
        return self._run(self.aio.get_item(key, **options))

    def multi_get(self, keys: list[bytes], **options: Any) -> list[bytes | None]:
        return self._run(self.aio.multi_get(keys, **options))

    def put(self, key: bytes, value: bytes, **options: Any) -> int:
        return self._run(self.aio.put(key, value, **options))

    def delete(self, key: bytes, **options: Any) -> bool:
        return self._run(self.aio.delete(key, **options))

    def incr(self, key: bytes, delta: int = 1, *, keyspace: str | None = None) -> int:
        return self._run(self.aio.incr(key, delta, keyspace=keyspace))

    def expire(self, key: bytes, ttl_ms: int | None, *, keyspace: str | None = None) -> bool:
        return self._run(self.aio.expire(key, ttl_ms, keyspace=keyspace))

    def write_batch(self, ops: list[p.BatchOp], *, keyspace: str | None = None) -> p.BatchResult:
        return self._run(self.aio.write_batch(ops, keyspace=keyspace))

    def scan_page(self, **options: Any) -> p.ScanPage:
        return self._run(self.aio.scan_page(**options))

    def scan(self, **options: Any) -> Iterator[p.ScanItem]:
        page_size = options.pop("page_size", 256)
        limit = options.pop("limit", None)
        cursor: bytes | None = None
        yielded = 0
        while limit is None or yielded < limit:
            size = page_size if limit is None else min(page_size, limit - yielded)
            page = self.scan_page(limit=size, cursor=cursor, **options)
            yield from page.items
            yielded += len(page.items)
            if page.cursor is None:
                return
            if not page.items and page.cursor == cursor:
                raise Unavailable(f"scan made no progress at cursor {cursor!r}")
            cursor = page.cursor

    def delete_range(self, **options: Any) -> int:
        return self._run(self.aio.delete_range(**options))

    def create_keyspace(self, name: str, **options: Any) -> p.KeyspaceSummary:
        return self._run(self.aio.create_keyspace(name, **options))

    def list_keyspaces(self) -> list[p.KeyspaceSummary]:
        return self._run(self.aio.list_keyspaces())

    def status(self) -> dict[str, Any]:
        return self._run(self.aio.status())

    def create_tenant(self, name: str, quota: Quota | None = None) -> p.TenantCredentials:
        return self._run(self.aio.create_tenant(name, quota))

    def list_tenants(self) -> list[p.TenantSummary]:
        return self._run(self.aio.list_tenants())

    def set_quota(
        self, tenant: str, quota: Quota | None, *, keyspace: str | None = None
    ) -> p.TenantSummary:
        return self._run(self.aio.set_quota(tenant, quota, keyspace=keyspace))

    def delete_tenant(self, name: str) -> bool:
        return self._run(self.aio.delete_tenant(name))

    def rotate_token(self, tenant: str) -> p.TenantCredentials:
        return self._run(self.aio.rotate_token(tenant))


__all__ = [
    "AsyncClient",
    "Client",
    "Item",
    "SpindleError",
    "Transaction",
    "connect",
]
