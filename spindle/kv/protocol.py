"""The binary protocol: length-prefixed msgspec-msgpack frames (see docs/protocol.md).

A frame is a 4-byte big-endian body length followed by a msgpack body. A request body is a
map whose `op` field names the operation and whose `id` the client chose; the response
carries the same `id`, so many requests may be in flight on one connection and responses
may come back in any order.
"""

from __future__ import annotations

import struct
import typing
from typing import Any

import msgspec

from spindle.kv.raft import Message as RaftMessage
from spindle.kv.tenancy import Quota
from spindle.kv.values import Stored

FRAME_HEADER = struct.Struct(">I")
FRAME_HEADER_BYTES = FRAME_HEADER.size
PROTOCOL_VERSION = 1


class Request(msgspec.Struct, tag_field="op", kw_only=True, omit_defaults=True):
    id: int


class KeyspaceRequest(Request, kw_only=True, omit_defaults=True):
    keyspace: str = "default"
    epoch: int = 0
    """The keyspace-map epoch the client routed with; 0 lets the node route."""


class Ping(Request, tag="ping", kw_only=True):
    pass


class GetShardMap(Request, tag="shard_map", kw_only=True):
    keyspace: str | None = None


CONSISTENCY_LEVELS = ("strong", "bounded", "read_your_writes", "eventual")
"""Read consistency, as ZippyDB offers it (docs/protocol.md):

- strong: linearizable; the shard's leader under its lease, or any replica after a ReadIndex
  round with the leader.
- bounded: any replica whose state is provably at most `max_staleness_ms` old; else the
  replica refuses with Unavailable and the client tries another.
- read_your_writes: any replica that has applied `min_version` (the version of the client's
  last write to the shard); else Unavailable after a short wait.
- eventual: any replica, as it is.
"""


class ReadRequest(KeyspaceRequest, kw_only=True, omit_defaults=True):
    consistency: str = "strong"
    max_staleness_ms: int = 0
    """For `bounded`: how old the replica's state may be."""
    min_version: int = 0
    """For `read_your_writes`: the version (log index) of the client's last write."""


class Get(ReadRequest, tag="get", kw_only=True):
    key: bytes


class MultiGet(ReadRequest, tag="multi_get", kw_only=True):
    keys: list[bytes]


class Put(KeyspaceRequest, tag="put", kw_only=True, omit_defaults=True):
    key: bytes
    value: bytes
    ttl_ms: int | None = None
    keep_ttl: bool = False
    if_absent: bool = False
    if_present: bool = False
    if_version: int | None = None
    return_previous: bool = False


class Delete(KeyspaceRequest, tag="delete", kw_only=True, omit_defaults=True):
    key: bytes
    if_version: int | None = None
    return_previous: bool = False


class Incr(KeyspaceRequest, tag="incr", kw_only=True):
    key: bytes
    delta: int = 1


class Expire(KeyspaceRequest, tag="expire", kw_only=True):
    key: bytes
    ttl_ms: int | None
    """None removes the expiry."""


class BatchPut(msgspec.Struct, tag="put", kw_only=True, omit_defaults=True):
    key: bytes
    value: bytes
    ttl_ms: int | None = None
    if_absent: bool = False
    if_version: int | None = None


class BatchDelete(msgspec.Struct, tag="delete", kw_only=True, omit_defaults=True):
    key: bytes
    if_version: int | None = None


class BatchIncr(msgspec.Struct, tag="incr", kw_only=True):
    key: bytes
    delta: int = 1


BatchOp = BatchPut | BatchDelete | BatchIncr


class WriteBatch(KeyspaceRequest, tag="batch", kw_only=True):
    ops: list[BatchOp]


class Txn(KeyspaceRequest, tag="txn", kw_only=True):
    """Commit of an optimistic transaction: the versions it read, and its writes."""

    reads: list[tuple[bytes, int]]
    ops: list[BatchOp]


class Scan(ReadRequest, tag="scan", kw_only=True, omit_defaults=True):
    start: bytes | None = None
    end: bytes | None = None
    prefix: bytes | None = None
    reverse: bool = False
    limit: int = 100
    cursor: bytes | None = None


class DeleteRangeReq(KeyspaceRequest, tag="delete_range", kw_only=True, omit_defaults=True):
    start: bytes | None = None
    end: bytes | None = None
    prefix: bytes | None = None
    shard_id: int = 0
    """Only this shard (set when a node hands one shard's part to its leader); 0: all."""


class CreateKeyspace(Request, tag="create_keyspace", kw_only=True, omit_defaults=True):
    name: str
    shards: int = 8
    partitioning: str = "hash"
    split_points: list[bytes] | None = None


class ListKeyspaces(Request, tag="list_keyspaces", kw_only=True):
    pass


class Status(Request, tag="status", kw_only=True):
    pass


class Auth(Request, tag="auth", kw_only=True):
    """Authenticate this connection as `tenant` (or as the administrator, tenant "admin")."""

    tenant: str
    token: str


class CreateTenant(Request, tag="create_tenant", kw_only=True, omit_defaults=True):
    name: str
    quota: Quota | None = None


class ListTenants(Request, tag="list_tenants", kw_only=True):
    pass


class SetQuota(Request, tag="set_quota", kw_only=True, omit_defaults=True):
    """Replace a tenant's quota (or one keyspace's, with `keyspace`); None removes it."""

    tenant: str
    quota: Quota | None
    keyspace: str | None = None


class DeleteTenant(Request, tag="delete_tenant", kw_only=True):
    name: str


class RotateToken(Request, tag="rotate_token", kw_only=True):
    tenant: str


# -- between nodes (after a PeerHello with the cluster secret) -----------------------------


class PeerHello(Request, tag="peer_hello", kw_only=True):
    """Authenticates a connection as node `node_id` of the cluster."""

    node_id: int
    secret: str
    host: str = ""
    port: int = 0
    """Where the peer listens (so a node that has no catalog yet can answer it)."""


class RaftMessages(Request, tag="raft", kw_only=True):
    """One-way (no response): Raft messages of many groups, as (group id, message)."""

    src: int
    envelopes: list[tuple[int, RaftMessage]]


class Forwarded(Request, tag="forwarded", kw_only=True):
    """A client request relayed to the node that can serve it, run as `tenant`."""

    tenant: str
    body: bytes


class Join(Request, tag="join", kw_only=True, omit_defaults=True):
    """A new node asks the metadata leader to add it to the cluster."""

    node_id: int
    host: str
    port: int
    http_port: int = 0
    resp_port: int = 0


class QuotaReport(Request, tag="quota_report", kw_only=True):
    """A node tells its peers how many requests each tenant with a quota sent it since its
    last report, so that every node enforces its share of the tenant's quota."""

    node_id: int
    demand: dict[str, int]


AnyRequest = (
    Ping
    | GetShardMap
    | Get
    | MultiGet
    | Put
    | Delete
    | Incr
    | Expire
    | WriteBatch
    | Txn
    | Scan
    | DeleteRangeReq
    | CreateKeyspace
    | ListKeyspaces
    | Status
    | Auth
    | CreateTenant
    | ListTenants
    | SetQuota
    | DeleteTenant
    | RotateToken
    | PeerHello
    | RaftMessages
    | Forwarded
    | Join
    | QuotaReport
)

REQUEST_TYPES: tuple[type[Request], ...] = typing.get_args(AnyRequest)
OPERATIONS: frozenset[str] = frozenset(str(t.__struct_config__.tag) for t in REQUEST_TYPES)


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    detail: Any = None


class Response(msgspec.Struct, omit_defaults=True):
    id: int
    result: Any = None
    error: ErrorBody | None = None


class RawResponse(msgspec.Struct, omit_defaults=True):
    """A response as the client decodes it: the result stays raw until the caller, who
    knows which operation it sent, decodes it into the right type."""

    id: int
    result: msgspec.Raw = msgspec.Raw(b"\xc0")
    error: ErrorBody | None = None


# -- results --------------------------------------------------------------------------


class PutResult(msgspec.Struct, omit_defaults=True):
    version: int
    existed: bool = False
    previous: Stored | None = None


class DeleteResult(msgspec.Struct, omit_defaults=True):
    deleted: bool
    version: int
    previous: Stored | None = None


class IncrResult(msgspec.Struct):
    value: int
    version: int


class BatchResult(msgspec.Struct):
    version: int
    results: list[Any]
    """Per op: put -> existed (bool), delete -> deleted (bool), incr -> new value (int)."""


class ScanItem(msgspec.Struct, array_like=True):
    key: bytes
    value: bytes
    version: int
    expire_at_ms: int = 0


class ScanPage(msgspec.Struct):
    items: list[ScanItem]
    cursor: bytes | None = None
    """Pass back with the same scan arguments for the next page; None: no more."""


class DeleteRangeResult(msgspec.Struct):
    deleted: int
    """Keys deleted, or -1 when range tombstones were used and the count is unknown."""


class TenantCredentials(msgspec.Struct):
    name: str
    token: str


class TenantSummary(msgspec.Struct):
    name: str
    quota: Quota | None
    keyspace_quotas: dict[str, Quota]
    keyspaces: list[str]
    stored_bytes: int
    usage: dict[str, int]


class KeyspaceSummary(msgspec.Struct):
    name: str
    keyspace_id: int
    partitioning: str
    shards: int
    epoch: int


def frame(body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body)) + body
