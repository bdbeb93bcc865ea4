"""The metadata shard's state machine: the catalog, changed only through its Raft log.

Nodes, tenants (with token hashes and quotas), keyspaces and the shard map live in one
`Catalog` that every node holds a replica of. A change is a `CatalogCommand` proposed to the
metadata group (group 0); each node applies the committed commands in order, so all agree.
Applying is deterministic: replica placement, shard ids and epochs depend only on the
catalog and the command. The catalog and its applied index are persisted together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from spindle.kv.errors import InvalidArgument, NotFound, SpindleError, Unavailable
from spindle.kv.keys import CATALOG_KEY, applied_key, decode_u64, encode_u64
from spindle.kv.shardmap import Catalog, NodeInfo, Partitioning
from spindle.kv.storage import CF, Engine, WriteBatch
from spindle.kv.tenancy import ADMIN_TENANT, Quota

META_GROUP_ID = 0
"""The Raft group that replicates the catalog (data shards have ids from 1)."""


class AddNode(msgspec.Struct, tag="add_node", frozen=True):
    node_id: int
    host: str
    port: int
    http_port: int = 0
    resp_port: int = 0


class Configure(msgspec.Struct, tag="configure", frozen=True):
    """The first command of a cluster: its default replication factor."""

    replication_factor: int


class CreateTenant(msgspec.Struct, tag="create_tenant", frozen=True):
    name: str
    token_hash: str
    quota: Quota | None = None


class SetToken(msgspec.Struct, tag="set_token", frozen=True):
    """Set a tenant's (or, for `admin`, the administrator's) token hash."""

    tenant: str
    token_hash: str
    only_if_unset: bool = False


class SetQuota(msgspec.Struct, tag="set_quota", frozen=True):
    tenant: str
    quota: Quota | None
    keyspace: str | None = None


class DeleteTenant(msgspec.Struct, tag="delete_tenant", frozen=True):
    name: str


class CreateKeyspace(msgspec.Struct, tag="create_keyspace", frozen=True):
    tenant: str
    name: str
    shards: int
    partitioning: Partitioning
    split_points: list[bytes] | None = None
    replication_factor: int = 0
    """0: the cluster's default."""
    if_absent: bool = False


CatalogCommand = (
    AddNode | Configure | CreateTenant | SetToken | SetQuota | DeleteTenant | CreateKeyspace
)

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(CatalogCommand)
_catalog_decoder = msgspec.msgpack.Decoder(Catalog)


def encode_command(command: CatalogCommand) -> bytes:
    return _encoder.encode(command)


def place_replicas(
    node_ids: list[int], shard_index: int, replication_factor: int
) -> tuple[int, ...]:
    """Replicas of a keyspace's `shard_index`-th shard: consecutive nodes in id order,
    starting one further along for each shard, so leaders (the first replica is the
    preferred leader) and load spread evenly."""
    ordered = sorted(node_ids)
    start = shard_index % len(ordered)
    rotated = ordered[start:] + ordered[:start]
    return tuple(rotated[:replication_factor])


class CatalogState:
    """The `Applier` of the metadata group."""

    def __init__(
        self,
        engine: Engine,
        write: Callable[[WriteBatch], int],
        on_change: Callable[[CatalogCommand, Any], None] = lambda command, result: None,
    ) -> None:
        self.engine = engine
        self._write = write
        self.on_change = on_change
        raw = engine.get(CF.META, CATALOG_KEY)
        self.catalog = Catalog() if raw is None else _catalog_decoder.decode(raw)
        raw = engine.get(CF.META, applied_key(META_GROUP_ID))
        self._applied_index = 0 if raw is None else decode_u64(raw[:8])

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def _persist(self, index: int) -> None:
        batch = self.engine.new_batch()
        batch.put(CF.META, CATALOG_KEY, _encoder.encode(self.catalog))
        batch.put(CF.META, applied_key(META_GROUP_ID), encode_u64(index))
        self._write(batch)
        self._applied_index = index

    def apply_noop(self, index: int) -> None:
        batch = self.engine.new_batch()
        batch.put(CF.META, applied_key(META_GROUP_ID), encode_u64(index))
        self._write(batch)
        self._applied_index = index

    def apply_entry(self, index: int, data: bytes) -> Any:
        command = _command_decoder.decode(data)
        try:
            result: Any = self._apply(command)
        except SpindleError as error:
            self.apply_noop(index)
            return error
        self._persist(index)
        self.on_change(command, result)
        return result

    def image(self) -> bytes:
        return _encoder.encode(self.catalog)

    def restore(self, index: int, data: bytes) -> None:
        self.catalog = _catalog_decoder.decode(data)
        self._persist(index)
        self.on_change(Configure(self.catalog.replication_factor), None)

    # -- commands ------------------------------------------------------------------------

    def _apply(self, command: CatalogCommand) -> Any:
        catalog = self.catalog
        if isinstance(command, AddNode):
            catalog.nodes[command.node_id] = NodeInfo(
                command.node_id, command.host, command.port, command.http_port, command.resp_port
            )
            catalog.epoch += 1
            return True
        if isinstance(command, Configure):
            catalog.replication_factor = command.replication_factor
            return True
        if isinstance(command, CreateTenant):
            info = catalog.add_tenant(command.name)
            info.token_hash = command.token_hash
            info.quota = command.quota
            return True
        if isinstance(command, SetToken):
            if command.tenant == ADMIN_TENANT:
                if command.only_if_unset and catalog.admin_token_hash:
                    return False
                catalog.admin_token_hash = command.token_hash
                return True
            tenant = catalog.tenants.get(command.tenant)
            if tenant is None:
                raise NotFound(f"tenant {command.tenant!r} does not exist")
            if command.only_if_unset and tenant.token_hash:
                return False
            tenant.token_hash = command.token_hash
            return True
        if isinstance(command, SetQuota):
            tenant = catalog.tenants.get(command.tenant)
            if tenant is None:
                raise NotFound(f"tenant {command.tenant!r} does not exist")
            if command.keyspace is None:
                tenant.quota = command.quota
            elif command.quota is None:
                tenant.keyspace_quotas.pop(command.keyspace, None)
            else:
                catalog.keyspace(command.tenant, command.keyspace)
                tenant.keyspace_quotas[command.keyspace] = command.quota
            return True
        if isinstance(command, DeleteTenant):
            return catalog.drop_tenant(command.name)
        assert isinstance(command, CreateKeyspace)
        if command.if_absent and f"{command.tenant}/{command.name}" in catalog.keyspaces:
            return catalog.keyspace(command.tenant, command.name)
        factor = command.replication_factor or catalog.replication_factor
        if factor < 1:
            raise InvalidArgument(f"replication factor must be at least 1, got {factor}")
        if len(catalog.nodes) < factor:
            raise Unavailable(
                f"keyspace {command.name!r} needs {factor} nodes (replication factor), the "
                f"cluster has {len(catalog.nodes)}: start or join more nodes"
            )
        node_ids = list(catalog.nodes)
        return catalog.create_keyspace(
            command.tenant,
            command.name,
            shards=command.shards,
            partitioning=command.partitioning,
            split_points=command.split_points,
            place=lambda shard_index: place_replicas(node_ids, shard_index, factor),
        )
