"""Tenants, keyspaces, shards and the shard map that routes a key to its shard and node.

A keyspace belongs to a tenant and is cut into shards, each owning a contiguous range of
internal keys [start, end). The map has an epoch that bumps on every change; each keyspace
carries its own epoch too, which requests quote so that a node can tell a stale router.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from enum import StrEnum

import msgspec

from spindle.kv import limits
from spindle.kv.errors import AlreadyExists, InvalidArgument, NotFound
from spindle.kv.keys import HASH_PREFIX_BYTES, hash_prefix
from spindle.kv.tenancy import ADMIN_TENANT, Quota

DEFAULT_TENANT = "default"
DEFAULT_KEYSPACE = "default"
DEFAULT_SHARDS = 8

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class Partitioning(StrEnum):
    HASH = "hash"
    """Keys spread by a hash: even load, scans return keys in hash order."""
    RANGE = "range"
    """Keys in byte order: ordered scans, hot ranges possible."""


class ShardInfo(msgspec.Struct, frozen=True):
    shard_id: int
    start: bytes
    """First internal key of the range (inclusive)."""
    end: bytes | None
    """End of the range (exclusive); None: to the end of the keyspace."""
    epoch: int
    """Bumps whenever this shard's range or placement changes."""
    node_id: int
    """The preferred leader (the first replica)."""
    replicas: tuple[int, ...] = ()
    """Nodes holding a replica; the shard is a Raft group over them (one: a local log)."""

    def contains(self, internal_key: bytes) -> bool:
        return internal_key >= self.start and (self.end is None or internal_key < self.end)


class KeyspaceInfo(msgspec.Struct, dict=True):
    tenant: str
    name: str
    keyspace_id: int
    partitioning: Partitioning
    epoch: int
    shards: list[ShardInfo]
    """Sorted by start; together they cover every internal key exactly once."""

    def __post_init__(self) -> None:
        self._starts = [shard.start for shard in self.shards]

    def internal_key(self, user_key: bytes) -> bytes:
        if self.partitioning is Partitioning.HASH:
            return hash_prefix(user_key) + user_key
        return user_key

    def user_key(self, internal_key: bytes) -> bytes:
        if self.partitioning is Partitioning.HASH:
            return internal_key[HASH_PREFIX_BYTES:]
        return internal_key

    def shard_index(self, internal_key: bytes) -> int:
        return bisect.bisect_right(self._starts, internal_key) - 1

    def shard_for(self, internal_key: bytes) -> ShardInfo:
        return self.shards[self.shard_index(internal_key)]

    def check(self) -> None:
        """Assert the shards tile the key space: no gap, no overlap."""
        assert self.shards, "a keyspace has at least one shard"
        assert self.shards[0].start == b"", "the first shard starts at the empty key"
        for left, right in zip(self.shards, self.shards[1:], strict=False):
            assert left.end is not None and left.end == right.start, (left, right)
        assert self.shards[-1].end is None, "the last shard runs to the end"


class NodeInfo(msgspec.Struct, frozen=True):
    node_id: int
    host: str
    port: int
    http_port: int = 0
    resp_port: int = 0


class TenantInfo(msgspec.Struct):
    name: str
    token_hash: str = ""
    """`salt$sha256`, never the token itself (see tenancy.hash_token)."""
    quota: Quota | None = None
    keyspace_quotas: dict[str, Quota] = {}


class Catalog(msgspec.Struct):
    """Everything a node knows about the cluster's layout; persisted in the META family."""

    epoch: int = 0
    next_keyspace_id: int = 1
    next_shard_id: int = 1
    tenants: dict[str, TenantInfo] = {}
    keyspaces: dict[str, KeyspaceInfo] = {}
    """Keyed by qualified name, `tenant/name`."""
    nodes: dict[int, NodeInfo] = {}
    admin_token_hash: str = ""
    replication_factor: int = 1
    """Replicas per shard of a keyspace created without one (set when the cluster starts)."""

    def keyspace(self, tenant: str, name: str) -> KeyspaceInfo:
        found = self.keyspaces.get(qualified(tenant, name))
        if found is None:
            raise NotFound(f"keyspace {name!r} does not exist")
        return found

    def add_tenant(self, name: str) -> TenantInfo:
        check_name("tenant", name)
        if name == ADMIN_TENANT:
            raise InvalidArgument(f"tenant name {name!r} is reserved")
        if name in self.tenants:
            raise AlreadyExists(f"tenant {name!r} already exists")
        tenant = TenantInfo(name)
        self.tenants[name] = tenant
        self.epoch += 1
        return tenant

    def drop_tenant(self, name: str) -> list[KeyspaceInfo]:
        """Forget a tenant and its keyspaces; returns the keyspaces whose data to delete."""
        if name not in self.tenants:
            raise NotFound(f"tenant {name!r} does not exist")
        del self.tenants[name]
        dropped = [ks for ks in self.keyspaces.values() if ks.tenant == name]
        for keyspace in dropped:
            del self.keyspaces[qualified(keyspace.tenant, keyspace.name)]
        self.epoch += 1
        return dropped

    def create_keyspace(
        self,
        tenant: str,
        name: str,
        *,
        shards: int,
        partitioning: Partitioning,
        split_points: list[bytes] | None,
        place: Callable[[int], tuple[int, ...]],
    ) -> KeyspaceInfo:
        """`place(i)` gives the replicas of the i-th shard (the first is preferred leader)."""
        check_name("keyspace", name)
        if tenant not in self.tenants:
            raise NotFound(f"tenant {tenant!r} does not exist")
        if qualified(tenant, name) in self.keyspaces:
            raise AlreadyExists(f"keyspace {name!r} already exists")
        if split_points is None:
            if not 1 <= shards <= limits.SHARDS_PER_KEYSPACE_MAX:
                raise InvalidArgument(
                    f"shards must be in 1..{limits.SHARDS_PER_KEYSPACE_MAX}, got {shards}"
                )
            points = even_split_points(shards, partitioning)
        else:
            points = explicit_split_points(split_points, partitioning)
        self.epoch += 1
        starts = [b"", *points]
        ends: list[bytes | None] = [*points, None]
        infos = []
        for shard_index, (start, end) in enumerate(zip(starts, ends, strict=True)):
            replicas = place(shard_index)
            infos.append(
                ShardInfo(self.next_shard_id, start, end, self.epoch, replicas[0], replicas)
            )
            self.next_shard_id += 1
        keyspace = KeyspaceInfo(
            tenant, name, self.next_keyspace_id, partitioning, self.epoch, infos
        )
        keyspace.check()
        self.next_keyspace_id += 1
        self.keyspaces[qualified(tenant, name)] = keyspace
        return keyspace

    def shards(self) -> list[tuple[KeyspaceInfo, ShardInfo]]:
        return [(ks, shard) for ks in self.keyspaces.values() for shard in ks.shards]


def qualified(tenant: str, name: str) -> str:
    return f"{tenant}/{name}"


def check_name(kind: str, name: str) -> None:
    if not name or len(name.encode()) > limits.KEYSPACE_NAME_BYTES_MAX:
        raise InvalidArgument(
            f"{kind} name must be 1..{limits.KEYSPACE_NAME_BYTES_MAX} bytes, got {len(name)}"
        )
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"{kind} name {name!r} may hold only letters, digits, _ . -")


def even_split_points(shards: int, partitioning: Partitioning) -> list[bytes]:
    """N-1 evenly spaced boundaries: over the 32-bit hash space, or over the first two
    bytes of raw keys."""
    width = HASH_PREFIX_BYTES if partitioning is Partitioning.HASH else 2
    space = 1 << (8 * width)
    return [(space * i // shards).to_bytes(width, "big") for i in range(1, shards)]


def explicit_split_points(points: list[bytes], partitioning: Partitioning) -> list[bytes]:
    if partitioning is Partitioning.HASH:
        raise InvalidArgument("explicit split points need a range-partitioned keyspace")
    if len(points) + 1 > limits.SHARDS_PER_KEYSPACE_MAX:
        raise InvalidArgument(f"at most {limits.SHARDS_PER_KEYSPACE_MAX - 1} split points")
    if any(not p for p in points):
        raise InvalidArgument("a split point must not be empty")
    if any(a >= b for a, b in itertools.pairwise(points)):
        raise InvalidArgument("split points must be strictly increasing")
    return list(points)
