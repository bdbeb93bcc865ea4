"""A Raft group's stable storage kept in the node's engine, with its recent tail in memory.

Every group of a node shares the node's engine: entries live in the LOG family under
group id (u64 BE) + index (u64 BE); the hard state and the compaction point (snapshot
metadata) live in META. The node's Ready loop stages the writes of every group into one
batch and syncs once (`stage`); this class answers the core's reads (`Storage` protocol)
from an in-memory tail of at most `RAFT_LOG_CACHE_ENTRIES_MAX` entries, and from the engine
below it (only a lagging follower needs those).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from spindle.kv.keys import encode_u64
from spindle.kv.raft import ConfState, Entry, HardState, Ready, Snapshot, SnapshotMetadata
from spindle.kv.raft.errors import CompactedError, UnavailableError
from spindle.kv.raft.storage import limit_bytes
from spindle.kv.storage import CF, Engine, WriteBatch

RAFT_LOG_CACHE_ENTRIES_MAX = 4096
"""Newest log entries of one group held in memory (older ones are read from the engine)."""

_HARD_STATE_PREFIX = b"raft/hs/"
_CONF_STATE_PREFIX = b"raft/conf/"
_SNAPSHOT_PREFIX = b"raft/snap/"
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_snapshot_meta_decoder = msgspec.msgpack.Decoder(SnapshotMetadata)
_conf_decoder = msgspec.msgpack.Decoder(ConfState)

SnapshotData = Callable[[], tuple[int, ConfState, bytes]]
"""Produces the state machine's image now: (applied index, membership, bytes)."""


class RaftStorage:
    """Storage for one group (the core's `Storage` protocol, plus the write side)."""

    def __init__(self, engine: Engine, group_id: int) -> None:
        self.engine = engine
        self.group_id = group_id
        self._prefix = encode_u64(group_id)
        self._end = encode_u64(group_id + 1)
        raw = engine.get(CF.META, _HARD_STATE_PREFIX + self._prefix)
        self._hard_state = HardState() if raw is None else _hard_state_decoder.decode(raw)
        raw = engine.get(CF.META, _SNAPSHOT_PREFIX + self._prefix)
        self._snap = SnapshotMetadata() if raw is None else _snapshot_meta_decoder.decode(raw)
        raw = engine.get(CF.META, _CONF_STATE_PREFIX + self._prefix)
        self._conf_state = self._snap.conf_state if raw is None else _conf_decoder.decode(raw)
        """Membership as of the state machine's applied index (what a restart starts
        from: changes in entries up to it are not applied again)."""
        self.snapshot_data: SnapshotData | None = None
        """Set by the replica: how to image the state machine when a follower needs it."""
        tail: list[Entry] = []
        for _, value in engine.scan(CF.LOG, self._prefix, self._end, reverse=True):
            tail.append(_entry_decoder.decode(value))
            if len(tail) >= RAFT_LOG_CACHE_ENTRIES_MAX:
                break
        tail.reverse()
        self._tail = tail
        self._last = tail[-1].index if tail else self._snap.index
        assert not tail or tail[0].index > self._snap.index, "log entries below the snapshot"

    def is_empty(self) -> bool:
        """Nothing was ever stored for this group on this node."""
        return (
            self._hard_state == HardState() and self._snap == SnapshotMetadata() and not self._tail
        )

    # -- read side (the core's Storage protocol) ---------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def save_conf_state(self, batch: WriteBatch, conf_state: ConfState) -> None:
        """Record membership as applied; in the same batch as the applied index."""
        self._conf_state = conf_state
        batch.put(CF.META, _CONF_STATE_PREFIX + self._prefix, _entry_encoder.encode(conf_state))

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._snap.index + 1

    def last_index(self) -> int:
        return self._last

    def _tail_start(self) -> int:
        return self._tail[0].index if self._tail else self._last + 1

    def term(self, index: int) -> int:
        if index == self._snap.index:
            return self._snap.term
        if index < self._snap.index:
            raise CompactedError(f"index {index} < compaction point {self._snap.index}")
        if index > self._last:
            raise UnavailableError(f"index {index} > last index {self._last}")
        start = self._tail_start()
        if index >= start:
            return self._tail[index - start].term
        raw = self.engine.get(CF.LOG, self._prefix + encode_u64(index))
        assert raw is not None, (self.group_id, index)
        return _entry_decoder.decode(raw).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._snap.index:
            raise CompactedError(f"index {lo} <= compaction point {self._snap.index}")
        if hi > self._last + 1:
            raise UnavailableError(f"index {hi - 1} > last index {self._last}")
        start = self._tail_start()
        found: list[Entry] = []
        if lo < start:
            upto = min(hi, start)
            for _, value in self.engine.scan(
                CF.LOG, self._prefix + encode_u64(lo), self._prefix + encode_u64(upto)
            ):
                found.append(_entry_decoder.decode(value))
            assert len(found) == upto - lo, (self.group_id, lo, upto, len(found))
            lo = upto
        if lo < hi:
            found.extend(self._tail[lo - start : hi - start])
        return limit_bytes(found, max_bytes)

    def snapshot(self) -> Snapshot:
        """The state machine's image as of now (its index is at least the compaction point)."""
        if self.snapshot_data is None:
            return Snapshot(metadata=self._snap)
        index, conf_state, data = self.snapshot_data()
        assert index >= self._snap.index, (index, self._snap.index)
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        return Snapshot(metadata=metadata, data=data)

    # -- write side (the node's Ready loop) --------------------------------------------

    def bootstrap(self, batch: WriteBatch, voters: tuple[int, ...]) -> None:
        """Make this an initial member of a new group whose voters are `voters`."""
        assert self.is_empty(), f"group {self.group_id} already has state"
        self._snap = SnapshotMetadata(conf_state=ConfState(voters))
        batch.put(CF.META, _SNAPSHOT_PREFIX + self._prefix, _entry_encoder.encode(self._snap))
        self.save_conf_state(batch, self._snap.conf_state)

    def stage(self, batch: WriteBatch, ready: Ready) -> None:
        """Add what `ready` asks to persist to `batch` (the node writes and syncs it)."""
        if ready.snapshot is not None:
            self._install(batch, ready.snapshot.metadata)
        if ready.entries:
            self._append(batch, ready.entries)
        if ready.hard_state is not None:
            self._hard_state = ready.hard_state
            batch.put(
                CF.META,
                _HARD_STATE_PREFIX + self._prefix,
                _entry_encoder.encode(ready.hard_state),
            )

    def _install(self, batch: WriteBatch, metadata: SnapshotMetadata) -> None:
        batch.delete_range(CF.LOG, self._prefix, self._end)
        batch.put(CF.META, _SNAPSHOT_PREFIX + self._prefix, _entry_encoder.encode(metadata))
        self._snap = metadata
        self.save_conf_state(batch, metadata.conf_state)
        self._tail = []
        self._last = metadata.index

    def _append(self, batch: WriteBatch, entries: list[Entry]) -> None:
        first = entries[0].index
        if entries[-1].index <= self._snap.index:
            return
        if first <= self._snap.index:
            entries = entries[self._snap.index + 1 - first :]
            first = entries[0].index
        assert first <= self._last + 1, f"group {self.group_id}: append leaves a gap"
        if first <= self._last:
            batch.delete_range(CF.LOG, self._prefix + encode_u64(first), self._end)
            start = self._tail_start()
            if first >= start:
                del self._tail[first - start :]
            else:
                self._tail = []
        for entry in entries:
            batch.put(CF.LOG, self._prefix + encode_u64(entry.index), _entry_encoder.encode(entry))
        if self._tail and self._tail[-1].index + 1 != first:
            self._tail = []
        self._tail.extend(entries)
        if len(self._tail) > RAFT_LOG_CACHE_ENTRIES_MAX:
            del self._tail[: len(self._tail) - RAFT_LOG_CACHE_ENTRIES_MAX]
        self._last = entries[-1].index

    def compact(self, batch: WriteBatch, index: int, conf_state: ConfState) -> None:
        """Drop entries up to `index` (applied by the state machine, which images itself
        on demand through `snapshot_data`)."""
        if index <= self._snap.index:
            return
        assert index <= self._last, (index, self._last)
        metadata = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf_state)
        batch.delete_range(CF.LOG, self._prefix, self._prefix + encode_u64(index + 1))
        batch.put(CF.META, _SNAPSHOT_PREFIX + self._prefix, _entry_encoder.encode(metadata))
        self._snap = metadata
        start = self._tail_start()
        if index >= start:
            del self._tail[: index + 1 - start]
