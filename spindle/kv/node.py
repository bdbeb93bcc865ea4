"""A storage node: hosts shard replicas, routes requests to them, persists the catalog.

The node is the store's semantics without the network: the server hands it decoded
requests and gets back either a result or a future (writes, and reads that must wait for a
write they observed to become durable). Tests and the simulator drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.catalogstate import (
    META_GROUP_ID,
    AddNode,
    CatalogCommand,
    CatalogState,
    Configure,
    CreateKeyspace,
    CreateTenant,
    DeleteTenant,
    SetQuota,
    encode_command,
)
from spindle.kv.client import NotSent
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
    NotLeader,
    PermissionDenied,
    QuotaExceeded,
    SpindleError,
    Timeout,
    TooLarge,
    Unavailable,
    UnknownOperation,
    WrongShard,
)
from spindle.kv.groupcommit import GroupCommitter
from spindle.kv.keys import (
    HASH_PREFIX_BYTES,
    encode_u64,
    keyspace_prefix,
    prefix_end,
    split_ttl_key,
)
from spindle.kv.multiraft import Envelope, RaftHost
from spindle.kv.raft import ConfChange, ConfChangeType, ProposalDropped
from spindle.kv.replica import PROPOSAL_TIMEOUT_S, Replica
from spindle.kv.shard import LocalLog, RaftLog, Shard, ShardApplier
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
    new_token,
)
from spindle.kv.tenantadmin import TenantAdmin
from spindle.kv.transport import PeerTransport, Transport
from spindle.kv.values import Stored

log = logging.getLogger("spindle.node")

MAX_DEFAULT_REPLICATION = 3
"""A cluster's default replication factor is min(this, its configured size)."""
JOIN_RETRY_S = 0.5
"""Pause between a joining node's attempts to be added."""
MAINTAIN_INTERVAL_S = 0.5
"""How often a node checks for work (its catalog entry, leader balance; on the metadata
leader, the default keyspace)."""
TRANSFER_LAG_ENTRIES_MAX = 64
"""A preferred leader this close to the log's end gets leadership back (the core then
waits until it has caught up fully before handing over)."""

Result = Any
"""A plain result, an asyncio.Future of one, or a coroutine producing one."""


def is_pending(result: Any) -> bool:
    """Whether a handler's result is still to come (a future or a coroutine): the
    common cases (a future, a plain value) decided without the Awaitable ABC check,
    which costs about a microsecond per request."""
    kind = type(result)
    if kind is asyncio.Future or kind is bool or kind is int or result is None:
        return kind is asyncio.Future
    return isinstance(result, Awaitable)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Node:
    """A storage node: the catalog's replica (the metadata group), the shard replicas it
    hosts, and the request handlers. `start()` runs its Raft groups; `close()` stops them.

    A node started without `join` bootstraps a new cluster (the metadata group's only
    voter at first); `cluster_size` sets the cluster's default replication factor
    (min(3, cluster_size)), so the default keyspace is created once that many nodes have
    joined. A node started with `join` (the address of any member) asks to be added.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        node_id: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        resp_port: int = 0,
        clock_ms: Callable[[], int] = wall_clock_ms,
        cluster_size: int = 1,
        join: tuple[str, int] | None = None,
        secret: str | None = None,
        committer: GroupCommitter | None = None,
        transport: Transport | None = None,
        raft_seed: int | None = None,
    ) -> None:
        """`committer` and `transport` default to the real ones (fsync in a thread, TCP
        to peers); the simulator passes its own, and `raft_seed` for reproducible
        election timeouts."""
        self.committer = committer if committer is not None else GroupCommitter(engine)
        self.engine = self.committer.engine
        """What the node reads and writes through: writes queue here and reach `engine`
        as one batch per group commit."""
        self.node_id = node_id
        self.clock_ms = clock_ms
        self.shards: dict[int, Shard] = {}
        self.started_at_ms = clock_ms()
        self.address = NodeInfo(node_id, host, port, http_port, resp_port)
        self.cluster_size = cluster_size
        self.join_address = join
        self.secret = secret or new_token()
        self.transport: Transport | None = transport
        self.host = RaftHost(
            node_id,
            self.committer,
            self._send_raft,
            address_of=self._address_detail,
            seed=raft_seed,
        )
        self.catalog_state = CatalogState(
            self.engine, self.committer.write, self._on_catalog_change
        )
        self.quotas = QuotaEnforcer(lambda: self.clock_ms() / 1000)
        self.tenants = TenantAdmin(self)
        self.tenants.load_quotas()
        for keyspace, info in self.catalog.shards():
            if self.node_id in (info.replicas or (info.node_id,)):
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
            p.CreateTenant: self.tenants.create_tenant,
            p.ListTenants: self.tenants.list_tenants,
            p.SetQuota: self.tenants.set_quota,
            p.DeleteTenant: self.tenants.delete_tenant,
            p.RotateToken: self.tenants.rotate_token,
            p.Join: self._join,
            p.QuotaReport: self.tenants.quota_report,
        }
        self.ops_served: dict[str, int] = {}
        self.forwarded_requests = 0
        self.leader_transfers = 0
        self._read_seq = 0
        self._started = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.meta: Replica | None = None
        self.learned_addresses: dict[int, tuple[str, int]] = {}

    @property
    def catalog(self) -> Catalog:
        return self.catalog_state.catalog

    def set_address(self, host: str, port: int, http_port: int | None = None) -> None:
        self.address = msgspec.structs.replace(
            self.address, host=host, port=port, http_port=http_port or self.address.http_port
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Run the Raft groups; bootstrap the cluster, or ask to join it. Returns once
        this node serves (a joining node keeps asking in the background)."""
        if self._started:
            return
        self._started = True
        if self.transport is None:
            self.transport = PeerTransport(
                self.node_id,
                self.secret,
                self.peer_address,
                lambda: (self.address.host, self.address.port),
                self.host.peer_unreachable,
            )
        bootstrap = self.join_address is None
        self.meta = self.host.open_group(
            META_GROUP_ID, self.catalog_state, bootstrap_voters=(self.node_id,) if bootstrap else ()
        )
        self.host.start()
        if bootstrap and not self.catalog.nodes:
            self.meta.raw.campaign()
            self.host.wake(self.meta)
            await self._wait_meta_leader(timeout_s=10.0)
            factor = max(1, min(MAX_DEFAULT_REPLICATION, self.cluster_size))
            await self.meta_propose(Configure(factor))
            await self.meta_propose(self._add_node_command())
            if DEFAULT_TENANT not in self.catalog.tenants:
                await self.meta_propose(CreateTenant(DEFAULT_TENANT, ""))
            self._compact_meta_log()
        elif not bootstrap and self.node_id not in self.catalog.nodes:
            self._tasks.append(asyncio.ensure_future(self._join_loop()))
        self._tasks.append(asyncio.ensure_future(self._maintain_loop()))

    def _compact_meta_log(self) -> None:
        """Keep the metadata group's log from starting at index 1, so that a joining node
        (which starts with no state) is sent a snapshot: the catalog and the group's
        membership. The founder's own membership exists only in its bootstrap state, not
        as a log entry; replaying the log from the start would leave it out."""
        meta = self.meta
        storage = self.host.storages.get(META_GROUP_ID)
        if meta is None or storage is None or storage.first_index() > 1:
            return
        applied = meta.applied_index
        if applied < 1 or applied > storage.last_index():
            return
        batch = self.engine.new_batch()
        storage.compact(batch, applied, meta.raw.status().conf_state)
        self.committer.write(batch)

    def _join_request(self) -> p.Join:
        a = self.address
        return p.Join(
            id=0,
            node_id=a.node_id,
            host=a.host,
            port=a.port,
            http_port=a.http_port,
            resp_port=a.resp_port,
        )

    def _add_node_command(self) -> AddNode:
        a = self.address
        return AddNode(a.node_id, a.host, a.port, a.http_port, a.resp_port)

    async def _wait_meta_leader(self, timeout_s: float) -> None:
        deadline = self.host.now() + timeout_s
        while self.meta is not None and not self.meta.is_leader():
            if self.host.now() > deadline:
                raise Unavailable("the metadata group elected no leader")
            await asyncio.sleep(0.01)

    async def meta_propose(self, command: CatalogCommand) -> Any:
        assert self.meta is not None, "the node is not started"
        _, result = await self.meta.propose(encode_command(command))
        return result

    async def _join_loop(self) -> None:
        """Ask the cluster (the join address, then wherever it points) to add this node,
        until it answers yes."""
        assert self.join_address is not None and self.transport is not None
        address = self.join_address
        request = self._join_request()
        while not self.host.closed:
            try:
                await self.transport.forward(address, ADMIN_TENANT, request, bool)
                log.info("node %d joined the cluster via %s:%d", self.node_id, *address)
                return
            except NotLeader as error:
                leader = (error.detail or {}).get("leader")
                if leader:
                    address = (leader["host"], leader["port"])
            except SpindleError as error:
                log.info("join via %s:%d: %s", address[0], address[1], error)
                address = self.join_address
            await asyncio.sleep(JOIN_RETRY_S)

    def _join(self, tenant: str, request: p.Join) -> Result:
        return self._join_async(request)

    async def _join_async(self, request: p.Join) -> bool:
        """On the metadata leader: record the node, then make it a voter of the metadata
        group (one membership change at a time; the caller retries while one is pending)."""
        meta = self.meta
        assert meta is not None
        if not meta.is_leader():
            raise meta.not_leader("join")
        await self.meta_propose(
            AddNode(
                request.node_id, request.host, request.port, request.http_port, request.resp_port
            )
        )
        if request.node_id not in meta.raw.status().conf_state.voters:
            self._compact_meta_log()  # the new voter must start from a snapshot
            try:
                index = meta.raw.propose_conf_change(
                    ConfChange(ConfChangeType.ADD_VOTER, request.node_id)
                )
            except ProposalDropped as dropped:
                raise Unavailable(f"membership change refused ({dropped}); retry") from None
            self.host.wake(meta)
            await meta.wait_applied(index, timeout_s=PROPOSAL_TIMEOUT_S)
        return True

    async def _maintain_loop(self) -> None:
        """On the metadata leader: create the default tenant's keyspace once the cluster
        has enough nodes for its replication factor."""
        while not self.host.closed:
            try:
                await self._maintain()
            except SpindleError as error:
                log.debug("maintenance: %s", error)
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(MAINTAIN_INTERVAL_S)

    async def _maintain(self) -> None:
        self.tenants.exchange_quota_demand()  # first: a failure below must not skip it
        meta = self.meta
        catalog = self.catalog
        known = catalog.nodes.get(self.node_id)
        if known is not None and known != self.address and meta is not None:
            if meta.is_leader():
                await self.meta_propose(self._add_node_command())
            elif meta.leader_id and self.transport is not None:
                leader = self.peer_address(meta.leader_id)
                if leader is not None:  # a join also updates a known node's addresses
                    request = self._join_request()
                    await self.transport.forward(leader, ADMIN_TENANT, request, bool)
        self._balance_leaders()
        self._compact_meta_log()
        if meta is None or not meta.is_leader():
            return
        if (
            DEFAULT_TENANT in catalog.tenants
            and f"{DEFAULT_TENANT}/{DEFAULT_KEYSPACE}" not in catalog.keyspaces
            and len(catalog.nodes) >= catalog.replication_factor
        ):
            await self.meta_propose(
                CreateKeyspace(
                    DEFAULT_TENANT,
                    DEFAULT_KEYSPACE,
                    DEFAULT_SHARDS,
                    Partitioning.HASH,
                    if_absent=True,
                )
            )

    def _balance_leaders(self) -> None:
        """Hand each shard this node leads but is not the preferred leader of (its first
        replica) to that replica once it is caught up: leaders, and their work, spread
        evenly over the nodes after elections moved them."""
        for shard in self.shards.values():
            replica = shard.replica
            preferred = shard.info.replicas[0] if shard.info.replicas else self.node_id
            if replica is None or not replica.is_leader() or preferred == self.node_id:
                continue
            status = replica.raw.status()
            progress = status.progress.get(preferred)
            if (
                progress is not None
                and progress.recent_active
                and progress.match_index + TRANSFER_LAG_ENTRIES_MAX >= status.last_index
                and status.lead_transferee == 0
            ):
                replica.raw.transfer_leadership(preferred)
                self.host.wake(replica)
                self.leader_transfers += 1

    async def ensure_default_keyspace(self, timeout_s: float = 30.0) -> None:
        """Start the node, and wait until the default keyspace exists (it needs as many
        nodes as the replication factor)."""
        await self.start()
        deadline = self.host.now() + timeout_s
        while f"{DEFAULT_TENANT}/{DEFAULT_KEYSPACE}" not in self.catalog.keyspaces:
            if self.host.now() > deadline:
                raise Unavailable("the default keyspace was not created (too few nodes?)")
            with contextlib.suppress(SpindleError):
                await self._maintain()
            await asyncio.sleep(0.01)
        await self.committer.drain()  # the catalog as applied, not only its log, durable

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every shard replica here knows its leader (a cluster is serving)."""
        deadline = self.host.now() + timeout_s
        while True:
            replicas = [s.replica for s in self.shards.values() if s.replica is not None]
            if self.meta is not None and self.meta.leader_id and all(r.leader_id for r in replicas):
                return
            if self.host.now() > deadline:
                raise Unavailable("shards have no leader yet")
            await asyncio.sleep(0.02)

    async def create_keyspace(
        self,
        tenant: str,
        name: str,
        shards: int = DEFAULT_SHARDS,
        partitioning: Partitioning = Partitioning.HASH,
        split_points: list[bytes] | None = None,
        replication_factor: int = 0,
    ) -> KeyspaceInfo:
        result = await self.meta_propose(
            CreateKeyspace(tenant, name, shards, partitioning, split_points, replication_factor)
        )
        assert isinstance(result, KeyspaceInfo)
        await self.committer.drain()
        return result

    def _on_catalog_change(self, command: CatalogCommand, result: Any) -> None:
        """Applied on every node: act on what changed for this node."""
        if isinstance(command, CreateTenant):
            self.quotas.set_quota(command.name, command.quota)
        elif isinstance(command, SetQuota):
            self.quotas.set_quota(command.tenant, command.quota, command.keyspace)
        elif isinstance(command, CreateKeyspace) and isinstance(result, KeyspaceInfo):
            for info in result.shards:
                if self.node_id in info.replicas and info.shard_id not in self.shards:
                    self._open_shard(result, info, new=True)
        elif isinstance(command, DeleteTenant) and isinstance(result, list):
            for keyspace in result:
                self._drop_keyspace_data(keyspace)
        elif isinstance(command, Configure):
            self.tenants.load_quotas()
            for keyspace, info in self.catalog.shards():
                if self.node_id in info.replicas and info.shard_id not in self.shards:
                    self._open_shard(keyspace, info)

    def _drop_keyspace_data(self, keyspace: KeyspaceInfo) -> None:
        batch = self.engine.new_batch()
        prefix = keyspace_prefix(keyspace.keyspace_id)
        end = keyspace_prefix(keyspace.keyspace_id + 1)
        batch.delete_range(CF.DATA, prefix, end)
        batch.delete_range(CF.TTL, prefix, end)
        for info in keyspace.shards:
            shard = self.shards.pop(info.shard_id, None)
            if shard is not None and shard.replica is not None:
                self.host.close_group(info.shard_id)
                batch.delete_range(CF.LOG, encode_u64(info.shard_id), encode_u64(info.shard_id + 1))
        self.committer.write(batch)

    def _open_shard(self, keyspace: KeyspaceInfo, info: ShardInfo, *, new: bool = False) -> None:
        state = ShardState(
            self.engine,
            keyspace.keyspace_id,
            info.shard_id,
            self.committer.write,
            key_offset=HASH_PREFIX_BYTES if keyspace.partitioning is Partitioning.HASH else 0,
        )
        replicas = info.replicas or (info.node_id,)
        if len(replicas) == 1:
            self.shards[info.shard_id] = Shard(
                keyspace, info, state, LocalLog(state, self.committer)
            )
            return
        replica = self.host.open_group(
            info.shard_id, ShardApplier(state, info), bootstrap_voters=replicas
        )
        if new and replicas[0] == self.node_id:
            replica.raw.campaign()  # the preferred leader: spreads leadership over nodes
        self.shards[info.shard_id] = Shard(keyspace, info, state, RaftLog(replica), replica)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.host.stop()
        if self.transport is not None:
            await self.transport.close()
        await self.committer.drain()
        self.committer.close()

    # -- peers -----------------------------------------------------------------------------

    def _send_raft(self, node_id: int, envelopes: list[Envelope]) -> None:
        if self.transport is not None:
            self.transport.send(node_id, envelopes)

    def peer_address(self, node_id: int) -> tuple[str, int] | None:
        info = self.catalog.nodes.get(node_id)
        if info is None:
            return self.learned_addresses.get(node_id)
        return info.host, info.port

    def peer_hello(self, request: p.PeerHello) -> bool:
        """Check a peer's secret; remember where it listens (a joining node needs this
        before it has the catalog)."""
        if not hmac.compare_digest(request.secret.encode(), self.secret.encode()):
            return False
        if request.port:
            self.learned_addresses[request.node_id] = (request.host, request.port)
        return True

    def _address_detail(self, node_id: int) -> dict[str, Any] | None:
        info = self.catalog.nodes.get(node_id)
        if info is None:
            return None
        return {
            "node_id": node_id,
            "host": info.host,
            "port": info.port,
            "resp_port": info.resp_port,
        }

    # -- dispatch ------------------------------------------------------------------------

    def execute(self, tenant: str, request: p.Request, *, forwarded: bool = False) -> Result:
        """Run one request for `tenant`: access control, quota admission, then the
        handler. Raises SpindleError, or returns a result / future / coroutine. A request
        this node cannot serve (a write to a shard led elsewhere) is forwarded to the
        leader, once: a `forwarded` request is never forwarded again."""
        try:
            result = self._execute(tenant, request, forwarded)
        except (NotLeader, WrongShard) as error:
            if forwarded or not _leader_of(error):
                raise
            return self._forward(error, tenant, request)
        if forwarded or not is_pending(result):
            return result
        kind = type(request)
        if kind in CATALOG_REQUESTS or (kind in WRITE_REQUESTS and len(self.host.replicas) > 1):
            if isinstance(result, asyncio.Future):
                return self._forward_on_failure(result, tenant, request)
            return self._forward_if_not_leader(result, tenant, request)
        return result

    async def _forward_if_not_leader(
        self, pending: Awaitable[Any], tenant: str, request: p.Request
    ) -> Any:
        try:
            return await pending
        except NotLeader as error:
            if not _leader_of(error):
                raise
            return await self._forward(error, tenant, request)

    def _forward_on_failure(
        self, pending: asyncio.Future[Any], tenant: str, request: p.Request
    ) -> asyncio.Future[Any]:
        """`_forward_if_not_leader` for a plain future, without a Task per write: the
        common case (success) costs one callback."""
        outer: asyncio.Future[Any] = self.host.loop.create_future()

        def settle(done: asyncio.Future[Any]) -> None:
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
                return
            error = done.exception()
            if error is None:
                outer.set_result(done.result())
            elif isinstance(error, NotLeader) and _leader_of(error):
                retry = asyncio.ensure_future(self._forward(error, tenant, request))
                retry.add_done_callback(settle)
            else:
                outer.set_exception(error)

        pending.add_done_callback(settle)
        return outer

    async def _forward(self, error: SpindleError, tenant: str, request: p.Request) -> Any:
        leader = _leader_of(error)
        assert leader is not None and self.transport is not None
        result_type = RESULT_TYPES.get(type(request), Any)
        self.forwarded_requests += 1
        try:
            return await self.transport.forward(
                (leader["host"], leader["port"]), tenant, request, result_type
            )
        except NotSent as unreachable:  # never sent: the client may retry anything
            raise NotLeader(
                f"the leader this node knows (node {leader.get('node_id')}) is unreachable: "
                f"{unreachable.message}; retry",
                detail={"leader_id": 0},
            ) from None

    def _execute(self, tenant: str, request: p.Request, forwarded: bool) -> Result:
        kind = type(request)
        handler = self._handlers.get(kind)
        if handler is None:
            raise UnknownOperation(f"unknown operation {kind.__name__}")
        if kind in PEER_REQUESTS:
            if not forwarded:
                raise PermissionDenied(f"{kind.__name__} is for cluster nodes (a peer connection)")
            return handler(tenant, request)
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
                if not forwarded:
                    ops = len(request.keys) if isinstance(request, p.MultiGet) else 1
                    self.quotas.admit_read(tenant, request.keyspace, ops)
                self._read_seq = 0
                value = handler(tenant, request)
                if is_pending(value):
                    return self._charged_read(value, tenant, request.keyspace)
                self.quotas.charge_read_bytes(tenant, request.keyspace, _result_bytes(value))
                return self._read_result(value)
            if kind in WRITE_REQUESTS and not forwarded:
                assert isinstance(request, p.KeyspaceRequest)
                ops, nbytes = _write_cost(request)
                self.quotas.admit_write(tenant, request.keyspace, nbytes, ops)
                if nbytes:
                    self._check_stored_bytes(tenant, request.keyspace, nbytes)
            return handler(tenant, request)
        except NotFound:
            self._refuse(tenant)
            raise

    async def _charged_read(self, pending: Awaitable[Any], tenant: str, keyspace: str) -> Any:
        value = await pending
        self.quotas.charge_read_bytes(tenant, keyspace, _result_bytes(value))
        return value

    def _refuse(self, tenant: str) -> None:
        self.quotas.tenant_usage(tenant).refused += 1

    def _check_stored_bytes(self, tenant: str, keyspace_name: str, incoming: int) -> None:
        info = self.catalog.tenants.get(tenant)
        if info is None or (info.quota is None and not info.keyspace_quotas):
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

    # -- routing -------------------------------------------------------------------------

    def keyspace(self, tenant: str, name: str, epoch: int = 0) -> KeyspaceInfo:
        keyspace = self.catalog.keyspace(tenant, name)
        if epoch and epoch != keyspace.epoch:
            raise WrongShard(
                f"stale shard map for keyspace {name!r}: epoch {epoch}, current {keyspace.epoch}",
                detail=self._keyspace_map(keyspace),
            )
        return keyspace

    def shard_for(self, keyspace: KeyspaceInfo, internal_key: bytes) -> Shard:
        info = keyspace.shard_for(internal_key)
        shard = self.shards.get(info.shard_id)
        if shard is None:
            replicas = info.replicas or (info.node_id,)
            detail = self._keyspace_map(keyspace)
            if replicas[0] != self.node_id:
                detail["leader"] = self._address_detail(replicas[0])
            raise WrongShard(f"shard {info.shard_id} is not on node {self.node_id}", detail=detail)
        return shard

    def _keyspace_map(self, keyspace: KeyspaceInfo) -> dict[str, Any]:
        def leader_of(shard_id: int) -> int:
            shard = self.shards.get(shard_id)
            if shard is None:
                return 0
            return shard.replica.leader_id if shard.replica is not None else self.node_id

        return keyspace_map(keyspace, self.catalog, self.address, leader_of)

    def _readable_now(self, shard: Shard, request: p.ReadRequest) -> bool:
        replica = shard.replica
        if replica is None:
            return True
        level = request.consistency
        if level == "strong":
            return replica.lease_read_ok()
        if level == "read_your_writes":
            return replica.applied_index >= request.min_version
        if level == "bounded":
            return replica.lease_read_ok() or (
                self.host.now() - replica.fresh_as_of_s <= request.max_staleness_ms / 1000
            )
        return True

    def _fence(self, shard: Shard, request: p.ReadRequest) -> Awaitable[None] | None:
        """None if this replica may serve `request` at its consistency level now, else
        what to await first (or raises if it cannot)."""
        replica = shard.replica
        level = request.consistency
        if replica is None:
            if level not in p.CONSISTENCY_LEVELS:
                raise InvalidArgument(_bad_level(level))
            return None  # a single replica: every level is strong
        if level == "strong":
            self.host.catch_up_ticks()
            if replica.lease_read_ok():
                return None
            return replica.strong_fence()
        if level == "eventual":
            return None
        if level == "read_your_writes":
            if replica.applied_index >= request.min_version:
                return None
            return replica.wait_applied(request.min_version)
        if level == "bounded":
            if request.max_staleness_ms <= 0:
                raise InvalidArgument("bounded consistency needs max_staleness_ms > 0")
            if self._readable_now(shard, request):
                return None
            return replica.staleness_fence(request.max_staleness_ms)
        raise InvalidArgument(_bad_level(level))

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
            return self._keyspace_map(self.keyspace(tenant, request.keyspace))
        return {
            "epoch": self.catalog.epoch,
            "keyspaces": [
                self._keyspace_map(ks)
                for ks in self.catalog.keyspaces.values()
                if ks.tenant == tenant
            ],
        }

    def _get(self, tenant: str, request: p.Get) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        check_key(request.key)
        internal_key = keyspace.internal_key(request.key)
        shard = self._note_read(self.shard_for(keyspace, internal_key))
        fence = self._fence(shard, request)
        if fence is None:
            return shard.state.get(internal_key, self.clock_ms())
        return self._fenced(fence, lambda: shard.state.get(internal_key, self.clock_ms()))

    async def _fenced(self, fence: Awaitable[Any], read: Callable[[], Any]) -> Any:
        await fence
        return read()

    def _multi_get(self, tenant: str, request: p.MultiGet) -> Result:
        keyspace = self.keyspace(tenant, request.keyspace, request.epoch)
        check_count(len(request.keys), "keys")
        located: list[tuple[Shard, bytes]] = []
        fences: dict[int, Awaitable[None]] = {}
        for key in request.keys:
            check_key(key)
            internal_key = keyspace.internal_key(key)
            shard = self._note_read(self.shard_for(keyspace, internal_key))
            located.append((shard, internal_key))
            if shard.shard_id not in fences:
                fence = self._fence(shard, request)
                if fence is not None:
                    fences[shard.shard_id] = fence

        def read() -> list[Stored | None]:
            now_ms = self.clock_ms()
            return [shard.state.get(key, now_ms) for shard, key in located]

        if not fences:
            return read()
        return self._fenced(asyncio.gather(*fences.values()), read)

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
        if hi is not None and lo >= hi:
            return p.ScanPage([], None)
        first_key = lo
        if request.reverse and hi is not None:
            first_key = hi
            index = keyspace.shard_index(hi)
            if index > 0 and hi <= keyspace.shards[index].start:
                first_key = keyspace.shards[index - 1].start
        elif request.reverse:
            first_key = keyspace.shards[-1].start
        first = self.shard_for(keyspace, first_key)
        fence = self._fence(first, request)

        def scan() -> p.ScanPage:
            return self._scan_shards(
                keyspace, lo, hi, request.reverse, request.limit, keep, request, first.shard_id
            )

        if fence is None:
            return scan()
        return self._fenced(fence, scan)

    def _scan_shards(
        self,
        keyspace: KeyspaceInfo,
        lo: bytes,
        hi: bytes | None,
        reverse: bool,
        limit: int,
        keep: Callable[[bytes], bool] | None,
        request: p.ReadRequest,
        fenced_shard_id: int,
    ) -> p.ScanPage:
        """Scan shard after shard; a page ends at the boundary of a shard this node cannot
        read at the request's level right now (the client continues from the cursor)."""
        items: list[p.ScanItem] = []
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
            if shard is None or (
                info.shard_id != fenced_shard_id and not self._readable_now(shard, request)
            ):
                # Another node (or a fence) serves the rest: a cursor at the boundary.
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
        return self._delete_range_async(tenant, request, keyspace, user_start, user_end)

    async def _delete_range_async(
        self,
        tenant: str,
        request: p.DeleteRangeReq,
        keyspace: KeyspaceInfo,
        user_start: bytes,
        user_end: bytes | None,
    ) -> p.DeleteRangeResult:
        """Shard by shard, each through its own log; a shard led by another node is
        handed to that node (`shard_id` names it), so one call spans the cluster."""
        hashed = keyspace.partitioning is Partitioning.HASH
        lo, hi = (b"", None) if hashed else (user_start, user_end)
        total = 0
        for info in list(keyspace.shards):
            if request.shard_id and info.shard_id != request.shard_id:
                continue
            start = max(lo, info.start)
            end = _min_end(hi, info.end)
            if end is not None and start >= end:
                continue
            engine_end = end if end is not None else b"\xff" * (limits.KEY_BYTES_MAX + 5)
            command = (
                DeleteRange(start, engine_end, user_start, user_end)
                if hashed
                else DeleteRange(start, engine_end)
            )
            try:
                shard = self.shard_for(keyspace, start)
                while True:
                    _, (deleted, more) = await self._propose(shard, command)
                    total += deleted
                    if not more:
                        break
            except NotLeader as error:
                if request.shard_id or not _leader_of(error):
                    raise
                part = msgspec.structs.replace(request, shard_id=info.shard_id)
                result = await self._forward(error, tenant, part)
                total += result.deleted
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
            "pid": os.getpid(),
            "address": msgspec.to_builtins(self.address),
            "uptime_s": (self.clock_ms() - self.started_at_ms) / 1000,
            "cluster": self.cluster_status(),
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
                    "quota_share": self.quotas.share(name),
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
                            "replicas": list(info.replicas or (info.node_id,)),
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

    def cluster_status(self) -> dict[str, Any]:
        """This node's view of the cluster: members, and every Raft group it hosts."""
        meta = self.meta
        return {
            "nodes": [msgspec.to_builtins(info) for info in self.catalog.nodes.values()],
            "replication_factor": self.catalog.replication_factor,
            "meta_leader_id": meta.leader_id if meta is not None else 0,
            "ready": self.is_ready(),
            "groups": [self.host.group_status(group_id) for group_id in sorted(self.host.replicas)],
            "forwarded_requests": self.forwarded_requests,
            "leader_transfers": self.leader_transfers,
            "raft_passes": self.host.passes,
            "raft_messages_sent": self.host.messages_sent,
            "raft_messages_received": self.host.messages_received,
            "peer_frames_dropped": self.transport.dropped_frames() if self.transport else 0,
        }

    def is_ready(self) -> bool:
        """Serving: the node is a cluster member, the default keyspace exists and every
        replicated shard here knows its leader."""
        meta = self.meta
        return (
            meta is not None
            and meta.leader_id != 0
            and self.node_id in self.catalog.nodes
            and f"{DEFAULT_TENANT}/{DEFAULT_KEYSPACE}" in self.catalog.keyspaces
            and all(s.replica.leader_id for s in self.shards.values() if s.replica is not None)
        )

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
                shard = self.shards.get(info.shard_id)
                if shard is None or (shard.replica is not None and not shard.replica.is_leader()):
                    continue  # the shard's leader purges it
                bucket = per_shard.setdefault(info.shard_id, [])
                if len(bucket) < limits.TTL_PURGE_KEYS_PER_PASS_MAX:
                    bucket.append((internal_key, expire_at_ms))
            for shard_id, keys in per_shard.items():
                try:
                    _, count = await self._propose(self.shards[shard_id], Purge(keys))
                except (NotLeader, Unavailable, Timeout):
                    continue  # leadership moved: the new leader purges
                purged += count
        return purged


# -- helpers -----------------------------------------------------------------------------


def _leader_of(error: SpindleError) -> dict[str, Any] | None:
    """The leader's address a NotLeader error names, if any."""
    detail = error.detail
    if isinstance(detail, dict) and isinstance(detail.get("leader"), dict):
        leader: dict[str, Any] = detail["leader"]
        return leader
    return None


def _bad_level(level: str) -> str:
    return f"consistency must be one of {', '.join(p.CONSISTENCY_LEVELS)}; got {level!r}"


RESULT_TYPES: dict[type[p.Request], Any] = {
    p.Get: Stored | None,
    p.MultiGet: list[Stored | None],
    p.Scan: p.ScanPage,
    p.Put: p.PutResult,
    p.Delete: p.DeleteResult,
    p.Incr: p.IncrResult,
    p.Expire: bool,
    p.WriteBatch: p.BatchResult,
    p.Txn: p.BatchResult,
    p.DeleteRangeReq: p.DeleteRangeResult,
    p.CreateTenant: p.TenantCredentials,
    p.SetQuota: p.TenantSummary,
    p.RotateToken: p.TenantCredentials,
    p.DeleteTenant: bool,
    p.CreateKeyspace: p.KeyspaceSummary,
}
"""What a forwarded request's result decodes to (the front ends render these types)."""


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


def keyspace_map(
    keyspace: KeyspaceInfo,
    catalog: Catalog,
    me: NodeInfo | None = None,
    leader_of: Callable[[int], int] = lambda shard_id: 0,
) -> dict[str, Any]:
    """The routing view of one keyspace that clients cache: each shard's replicas and
    leader (as this node knows it; 0 when unknown), and where each node listens."""
    nodes = {str(node.node_id): [node.host, node.port] for node in catalog.nodes.values()}
    if me is not None:
        nodes[str(me.node_id)] = [me.host, me.port]
    return {
        "name": keyspace.name,
        "keyspace_id": keyspace.keyspace_id,
        "partitioning": keyspace.partitioning.value,
        "epoch": keyspace.epoch,
        "shards": [
            {
                "shard_id": info.shard_id,
                "start": info.start,
                "end": info.end,
                "epoch": info.epoch,
                "node_id": info.node_id,
                "replicas": list(info.replicas or (info.node_id,)),
                "leader_id": leader_of(info.shard_id),
            }
            for info in keyspace.shards
        ],
        "nodes": nodes,
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
CATALOG_REQUESTS: frozenset[type[p.Request]] = ADMIN_REQUESTS | {p.CreateKeyspace}
"""Requests that change the catalog: proposed to the metadata group, through its leader."""
PEER_REQUESTS: frozenset[type[p.Request]] = frozenset({p.Join, p.QuotaReport})
"""Requests only another node may make (forwarded over an authenticated peer link)."""


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
