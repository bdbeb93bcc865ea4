"""Log commands: what a shard's log orders and every replica applies.

Keys here are internal keys (see `keys`). A command carries the proposer's clock reading
(`now_ms`) so that every replica decides expiry identically when it applies the entry.
"""

from __future__ import annotations

import msgspec


class PutOp(msgspec.Struct, tag="put", array_like=True, frozen=True):
    key: bytes
    value: bytes
    expire_at_ms: int = 0
    """Absolute expiry, 0 = never."""
    keep_ttl: bool = False
    """Keep the existing key's expiry instead of `expire_at_ms`."""
    if_absent: bool = False
    if_version: int | None = None
    """Write only if the key's current version is this (0: the key is absent)."""
    if_present: bool = False


class DeleteOp(msgspec.Struct, tag="del", array_like=True, frozen=True):
    key: bytes
    if_version: int | None = None


class IncrOp(msgspec.Struct, tag="incr", array_like=True, frozen=True):
    key: bytes
    delta: int


class ExpireOp(msgspec.Struct, tag="expire", array_like=True, frozen=True):
    """Set (expire_at_ms > 0) or clear (0) an existing key's expiry; keeps its value."""

    key: bytes
    expire_at_ms: int


WriteOp = PutOp | DeleteOp | IncrOp | ExpireOp


class Batch(msgspec.Struct, tag="batch", array_like=True, frozen=True):
    """Atomic: every condition holds and every op applies, or nothing does."""

    ops: list[WriteOp]
    reads: list[tuple[bytes, int]] = []
    """Optimistic transaction read set: (key, version seen); any change is a Conflict."""
    return_previous: bool = False


class DeleteRange(msgspec.Struct, tag="delrange", array_like=True, frozen=True):
    start: bytes
    end: bytes
    user_start: bytes | None = None
    """For hash keyspaces: user-key bounds, since the internal range is the whole shard."""
    user_end: bytes | None = None


class Purge(msgspec.Struct, tag="purge", array_like=True, frozen=True):
    """Delete keys whose expiry passed; each entry names the expiry the purger saw, so a key
    rewritten since is left alone."""

    keys: list[tuple[bytes, int]]


Command = Batch | DeleteRange | Purge


class Entry(msgspec.Struct, array_like=True, frozen=True):
    now_ms: int
    command: Command


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _entry_encoder.encode(entry)


def decode_entry(raw: bytes) -> Entry:
    return _entry_decoder.decode(raw)
