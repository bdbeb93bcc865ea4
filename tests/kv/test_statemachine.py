"""The state machine's single-put path gives exactly what the general batch path gives."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spindle.kv.commands import Batch, Entry, PutOp
from spindle.kv.errors import SpindleError
from spindle.kv.statemachine import OpResult, ShardState
from spindle.kv.storage import ALL_CFS, CF, WriteBatch
from spindle.kv.storage.memory import MemoryEngine

KEY_OFFSET = 4


class GeneralOnly(ShardState):
    """A state machine that sends a single put through the general batch path."""

    def _apply_put(
        self, batch: WriteBatch, index: int, now_ms: int, op: PutOp, return_previous: bool
    ) -> list[OpResult]:
        return self._apply_batch(batch, index, now_ms, Batch([op], return_previous=return_previous))


def make(cls: type[ShardState]) -> tuple[MemoryEngine, ShardState]:
    engine = MemoryEngine()

    def write(batch: WriteBatch) -> int:
        engine.write(batch)
        return 0

    return engine, cls(engine, keyspace_id=7, shard_id=3, write=write, key_offset=KEY_OFFSET)


def contents(engine: MemoryEngine) -> dict[CF, list[tuple[bytes, bytes]]]:
    return {cf: list(engine.scan(cf, b"", None)) for cf in ALL_CFS}


def outcome(result: Any) -> Any:
    if isinstance(result, SpindleError):
        return (type(result).__name__, result.message, result.detail)
    return result


puts = st.builds(
    PutOp,
    key=st.sampled_from([b"\x00\x00\x00\x01a", b"\x00\x00\x00\x02b", b"\x00\x00\x00\x03c"]),
    value=st.binary(max_size=8),
    expire_at_ms=st.sampled_from([0, 0, 1_005, 1_020, 5_000]),
    keep_ttl=st.booleans(),
    if_absent=st.sampled_from([False, False, False, True]),
    if_version=st.sampled_from([None, None, None, None, 0, 1, 2, 3, 4]),
    if_present=st.sampled_from([False, False, False, True]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(puts, st.booleans(), st.integers(0, 30)), max_size=12))
def test_single_put_path_matches_the_general_path(
    steps: list[tuple[PutOp, bool, int]],
) -> None:
    fast_engine, fast = make(ShardState)
    general_engine, general = make(GeneralOnly)
    now_ms = 1_000
    for index, (op, return_previous, advance_ms) in enumerate(steps, start=1):
        now_ms += advance_ms
        entry = Entry(now_ms, Batch([op], return_previous=return_previous))
        assert outcome(fast.apply(index, entry)) == outcome(general.apply(index, entry))
        assert fast.stored_bytes == general.stored_bytes
    assert contents(fast_engine) == contents(general_engine)
