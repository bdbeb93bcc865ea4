"""Engine key layout. Every shard's data is one contiguous engine range, so a shard can be
copied, split or moved as a unit.

DATA: keyspace_id (u32 BE) + internal key. The internal key is the user key for range-
partitioned keyspaces, and a 4-byte hash of it followed by the user key for hash-partitioned
ones, so shards (ranges of internal keys) spread load evenly.
TTL:  keyspace_id (u32 BE) + expire_at_ms (u64 BE) + internal key -> b"".
META: b"catalog" -> the catalog; b"applied/" + shard_id (u64 BE) -> last applied log index.
"""

from __future__ import annotations

import hashlib
import struct

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

HASH_PREFIX_BYTES = 4
CATALOG_KEY = b"catalog"
APPLIED_PREFIX = b"applied/"


def keyspace_prefix(keyspace_id: int) -> bytes:
    return _U32.pack(keyspace_id)


def keyspace_end(keyspace_id: int) -> bytes:
    """First engine key after every key of the keyspace."""
    return _U32.pack(keyspace_id + 1)


def hash_prefix(user_key: bytes) -> bytes:
    return hashlib.blake2b(user_key, digest_size=HASH_PREFIX_BYTES).digest()


def applied_key(shard_id: int) -> bytes:
    return APPLIED_PREFIX + _U64.pack(shard_id)


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def ttl_key(keyspace_id: int, expire_at_ms: int, internal_key: bytes) -> bytes:
    return _U32.pack(keyspace_id) + _U64.pack(expire_at_ms) + internal_key


def split_ttl_key(raw: bytes) -> tuple[int, bytes]:
    """(expire_at_ms, internal key) of a TTL index key."""
    return int(_U64.unpack_from(raw, 4)[0]), raw[12:]


def prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with `prefix` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
