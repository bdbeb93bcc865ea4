"""One shard's state machine: applies committed log entries to the engine and serves reads.

It is deterministic: the outcome of an entry depends only on the engine's state and the
entry (whose `now_ms` fixes expiry decisions), so every replica of a shard that applies the
same log holds the same data. Versions are log indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from spindle.kv import limits
from spindle.kv.commands import (
    Batch,
    DeleteOp,
    DeleteRange,
    Entry,
    ExpireOp,
    IncrOp,
    Purge,
    PutOp,
)
from spindle.kv.errors import Conflict, InvalidArgument, SpindleError
from spindle.kv.keys import (
    applied_key,
    decode_u64,
    encode_u64,
    keyspace_prefix,
    ttl_key,
)
from spindle.kv.storage import CF, Engine, WriteBatch
from spindle.kv.values import HEADER_BYTES, Stored, decode_stored, encode_stored, stored_header

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

OpResult = bool | int | Stored | None
"""Per-op result of a Batch: existed (put, delete, expire), the new value (incr), or with
`return_previous` the previous value (None if absent)."""


_image_encoder = msgspec.msgpack.Encoder()
_image_decoder = msgspec.msgpack.Decoder(tuple[int, int, list[tuple[bytes, bytes]], list[bytes]])


def keyspace_end_key(prefix: bytes) -> bytes:
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")


def _in_range(internal_key: bytes, start: bytes, end: bytes | None) -> bool:
    return internal_key >= start and (end is None or internal_key < end)


class ShardState:
    """Applies entries of one shard, and reads its current state.

    `write` is how a finished batch reaches the engine (the node's group committer counts
    writes so it can tell when they are durable).
    """

    def __init__(
        self,
        engine: Engine,
        keyspace_id: int,
        shard_id: int,
        write: Callable[[WriteBatch], int],
        *,
        key_offset: int = 0,
    ) -> None:
        self.engine = engine
        self.keyspace_id = keyspace_id
        self.shard_id = shard_id
        self.prefix = keyspace_prefix(keyspace_id)
        self._write = write
        self.last_write_seq = 0
        """Group-commit sequence of this shard's latest write: a read of this shard waits
        until it is durable, and only for it."""
        self.key_offset = key_offset
        """Bytes of hash prefix in front of user keys; error messages show user keys."""
        self._applied_key = applied_key(shard_id)
        self._pending_bytes = 0
        raw = engine.get(CF.META, self._applied_key)
        self.applied_index = 0 if raw is None else decode_u64(raw[:8])
        self.stored_bytes = 0 if raw is None or len(raw) < 16 else decode_u64(raw[8:16])
        """Physical bytes (keys + stored values) this shard holds, for stored-bytes quotas;
        maintained by apply, so every replica agrees."""

    # -- reads ------------------------------------------------------------------------

    def get(self, internal_key: bytes, now_ms: int) -> Stored | None:
        raw = self.engine.get(CF.DATA, self.prefix + internal_key)
        if raw is None:
            return None
        stored = decode_stored(raw)
        return None if stored.expired(now_ms) else stored

    def scan(
        self,
        start: bytes,
        end: bytes | None,
        *,
        reverse: bool,
        now_ms: int,
        keep: Callable[[bytes], bool] | None = None,
    ) -> Any:
        """Yield (internal key, Stored) of live keys in [start, end) of this shard."""
        prefix = self.prefix
        engine_end = prefix + end if end is not None else _next_prefix(prefix)
        cut = len(prefix)
        for raw_key, raw in self.engine.scan(CF.DATA, prefix + start, engine_end, reverse=reverse):
            internal_key = raw_key[cut:]
            if keep is not None and not keep(internal_key):
                continue
            _, expire_at_ms = stored_header(raw)
            if expire_at_ms and expire_at_ms <= now_ms:
                continue
            yield internal_key, decode_stored(raw)

    # -- apply ------------------------------------------------------------------------

    def apply(self, index: int, entry: Entry) -> Any:
        """Apply entry `index`; returns its result, or the SpindleError it failed with (a
        failed entry still consumes its index and changes nothing else)."""
        assert index == self.applied_index + 1, (self.shard_id, index, self.applied_index)
        batch = self.engine.new_batch()
        command = entry.command
        try:
            if isinstance(command, Batch):
                ops = command.ops
                if len(ops) == 1 and type(ops[0]) is PutOp and not command.reads:
                    result: Any = self._apply_put(
                        batch, index, entry.now_ms, ops[0], command.return_previous
                    )
                else:
                    result = self._apply_batch(batch, index, entry.now_ms, command)
            elif isinstance(command, DeleteRange):
                result = self._apply_delete_range(batch, command, entry.now_ms)
            else:
                assert isinstance(command, Purge)
                result = self._apply_purge(batch, command, entry.now_ms)
        except SpindleError as error:
            batch = self.engine.new_batch()
            result = error
            self._pending_bytes = 0
        self.stored_bytes += self._pending_bytes
        self._pending_bytes = 0
        assert self.stored_bytes >= 0, (self.shard_id, self.stored_bytes)
        batch.put(
            CF.META,
            self._applied_key,
            encode_u64(index) + encode_u64(self.stored_bytes),
        )
        self.last_write_seq = self._write(batch)
        self.applied_index = index
        return result

    def skip(self, index: int) -> None:
        """Consume log index `index` without a command (a leader's first entry, a
        membership change)."""
        assert index == self.applied_index + 1, (self.shard_id, index, self.applied_index)
        batch = self.engine.new_batch()
        batch.put(CF.META, self._applied_key, encode_u64(index) + encode_u64(self.stored_bytes))
        self.last_write_seq = self._write(batch)
        self.applied_index = index

    def image(self, start: bytes, end: bytes | None) -> bytes:
        """Every record of the internal-key range [start, end) with its expiry index, for a
        follower that needs a snapshot. Held in memory: bounded by the shard's size."""
        data_end = self.prefix + end if end is not None else keyspace_end_key(self.prefix)
        records = list(self.engine.scan(CF.DATA, self.prefix + start, data_end))
        ttl = [
            key
            for key, _ in self.engine.scan(CF.TTL, self.prefix, keyspace_end_key(self.prefix))
            if _in_range(key[12:], start, end)
        ]
        return _image_encoder.encode((self.applied_index, self.stored_bytes, records, ttl))

    def restore(self, index: int, data: bytes, start: bytes, end: bytes | None) -> None:
        """Replace the range's records with a snapshot image taken at `index`."""
        _, stored_bytes, records, ttl = _image_decoder.decode(data)
        batch = self.engine.new_batch()
        data_end = self.prefix + end if end is not None else keyspace_end_key(self.prefix)
        batch.delete_range(CF.DATA, self.prefix + start, data_end)
        for key, _ in self.engine.scan(CF.TTL, self.prefix, keyspace_end_key(self.prefix)):
            if _in_range(key[12:], start, end):
                batch.delete(CF.TTL, key)
        for key, value in records:
            batch.put(CF.DATA, key, value)
        for key in ttl:
            batch.put(CF.TTL, key, b"")
        batch.put(CF.META, self._applied_key, encode_u64(index) + encode_u64(stored_bytes))
        self.last_write_seq = self._write(batch)
        self.applied_index = index
        self.stored_bytes = stored_bytes

    def _apply_put(
        self, batch: WriteBatch, index: int, now_ms: int, op: PutOp, return_previous: bool
    ) -> list[OpResult]:
        """`_apply_batch` for the commonest entry, a batch of one put and no reads: the
        same outcome (tests/kv/test_statemachine.py compares the two) without the
        general path's overlay, which a single op does not need."""
        key = op.key
        engine_key = self.prefix + key
        raw = self.engine.get(CF.DATA, engine_key)
        old_bytes = 0
        found_version = 0
        found_expire = 0
        exists = False
        if raw is not None:
            old_bytes = len(key) + len(raw)
            version, expire_at_ms = stored_header(raw)
            if expire_at_ms == 0 or expire_at_ms > now_ms:
                exists = True
                found_version = version
                found_expire = expire_at_ms
        if op.if_version is not None and op.if_version != found_version:
            raise Conflict(
                f"version mismatch on {key!r}: expected {op.if_version}, found {found_version}",
                detail={"key": key, "expected": op.if_version, "found": found_version},
            )
        if op.if_absent and exists:
            user_key = key[self.key_offset :]
            raise Conflict(f"key {user_key!r} exists", detail={"key": user_key})
        if op.if_present and not exists:
            user_key = key[self.key_offset :]
            raise Conflict(f"key {user_key!r} does not exist", detail={"key": user_key})
        expire = found_expire if op.keep_ttl and exists else op.expire_at_ms
        value = op.value
        batch.put(CF.DATA, engine_key, encode_stored(value, index, expire))
        if expire:
            batch.put(CF.TTL, ttl_key(self.keyspace_id, expire, key), b"")
        self._pending_bytes = len(key) + HEADER_BYTES + len(value) - old_bytes
        if return_previous:
            return [decode_stored(raw) if exists and raw is not None else None]
        return [exists]

    def _apply_batch(
        self, batch: WriteBatch, index: int, now_ms: int, command: Batch
    ) -> list[OpResult]:
        overlay: dict[bytes, Stored | None] = {}
        old_sizes: dict[bytes, int] = {}

        def current(key: bytes) -> Stored | None:
            if key in overlay:
                return overlay[key]
            raw = self.engine.get(CF.DATA, self.prefix + key)
            if key not in old_sizes:
                old_sizes[key] = 0 if raw is None else len(key) + len(raw)
            if raw is None:
                return None
            stored = decode_stored(raw)
            return None if stored.expired(now_ms) else stored

        for key, seen_version in command.reads:
            found = current(key)
            found_version = found.version if found is not None else 0
            if found_version != seen_version:
                user_key = key[self.key_offset :]
                raise Conflict(
                    f"transaction read {user_key!r} at version {seen_version}, "
                    f"it is now at version {found_version}",
                    detail={"key": user_key, "expected": seen_version, "found": found_version},
                )
        results: list[OpResult] = []
        for op in command.ops:
            found = current(op.key)
            user_key = op.key[self.key_offset :]
            found_version = found.version if found is not None else 0
            if_version = getattr(op, "if_version", None)
            if if_version is not None and if_version != found_version:
                raise Conflict(
                    f"version mismatch on {op.key!r}: expected {if_version}, found {found_version}",
                    detail={"key": op.key, "expected": if_version, "found": found_version},
                )
            existed: OpResult = found if command.return_previous else found is not None
            if isinstance(op, PutOp):
                if op.if_absent and found is not None:
                    raise Conflict(f"key {user_key!r} exists", detail={"key": user_key})
                if op.if_present and found is None:
                    raise Conflict(f"key {user_key!r} does not exist", detail={"key": user_key})
                expire = found.expire_at_ms if op.keep_ttl and found else op.expire_at_ms
                overlay[op.key] = Stored(op.value, index, expire)
                results.append(existed)
            elif isinstance(op, DeleteOp):
                overlay[op.key] = None
                results.append(existed)
            elif isinstance(op, IncrOp):
                base = _parse_int(found.value) if found is not None else 0
                total = base + op.delta
                if not INT64_MIN <= total <= INT64_MAX:
                    raise InvalidArgument("increment or decrement would overflow a 64-bit integer")
                expire = found.expire_at_ms if found is not None else 0
                overlay[op.key] = Stored(str(total).encode(), index, expire)
                results.append(total)
            else:
                assert isinstance(op, ExpireOp)
                if found is not None:
                    overlay[op.key] = Stored(found.value, index, op.expire_at_ms)
                results.append(existed)
        delta = 0
        for key, stored in overlay.items():
            engine_key = self.prefix + key
            delta -= old_sizes[key]
            if stored is None:
                batch.delete(CF.DATA, engine_key)
                continue
            delta += len(key) + HEADER_BYTES + len(stored.value)
            batch.put(CF.DATA, engine_key, encode_stored(stored.value, index, stored.expire_at_ms))
            if stored.expire_at_ms:
                batch.put(CF.TTL, ttl_key(self.keyspace_id, stored.expire_at_ms, key), b"")
        self._pending_bytes = delta
        return results

    def _apply_delete_range(
        self, batch: WriteBatch, command: DeleteRange, now_ms: int
    ) -> tuple[int, bool]:
        """Delete key by key (so stored bytes stay exact), at most
        `limits.DELETE_RANGE_KEYS_PER_ENTRY_MAX` per entry. Returns (keys deleted, more)."""
        user_start = command.user_start
        user_end = command.user_end
        filtered = user_start is not None or user_end is not None
        cut = len(self.prefix) + self.key_offset
        deleted = 0
        freed = 0
        for raw_key, raw in self.engine.scan(
            CF.DATA, self.prefix + command.start, self.prefix + command.end
        ):
            if filtered:
                user_key = raw_key[cut:]
                if user_key < (user_start or b"") or (
                    user_end is not None and user_key >= user_end
                ):
                    continue
            if deleted == limits.DELETE_RANGE_KEYS_PER_ENTRY_MAX:
                self._pending_bytes = -freed
                return deleted, True
            batch.delete(CF.DATA, raw_key)
            freed += len(raw_key) - len(self.prefix) + len(raw)
            deleted += 1
        self._pending_bytes = -freed
        return deleted, False

    def _apply_purge(self, batch: WriteBatch, command: Purge, now_ms: int) -> int:
        purged = 0
        for key, expire_at_ms in command.keys:
            raw = self.engine.get(CF.DATA, self.prefix + key)
            if raw is not None:
                _, current_expire = stored_header(raw)
                if current_expire == expire_at_ms and expire_at_ms <= now_ms:
                    batch.delete(CF.DATA, self.prefix + key)
                    self._pending_bytes -= len(key) + len(raw)
                    purged += 1
            batch.delete(CF.TTL, ttl_key(self.keyspace_id, expire_at_ms, key))
        return purged


def _parse_int(raw: bytes) -> int:
    """Redis-compatible integer parse: optional sign, decimal digits, no spaces, int64."""
    text = raw.decode("ascii", errors="replace")
    body = text[1:] if text[:1] == "-" else text
    if not body.isdigit() or len(raw) > 20 or (len(body) > 1 and body[0] == "0"):
        raise InvalidArgument("value is not an integer or out of range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument("value is not an integer or out of range")
    return value


def _next_prefix(prefix: bytes) -> bytes:
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")
