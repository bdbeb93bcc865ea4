"""Key layout of the queue keyspace.

The queue keyspace is range-partitioned into N buckets, one store shard each: every key
starts with its bucket (u16 BE), and the split points are the bucket boundaries. A call
lives wholly in one bucket (the bucket is the first four hex digits of its id), so each
state change is one atomic single-shard batch, and N buckets give N independent shards for
enqueue, scan and lease. Within a bucket:

    c/ call_id                          -> args (JSON), written once
    s/ call_id                          -> CallState (the truth about the call)
    r/ criticality deadline_ms call_id  -> CallState   ready: EDF order per criticality
    d/ not_before_ms call_id            -> CallState   delayed (start_after, retry backoff)
    l/ lease_expiry_ms call_id          -> CallState   leased (running)
    i/ digest(function, idempotency key)-> call_id
    x/ call_id                          -> function    dead letters

A queued or running call has exactly one index entry (r/, d/ or l/); every transition
deletes it with `if_version` and writes the next one plus s/ in the same batch, so the
index entry is the token that serialises transitions (a lost race is a `Conflict`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time

from spindle.functions.spec import CallState, Criticality
from spindle.kv.errors import InvalidArgument

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

ARGS = b"c/"
STATE = b"s/"
READY = b"r/"
DELAYED = b"d/"
LEASED = b"l/"
IDEMPOTENCY = b"i/"
DEAD = b"x/"
CALL_ID_HEX_CHARS = 24


def bucket_prefix(bucket: int) -> bytes:
    return _U16.pack(bucket)


def split_points(buckets: int) -> list[bytes]:
    return [bucket_prefix(b) for b in range(1, buckets)]


def new_call_id(bucket: int, now_ms: int | None = None) -> str:
    """bucket (4 hex) + submit time ms (12 hex) + random (8 hex): sortable, self-routing."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{bucket:04x}{ms & 0xFFFFFFFFFFFF:012x}{os.urandom(4).hex()}"


def bucket_of(call_id: str) -> int:
    if len(call_id) != CALL_ID_HEX_CHARS:
        raise InvalidArgument(f"malformed call id {call_id!r}")
    try:
        return int(call_id[:4], 16)
    except ValueError:
        raise InvalidArgument(f"malformed call id {call_id!r}") from None


def bucket_for_idempotency(function: str, idempotency_key: str, buckets: int) -> int:
    return int.from_bytes(_idempotency_digest(function, idempotency_key)[:4], "big") % buckets


def _idempotency_digest(function: str, idempotency_key: str) -> bytes:
    return hashlib.blake2b(f"{function}\0{idempotency_key}".encode(), digest_size=16).digest()


def args_key(call_id: str) -> bytes:
    return bucket_prefix(bucket_of(call_id)) + ARGS + call_id.encode()


def state_key(call_id: str) -> bytes:
    return bucket_prefix(bucket_of(call_id)) + STATE + call_id.encode()


def ready_key(state: CallState) -> bytes:
    return (
        bucket_prefix(bucket_of(state.call_id))
        + READY
        + bytes([int(state.criticality)])
        + _U64.pack(state.deadline_ms)
        + state.call_id.encode()
    )


def delayed_key(state: CallState) -> bytes:
    return (
        bucket_prefix(bucket_of(state.call_id))
        + DELAYED
        + _U64.pack(state.not_before_ms)
        + state.call_id.encode()
    )


def leased_key(state: CallState) -> bytes:
    return (
        bucket_prefix(bucket_of(state.call_id))
        + LEASED
        + _U64.pack(state.lease_expiry_ms)
        + state.call_id.encode()
    )


def idempotency_key(function: str, key: str, bucket: int) -> bytes:
    return bucket_prefix(bucket) + IDEMPOTENCY + _idempotency_digest(function, key)


def dead_key(call_id: str) -> bytes:
    return bucket_prefix(bucket_of(call_id)) + DEAD + call_id.encode()


def section(bucket: int, tag: bytes) -> bytes:
    return bucket_prefix(bucket) + tag


def section_end(bucket: int, tag: bytes) -> bytes:
    """End key (exclusive) of a whole section: its tag with the last byte incremented."""
    return bucket_prefix(bucket) + tag[:-1] + bytes([tag[-1] + 1])


def section_until(bucket: int, tag: bytes, until_ms: int) -> bytes:
    """End key (exclusive) of the entries of a time-ordered section due by `until_ms`."""
    return bucket_prefix(bucket) + tag + _U64.pack(until_ms + 1)


def ready_criticality_prefix(bucket: int, criticality: Criticality) -> bytes:
    return bucket_prefix(bucket) + READY + bytes([int(criticality)])
