"""One replica of one shard: its log, its state machine, and the data API's semantics.

Every write is an `Entry` proposed to the shard's log; the log orders it, the state machine
applies it, and the caller learns the result once the entry is durable. A replicated shard
uses `RaftLog` (its Raft group's replica on this node: committed by a quorum); a shard with
one replica uses `LocalLog`, which commits on proposal and pays no consensus round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from spindle.kv.commands import Entry, decode_entry, encode_entry
from spindle.kv.errors import SpindleError
from spindle.kv.groupcommit import GroupCommitter
from spindle.kv.replica import Replica
from spindle.kv.shardmap import KeyspaceInfo, ShardInfo
from spindle.kv.statemachine import ShardState

Finish = Callable[[int, Any], Any]
"""Maps (log index, state-machine result) to what the proposer is answered."""


def _pair(index: int, result: Any) -> tuple[int, Any]:
    return index, result


class ShardLog(Protocol):
    def propose(self, entry: Entry, finish: Finish = _pair) -> asyncio.Future[Any]:
        """Order `entry`; the future resolves to `finish(log index, result)` once the
        entry is committed, applied and durable, or raises the error it failed with.
        (`finish` shapes the response where the result is made: no second future.)"""
        ...


class LocalLog:
    """The trivial log of a single replica: an entry commits the moment it is proposed.

    It applies the entry at once (the write is visible to later entries immediately) and
    answers only after the group commit made it durable. The applied index persisted with
    each entry is the log's only state, so there is nothing to replay after a crash.
    """

    def __init__(self, state: ShardState, committer: GroupCommitter) -> None:
        self.state = state
        self.committer = committer

    def propose(self, entry: Entry, finish: Finish = _pair) -> asyncio.Future[Any]:
        index = self.state.applied_index + 1
        result = self.state.apply(index, entry)
        if isinstance(result, SpindleError):
            return self.committer.after_durable(result)
        return self.committer.after_durable(finish(index, result))


class RaftLog:
    """The log of a replicated shard: its Raft group's replica on this node."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def propose(self, entry: Entry, finish: Finish = _pair) -> asyncio.Future[Any]:
        return self.replica.propose(encode_entry(entry), finish)


class ShardApplier:
    """Applies a replicated shard's committed entries to its state (the `Applier`)."""

    def __init__(self, state: ShardState, info: ShardInfo) -> None:
        self.state = state
        self.info = info

    @property
    def applied_index(self) -> int:
        return self.state.applied_index

    def apply_entry(self, index: int, data: bytes) -> Any:
        return self.state.apply(index, decode_entry(data))

    def apply_noop(self, index: int) -> None:
        self.state.skip(index)

    def image(self) -> bytes:
        return self.state.image(self.info.start, self.info.end)

    def restore(self, index: int, data: bytes) -> None:
        self.state.restore(index, data, self.info.start, self.info.end)


class Shard:
    """A shard replica hosted by a node."""

    def __init__(
        self,
        keyspace: KeyspaceInfo,
        info: ShardInfo,
        state: ShardState,
        log: ShardLog,
        replica: Replica | None = None,
    ) -> None:
        self.keyspace = keyspace
        self.info = info
        self.state = state
        self.log = log
        self.replica = replica
        """The Raft replica of a replicated shard (None: a local log)."""

    @property
    def shard_id(self) -> int:
        return self.info.shard_id

    def propose(self, entry: Entry, finish: Finish = _pair) -> asyncio.Future[Any]:
        return self.log.propose(entry, finish)
