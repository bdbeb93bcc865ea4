"""A storage node: hosts shard replicas, routes requests to them, persists the catalog.

The node is the store's semantics without the network: the server hands it decoded
requests and gets back either a result or a future (writes, and reads that must wait for a
write they observed to become durable). Tests and the simulator drive it directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.commands import (
    Batch,
    DeleteOp,
    DeleteRange,
    Entry,
    ExpireOp,
    IncrOp,
    Purge,
    PutOp,
    WriteOp,
)
from spindle.kv.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TooLarge,
    UnknownOperation,
    WrongShard,
)
from spindle.kv.groupcommit import GroupCommitter
from spindle.kv.keys import (
    CATALOG_KEY,
    HASH_PREFIX_BYTES,
    keyspace_prefix,
    prefix_end,
    split_ttl_key,
)
from spindle.kv.shard import LocalLog, Shard
from spindle.kv.shardmap import (
    DEFAULT_KEYSPACE,
    DEFAULT_SHARDS,
    DEFAULT_TENANT,
    Catalog,
    KeyspaceInfo,
    NodeInfo,
    Partitioning,
    ShardInfo,
)
from spindle.kv.statemachine import ShardState
from spindle.kv.storage import CF, Engine
from spindle.kv.tenancy import (
    ADMIN_TENANT,
    QuotaEnforcer,
    hash_token,
    new_token,
    token_matches,
)
from spindle.kv.values import Stored

Result = Any
"""A plain result, an asyncio.Future of one, or a coroutine producing one."""

_catalog_encoder = msgspec.msgpack.Encoder()
_catalog_decoder = msgspec.msgpack.Decoder(Catalog)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    def __init__(
        self,
        engine: Engine,
        *,
        node_id: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.committer = GroupCommitter(engine)
        self.engine = self.committer.engine
        """What the node reads and writes through: writes queue here and reach `engine`
        as one batch per group commit."""
        self.node_id = node_id
        self.clock_ms = clock_ms
        self.shards: dict[int, Shard] = {}
        self.started_at_ms = clock_ms()
        raw = engine.get(CF.META, CATALOG_KEY)
        self.catalog = Catalog() if raw is None else _catalog_decoder.decode(raw)
        self.catalog.nodes[node_id] = NodeInfo(node_id, host, port)
        if DEFAULT_TENANT not in self.catalog.tenants:
            self.catalog.add_tenant(DEFAULT_TENANT)
        self.quotas = QuotaEnforcer(lambda: self.clock_ms() / 1000)
        for tenant in self.catalog.tenants.values():
            self.quotas.set_quota(tenant.name, tenant.quota)
            for keyspace_name, quota in tenant.keyspace_quotas.items():
                self.quotas.set_quota(tenant.name, quota, keyspace_name)
        for keyspace, info in self.catalog.shards():
            if info.node_id == node_id:
                self._open_shard(keyspace, info)
        self._handlers: dict[type[p.Request], Callable[[str, Any], Result]] = {
            p.Ping: self._ping,
            p.GetShardMap: self._shard_map,
            p.Get: self._get,
            p.MultiGet: self._multi_get,
            p.Put: self._put,
            p.Delete: self._delete,
            p.Incr: self._incr,
            p.Expire: self._expire,
            p.WriteBatch: self._batch,
            p.Txn: self._txn,
            p.Scan: self._scan,
            p.DeleteRangeReq: self._delete_range,
            p.CreateKeyspace: self._create_keyspace,
            p.ListKeyspaces: self._list_keyspaces,
            p.Status: self._status,
            p.CreateTenant: self._create_tenant,
            p.ListTenants: self._list_tenants,
            p.SetQuota: self._set_quota,
            p.DeleteTenant: self._delete_tenant,
            p.RotateToken: self._rotate_token,
        }
        self.ops_served: dict[str, int] = {}
        self._read_seq = 0

    def set_address(self, host: str, port: int) -> None:
        self.catalog.nodes[self.node_id] = NodeInfo(self.node_id, host, port)

    # -- lifecycle -----------------------------------------------------------------------

    async def ensure_default_keyspace(self) -> None:
        if f"{DEFAULT_TENANT}/{DEFAULT_KEYSPACE}" not in self.catalog.keyspaces:
            await self.create_keyspace(DEFAULT_TENANT, DEFAULT_KEYSPACE, DEFAULT_SHARDS)

    async def create_keyspace(
        self,
        tenant: str,
        name: str,
        shards: int = DEFAULT_SHARDS,
        partitioning: Partitioning = Partitioning.HASH,
        split_points: list[bytes] | None = None,
    ) -> KeyspaceInfo:
        keyspace = self.catalog.create_keyspace(
            tenant,
            name,
            shards=shards,
            partitioning=partitioning,
            split_points=split_points,
            node_id=self.node_id,
        )
        for info in keyspace.shards:
            self._open_shard(keyspace, info)
        self._persist_catalog()
        await self.committer.after_durable(None)
        return keyspace

    def _persist_catalog(self) -> None:
        batch = self.engine.new_batch()
        batch.put(CF.META, CATALOG_KEY, _catalog_encoder.encode(self.catalog))
        self.committer.write(batch)

    def _open_shard(self, keyspace: KeyspaceInfo, info: ShardInfo) -> None:
        state = ShardState(
            self.engine,
            keyspace.keyspace_id,
            info.shard_id,
            self.committer.write,
            key_offset=HASH_PREFIX_BYTES if keyspace.partitioning is Partitioning.HASH else 0,
        )
        self.shards[info.shard_id] = Shard(keyspace, info, state, LocalLog(state, self.committer))

    async def close(self) -> None:
        await self.committer.drain()
        self.committer.close()

    # -- dispatch ------------------------------------------------------------------------

    def execute(self, tenant: str, request: p.Request) -> Result:
        """Run one request for `tenant`: access control, quota admission, then the
        handler. Raises SpindleError, or returns a result / future / coroutine."""
        kind = type(request)
        handler = self._handlers.get(kind)
        if handler is None:
            raise UnknownOperation(f"unknown operation {kind.__name__}")
        if kind in ADMIN_REQUESTS:
            if tenant != ADMIN_TENANT:
                self._refuse(tenant)
                raise PermissionDenied("tenant management needs the admin credential")
            return handler(tenant, request)
        if tenant == ADMIN_TENANT and kind not in SHARED_REQUESTS:
            raise PermissionDenied(
                "the admin credential manages tenants; authenticate as a tenant for data"
            )
        try:
            if kind in READ_REQUESTS:
                assert isinstance(request, p.KeyspaceRequest)
                ops = len(request.keys) if isinstance(request, p.MultiGet) else 1
                self.quotas.admit_read(tenant, request.keyspace, ops)
                self._read_seq = 0
                value = handler(tenant, request)
                self.quotas.charge_read_bytes(tenant, request.keyspace, _result_bytes(value))
                return self._read_result(value)
            if kind in WRITE_REQUESTS:
                assert isinstance(request, p.KeyspaceRequest)
                ops, nbytes = _write_cost(request)
                self.quotas.admit_write(tenant, request.keyspace, nbytes, ops)
                if nbytes:
                    self._check_stored_bytes(tenant, request.keyspace, nbytes)
            return handler(tenant, request)
        except NotFound:
            self._refuse(tenant)
            raise

    def _refuse(self, tenant: str) -> None:
        self.quotas.tenant_usage(tenant).refused += 1

    def _check_stored_bytes(self, tenant: str, keyspace_name: str, incoming: int) -> None:
        info = self.catalog.tenants.get(tenant)
        if info is None:
            return
        scopes: list[tuple[str, int, list[KeyspaceInfo]]] = []
        if info.quota is not None and info.quota.stored_bytes is not None:
            owned = [ks for ks in self.catalog.keyspaces.values() if ks.tenant == tenant]
            scopes.append(("tenant", info.quota.stored_bytes, owned))
        ks_quota = info.keyspace_quotas.get(keyspace_name)
        if ks_quota is not None and ks_quota.stored_bytes is not None:
            keyspace = self.catalog.keyspaces.get(f"{tenant}/{keyspace_name}")
            scopes.append(("keyspace", ks_quota.stored_bytes, [keyspace] if keyspace else []))
        for scope, limit, keyspaces in scopes:
            used = self.stored_bytes(keyspaces)
            if used + incoming > limit:
                self.quotas.tenant_usage(tenant).throttled += 1
                raise QuotaExceeded(
                    f"{scope} stored-bytes quota of {limit} bytes would be exceeded "
                    f"({used} stored, {incoming} more)",
                    detail={"stored_bytes": used, "limit": limit},
                )

    def stored_bytes(self, keyspaces: list[KeyspaceInfo]) -> int:
        return sum(
            self.shards[s.shard_id].state.stored_bytes
            for ks in keyspaces
            for s in ks.shards
            if s.shard_id in self.shards
        )

    # -- tenants -------------------------------------------------------------------------

    def bootstrap_credentials(self) -> dict[str, str]:
        """Create the admin token and the default tenant's token if they do not exist yet.
        Returns the tokens created (the only time they exist in plain text)."""
        created: dict[str, str] = {}
        if not self.catalog.admin_token_hash:
            created[ADMIN_TENANT] = token = new_token()
            self.catalog.admin_token_hash = hash_token(token)
        default = self.catalog.tenants[DEFAULT_TENANT]
        if not default.token_hash:
            created[DEFAULT_TENANT] = token = new_token()
            default.token_hash = hash_token(token)
        if created:
            self._persist_catalog()
        return created

    def authenticate(self, tenant: str, token: str) -> bool:
        if tenant == ADMIN_TENANT:
            stored = self.catalog.admin_token_hash
        else:
            info = self.catalog.tenants.get(tenant)
            stored = info.token_hash if info is not None else ""
        ok = bool(stored) and token_matches(token, stored)
        if not ok:
            self._refuse(tenant)
        return ok

    def _create_tenant(self, tenant: str, request: p.CreateTenant) -> Result:
        if request.quota is not None:
            request.quota.check()
        info = self.catalog.add_tenant(request.name)
        token = new_token()
        info.token_hash = hash_token(token)
        info.quota = request.quota
        self.quotas.set_quota(info.name, info.quota)
        return self._create_tenant_async(info.name, token)

    async def _create_tenant_async(self, name: str, token: str) -> p.TenantCredentials:
        """Every tenant starts with a `default` keyspace, so a new tenant can write at
        once (over RESP, too)."""
        await self.create_keyspace(name, DEFAULT_KEYSPACE, DEFAULT_SHARDS)
        return p.TenantCredentials(name, token)

    def _rotate_token(self, tenant: str, request: p.RotateToken) -> Result:
        token = new_token()
        if request.tenant == ADMIN_TENANT:
            self.catalog.admin_token_hash = hash_token(token)
        else:
            info = self.catalog.tenants.get(request.tenant)
            if info is None:
                raise NotFound(f"tenant {request.tenant!r} does not exist")
            info.token_hash = hash_token(token)
        self._persist_catalog()
        return self.committer.after_durable(p.TenantCredentials(request.tenant, token))

    def _set_quota(self, tenant: str, request: p.SetQuota) -> Result:
        info = self.catalog.tenants.get(request.tenant)
        if info is None:
            raise NotFound(f"tenant {request.tenant!r} does not exist")
        if request.quota is not None:
            request.quota.check()
        if request.keyspace is None:
            info.quota = request.quota
        elif request.quota is None:
            info.keyspace_quotas.pop(request.keyspace, None)
        else:
            self.catalog.keyspace(request.tenant, request.keyspace)
            info.keyspace_quotas[request.keyspace] = request.quota
        self.quotas.set_quota(request.tenant, request.quota, request.keyspace)
        self._persist_catalog()
        return self.committer.after_durable(self._tenant_summary(info.name))

    def _delete_tenant(self, tenant: str, request: p.DeleteTenant) -> Result:
        if request.name == DEFAULT_TENANT:
            raise InvalidArgument("the default tenant cannot be deleted")
        for keyspace in self.catalog.drop_tenant(request.name):
            batch = self.engine.new_batch()
            prefix = keyspace_prefix(keyspace.keyspace_id)
            end = keyspace_prefix(keyspace.keyspace_id + 1)
            batch.delete_range(CF.DATA, prefix, end)
            batch.delete_range(CF.TTL, prefix, end)
            for info in keyspace.shards:
                self.shards.pop(info.shard_id, None)
            self.committer.write(batch)
        self._persist_catalog()
        return self.committer.after_durable(True)

    def _list_tenants(self, tenant: str, request: p.ListTenants) -> Result:
        return [self._tenant_summary(name) for name in sorted(self.catalog.tenants)]

    def _tenant_summary(self, name: str) -> p.TenantSummary:
        info = self.catalog.tenants[name]
        owned = [ks for ks in self.catalog.keyspaces.values() if ks.tenant == name]
        return p.TenantSummary(
            name,
            info.quota,
            dict(info.keyspace_quotas),
            sorted(ks.name for ks in owned),
            self.stored_bytes(owned),
            msgspec.structs.asdict(self.quotas.tenant_usage(name)),
        )

    # -- routing -------------------------------------------------------------------------

    def keyspace(self, tenant: str, name: str, epoch: int = 0) -> KeyspaceInfo:
        keyspace = self.catalog.keyspace(tenant, name)
        if epoch and epoch != keyspace.epoch:
            raise WrongShard(
                f"stale shard map for keyspace {name!r}: epoch {epoch}, current {keyspace.epoch}",
                detail=keyspace_map(keyspace, self.catalog),
            )
        return keyspace

    def shard_for(self, keyspace: KeyspaceInfo, internal_key: bytes) -> Shard:
        info = keyspace.shard_for(internal_key)
        shard = self.shards.get(info.shard_id)
        if shard is None:
            raise WrongShard(
                f"shard {info.shard_id} is not on node {self.node_id}",
                detail=keyspace_map(keyspace, self.catalog),
            )
        return shard

    def _one_shard(self, keyspace: KeyspaceInfo, internal_keys: list[bytes]) -> Shard:
        shard = self.shard_for(keyspace, internal_keys[0])
        for key in internal_keys[1:]:
            if not shard.info.contains(key):
                raise InvalidArgument(
                    "a batch or transaction must stay within one shard: keys "
                    f"{keyspace.user_key(internal_keys[0])!r} and {keyspace.user_key(key)!r} "
                    "are in different shards"
                )
        return shard

    def _read_result(self, value: Any) -> Result:
        """Answer a read, after the writes it may have observed (those of the shards it
        read, noted in `_read_seq`) are durable."""
        seq, self._read_seq = self._read_seq, 0
        return self.committer.after_seq(seq, value)

    def _note_read(self, shard: Shard) -> Shard:
        if shard.state.last_write_seq > self._read_seq:
            self._read_seq = shard.state.last_write_seq
        return shard

    # -- handlers ------------------------------------------------------------------------

    def _ping(self, tenant: str, request: p.Ping) -> Result:
        return {"node_id": self.node_id, "protocol": p.PROTOCOL_VERSION}

    def _shard_map(self, tenant: str, request: p.GetShardMap) -> Result:
        if request.keyspace is not None:
            return keyspace_map(self.keyspace(tenant, request.keyspace), self.catalog)
        return {
            "epoch": self.catalog.epoch,
            "keyspaces": [
                keyspace_map(ks, self.catalog)
                for ks in self.catalog.keyspaces.values()
                if ks.tenant == tenant
            ],
        }

    def _get(self, tenant: str, request: p.Get) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        check_key(request.key)
        internal_key = keyspace.internal_key(request.key)
        shard = self._note_read(self.shard_for(keyspace, internal_key))
        return shard.state.get(internal_key, self.clock_ms())

    def _multi_get(self, tenant: str, request: p.MultiGet) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        check_count(len(request.keys), "keys")
        now_ms = self.clock_ms()
        found: list[Stored | None] = []
        for key in request.keys:
            check_key(key)
            internal_key = keyspace.internal_key(key)
            shard = self._note_read(self.shard_for(keyspace, internal_key))
            found.append(shard.state.get(internal_key, now_ms))
        return found

    def _propose(
        self,
        shard: Shard,
        command: Batch | DeleteRange | Purge,
        finish: Callable[[int, Any], Any] | None = None,
    ) -> asyncio.Future[Any]:
        entry = Entry(self.clock_ms(), command)
        return shard.propose(entry) if finish is None else shard.propose(entry, finish)

    def _put(self, tenant: str, request: p.Put) -> Result:
        check_key(request.key)
        check_value(request.value)
        if request.if_absent and request.if_present:
            raise InvalidArgument("if_absent and if_present exclude each other")
        if request.keep_ttl and request.ttl_ms is not None:
            raise InvalidArgument("keep_ttl and ttl_ms exclude each other")
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        internal_key = keyspace.internal_key(request.key)
        op = PutOp(
            internal_key,
            request.value,
            self._expire_at(request.ttl_ms),
            request.keep_ttl,
            request.if_absent,
            request.if_version,
            request.if_present,
        )
        shard = self.shard_for(keyspace, internal_key)
        return self._propose(
            shard,
            Batch([op], return_previous=request.return_previous),
            lambda index, results: _put_result(index, results[0]),
        )

    def _delete(self, tenant: str, request: p.Delete) -> Result:
        check_key(request.key)
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        internal_key = keyspace.internal_key(request.key)
        shard = self.shard_for(keyspace, internal_key)
        op = DeleteOp(internal_key, request.if_version)
        return self._propose(
            shard,
            Batch([op], return_previous=request.return_previous),
            lambda index, results: _delete_result(index, results[0]),
        )

    def _incr(self, tenant: str, request: p.Incr) -> Result:
        check_key(request.key)
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        internal_key = keyspace.internal_key(request.key)
        shard = self.shard_for(keyspace, internal_key)
        return self._propose(
            shard,
            Batch([IncrOp(internal_key, request.delta)]),
            lambda index, results: p.IncrResult(results[0], index),
        )

    def _expire(self, tenant: str, request: p.Expire) -> Result:
        check_key(request.key)
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        internal_key = keyspace.internal_key(request.key)
        shard = self.shard_for(keyspace, internal_key)
        op = ExpireOp(internal_key, self._expire_at(request.ttl_ms))
        return self._propose(shard, Batch([op]), lambda index, results: bool(results[0]))

    def _batch_ops(self, keyspace: KeyspaceInfo, ops: list[p.BatchOp]) -> list[WriteOp]:
        check_count(len(ops), "operations")
        converted: list[WriteOp] = []
        for op in ops:
            check_key(op.key)
            internal_key = keyspace.internal_key(op.key)
            if isinstance(op, p.BatchPut):
                check_value(op.value)
                converted.append(
                    PutOp(
                        internal_key,
                        op.value,
                        self._expire_at(op.ttl_ms),
                        if_absent=op.if_absent,
                        if_version=op.if_version,
                    )
                )
            elif isinstance(op, p.BatchDelete):
                converted.append(DeleteOp(internal_key, op.if_version))
            else:
                converted.append(IncrOp(internal_key, op.delta))
        return converted

    def _batch(self, tenant: str, request: p.WriteBatch) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        ops = self._batch_ops(keyspace, request.ops)
        if not ops:
            raise InvalidArgument("a batch needs at least one operation")
        shard = self._one_shard(keyspace, [op.key for op in ops])
        return self._propose(
            shard, Batch(ops), lambda index, results: p.BatchResult(index, results)
        )

    def _txn(self, tenant: str, request: p.Txn) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        ops = self._batch_ops(keyspace, request.ops)
        check_count(len(request.reads) + len(ops), "reads and operations")
        reads = []
        for key, version in request.reads:
            check_key(key)
            if version < 0:
                raise InvalidArgument(f"a version is >= 0, got {version}")
            reads.append((keyspace.internal_key(key), version))
        keys = [key for key, _ in reads] + [op.key for op in ops]
        if not keys:
            raise InvalidArgument("a transaction needs at least one read or write")
        shard = self._one_shard(keyspace, keys)
        return self._propose(
            shard, Batch(ops, reads=reads), lambda index, results: p.BatchResult(index, results)
        )

    def _scan(self, tenant: str, request: p.Scan) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        if not 1 <= request.limit <= limits.SCAN_LIMIT_MAX:
            raise InvalidArgument(f"limit must be in 1..{limits.SCAN_LIMIT_MAX}")
        user_start, user_end = user_range(request.start, request.end, request.prefix)
        keep: Callable[[bytes], bool] | None = None
        if keyspace.partitioning is Partitioning.HASH:
            lo: bytes = b""
            hi: bytes | None = None
            if user_start or user_end is not None:

                def keep(internal_key: bytes) -> bool:
                    user_key = internal_key[4:]
                    return user_key >= user_start and (user_end is None or user_key < user_end)

        else:
            lo, hi = user_start, user_end
        if request.cursor is not None:
            if request.reverse:
                hi = request.cursor if hi is None else min(hi, request.cursor)
            else:
                lo = max(lo, request.cursor)
        return self._scan_shards(keyspace, lo, hi, request.reverse, request.limit, keep)

    def _scan_shards(
        self,
        keyspace: KeyspaceInfo,
        lo: bytes,
        hi: bytes | None,
        reverse: bool,
        limit: int,
        keep: Callable[[bytes], bool] | None,
    ) -> p.ScanPage:
        items: list[p.ScanItem] = []
        if hi is not None and lo >= hi:
            return p.ScanPage(items, None)
        now_ms = self.clock_ms()
        page_bytes = 0
        shards = keyspace.shards
        if reverse:
            index = len(shards) - 1 if hi is None else keyspace.shard_index(hi)
            if hi is not None and index > 0 and hi <= shards[index].start:
                index -= 1
            order = range(index, -1, -1)
        else:
            order = range(keyspace.shard_index(lo), len(shards))
        user_key = keyspace.user_key
        for index in order:
            info = shards[index]
            start = max(lo, info.start)
            end = _min_end(hi, info.end)
            if end is not None and start >= end:
                break
            shard = self.shards.get(info.shard_id)
            if shard is None:
                # Another node serves the rest: hand the client a cursor at the boundary.
                return p.ScanPage(items, end if reverse else start)
            self._note_read(shard)
            for internal_key, stored in shard.state.scan(
                start, end, reverse=reverse, now_ms=now_ms, keep=keep
            ):
                items.append(
                    p.ScanItem(
                        user_key(internal_key), stored.value, stored.version, stored.expire_at_ms
                    )
                )
                page_bytes += len(internal_key) + len(stored.value)
                if len(items) >= limit or page_bytes >= limits.SCAN_BYTES_MAX:
                    cursor = internal_key if reverse else internal_key + b"\x00"
                    return p.ScanPage(items, cursor)
        return p.ScanPage(items, None)

    def _delete_range(self, tenant: str, request: p.DeleteRangeReq) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        user_start, user_end = user_range(request.start, request.end, request.prefix)
        if request.start is None and request.end is None and request.prefix is None:
            raise InvalidArgument("delete_range needs start, end or prefix")
        return self._delete_range_async(keyspace, user_start, user_end)

    async def _delete_range_async(
        self, keyspace: KeyspaceInfo, user_start: bytes, user_end: bytes | None
    ) -> p.DeleteRangeResult:
        hashed = keyspace.partitioning is Partitioning.HASH
        lo, hi = (b"", None) if hashed else (user_start, user_end)
        total = 0
        for info in list(keyspace.shards):
            start = max(lo, info.start)
            end = _min_end(hi, info.end)
            if end is not None and start >= end:
                continue
            shard = self.shard_for(keyspace, start)
            engine_end = end if end is not None else b"\xff" * (limits.KEY_BYTES_MAX + 5)
            command = (
                DeleteRange(start, engine_end, user_start, user_end)
                if hashed
                else DeleteRange(start, engine_end)
            )
            while True:
                _, (deleted, more) = await self._propose(shard, command)
                total += deleted
                if not more:
                    break
        return p.DeleteRangeResult(total)

    def _create_keyspace(self, tenant: str, request: p.CreateKeyspace) -> Result:
        try:
            partitioning = Partitioning(request.partitioning)
        except ValueError:
            raise InvalidArgument(
                f"partitioning must be 'hash' or 'range', got {request.partitioning!r}"
            ) from None
        return self._create_keyspace_async(tenant, request, partitioning)

    async def _create_keyspace_async(
        self, tenant: str, request: p.CreateKeyspace, partitioning: Partitioning
    ) -> p.KeyspaceSummary:
        keyspace = await self.create_keyspace(
            tenant, request.name, request.shards, partitioning, request.split_points
        )
        return summarize(keyspace)

    def _list_keyspaces(self, tenant: str, request: p.ListKeyspaces) -> Result:
        return [summarize(ks) for ks in self.catalog.keyspaces.values() if ks.tenant == tenant]

    def _status(self, tenant: str, request: p.Status) -> Result:
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "uptime_s": (self.clock_ms() - self.started_at_ms) / 1000,
            "catalog_epoch": self.catalog.epoch,
            "engine_bytes": self.engine.approximate_bytes(),
            "writes": self.committer.written_seq,
            "fsyncs": self.committer.syncs,
            "tenants": {
                name: {
                    **msgspec.structs.asdict(self.quotas.tenant_usage(name)),
                    "stored_bytes": self.stored_bytes(
                        [ks for ks in self.catalog.keyspaces.values() if ks.tenant == name]
                    ),
                }
                for name in sorted(self.catalog.tenants)
            },
            "keyspaces": [
                {
                    **msgspec.to_builtins(summarize(ks)),
                    "tenant": ks.tenant,
                    "shard_list": [
                        {
                            "shard_id": info.shard_id,
                            "node_id": info.node_id,
                            "epoch": info.epoch,
                            "applied_index": self.shards[info.shard_id].state.applied_index
                            if info.shard_id in self.shards
                            else None,
                        }
                        for info in ks.shards
                    ],
                }
                for ks in self.catalog.keyspaces.values()
            ],
        }

    # -- TTL -----------------------------------------------------------------------------

    def _expire_at(self, ttl_ms: int | None) -> int:
        if ttl_ms is None:
            return 0
        if not 1 <= ttl_ms <= limits.TTL_MS_MAX:
            raise InvalidArgument(f"ttl_ms must be in 1..{limits.TTL_MS_MAX}, got {ttl_ms}")
        return self.clock_ms() + ttl_ms

    async def purge_expired(self) -> int:
        """One pass of the background purger: propose deletion of keys whose expiry passed,
        at most `limits.TTL_PURGE_KEYS_PER_PASS_MAX` per shard. Returns keys purged."""
        now_ms = self.clock_ms()
        purged = 0
        for keyspace in list(self.catalog.keyspaces.values()):
            prefix = keyspace_prefix(keyspace.keyspace_id)
            upto = prefix + (now_ms + 1).to_bytes(8, "big")
            per_shard: dict[int, list[tuple[bytes, int]]] = {}
            for raw_key, _ in self.engine.scan(CF.TTL, prefix, upto):
                expire_at_ms, internal_key = split_ttl_key(raw_key)
                info = keyspace.shard_for(internal_key)
                if info.shard_id not in self.shards:
                    continue
                bucket = per_shard.setdefault(info.shard_id, [])
                if len(bucket) < limits.TTL_PURGE_KEYS_PER_PASS_MAX:
                    bucket.append((internal_key, expire_at_ms))
            for shard_id, keys in per_shard.items():
                _, count = await self._propose(self.shards[shard_id], Purge(keys))
                purged += count
        return purged


# -- helpers -----------------------------------------------------------------------------


def _put_result(index: int, previous: Any) -> p.PutResult:
    if isinstance(previous, Stored):
        return p.PutResult(index, True, previous)
    return p.PutResult(index, bool(previous))


def _delete_result(index: int, previous: Any) -> p.DeleteResult:
    if isinstance(previous, Stored):
        return p.DeleteResult(True, index, previous)
    return p.DeleteResult(bool(previous), index)


def _min_end(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def user_range(
    start: bytes | None, end: bytes | None, prefix: bytes | None
) -> tuple[bytes, bytes | None]:
    if prefix is not None:
        if start is not None or end is not None:
            raise InvalidArgument("give either prefix or start/end, not both")
        check_key(prefix)
        return prefix, prefix_end(prefix)
    if start is not None:
        check_key(start)
    if end is not None:
        check_key(end)
    return start or b"", end


def check_key(key: bytes) -> None:
    if len(key) > limits.KEY_BYTES_MAX:
        raise TooLarge(f"key is {len(key)} bytes, the limit is {limits.KEY_BYTES_MAX}")


def check_value(value: bytes) -> None:
    if len(value) > limits.VALUE_BYTES_MAX:
        raise TooLarge(f"value is {len(value)} bytes, the limit is {limits.VALUE_BYTES_MAX}")


def check_count(count: int, what: str) -> None:
    if count > limits.BATCH_OPS_MAX:
        raise TooLarge(f"{count} {what}, the limit is {limits.BATCH_OPS_MAX} per request")


def summarize(keyspace: KeyspaceInfo) -> p.KeyspaceSummary:
    return p.KeyspaceSummary(
        keyspace.name,
        keyspace.keyspace_id,
        keyspace.partitioning.value,
        len(keyspace.shards),
        keyspace.epoch,
    )


def keyspace_map(keyspace: KeyspaceInfo, catalog: Catalog) -> dict[str, Any]:
    """The routing view of one keyspace that clients cache."""
    return {
        "name": keyspace.name,
        "keyspace_id": keyspace.keyspace_id,
        "partitioning": keyspace.partitioning.value,
        "epoch": keyspace.epoch,
        "shards": keyspace.shards,
        "nodes": {str(node.node_id): [node.host, node.port] for node in catalog.nodes.values()},
    }


READ_REQUESTS: frozenset[type[p.Request]] = frozenset({p.Get, p.MultiGet, p.Scan})
WRITE_REQUESTS: frozenset[type[p.Request]] = frozenset(
    {p.Put, p.Delete, p.Incr, p.Expire, p.WriteBatch, p.Txn, p.DeleteRangeReq}
)
ADMIN_REQUESTS: frozenset[type[p.Request]] = frozenset(
    {p.CreateTenant, p.ListTenants, p.SetQuota, p.DeleteTenant, p.RotateToken}
)
SHARED_REQUESTS: frozenset[type[p.Request]] = frozenset({p.Ping, p.Status})
"""Requests both tenants and the administrator may make."""


def _write_cost(request: p.KeyspaceRequest) -> tuple[int, int]:
    """(ops, bytes) a write request charges against write quotas."""
    if isinstance(request, p.Put):
        return 1, len(request.key) + len(request.value)
    if isinstance(request, (p.WriteBatch, p.Txn)):
        nbytes = sum(len(op.key) + len(getattr(op, "value", b"")) for op in request.ops)
        return max(1, len(request.ops)), nbytes
    return 1, 0


def _result_bytes(value: Any) -> int:
    """Bytes a read returns, charged against read-bytes quotas."""
    if value is None:
        return 0
    if isinstance(value, Stored):
        return len(value.value)
    if isinstance(value, p.ScanPage):
        return sum(len(item.key) + len(item.value) for item in value.items)
    if isinstance(value, list):
        return sum(len(item.value) for item in value if item is not None)
    return 0
