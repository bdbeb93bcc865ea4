"""Encoding of stored values: every value carries the version (log index) that wrote it and
its expiry time, so conditional writes and TTL need no second lookup."""

from __future__ import annotations

import struct

import msgspec

_HEADER = struct.Struct(">QQ")
HEADER_BYTES = _HEADER.size
"""version (u64) + expire_at_ms (u64, 0 = never) in front of the user value."""


class Stored(msgspec.Struct, frozen=True, array_like=True):
    """A stored value as the state machine and readers see it."""

    value: bytes
    version: int
    expire_at_ms: int = 0

    def expired(self, now_ms: int) -> bool:
        return self.expire_at_ms != 0 and self.expire_at_ms <= now_ms


def encode_stored(value: bytes, version: int, expire_at_ms: int) -> bytes:
    return _HEADER.pack(version, expire_at_ms) + value


def decode_stored(raw: bytes) -> Stored:
    version, expire_at_ms = _HEADER.unpack_from(raw)
    return Stored(raw[HEADER_BYTES:], version, expire_at_ms)


def stored_header(raw: bytes) -> tuple[int, int]:
    """(version, expire_at_ms) without copying the value."""
    version, expire_at_ms = _HEADER.unpack_from(raw)
    return int(version), int(expire_at_ms)
