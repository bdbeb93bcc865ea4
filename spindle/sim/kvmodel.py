"""The sequential specification of one Spindle key, for the linearizability checker.

Client operations are projected onto keys (spindle/sim/nodehistory.py); each key is a
register holding ``(value, version)``: the stored bytes (None: absent) and the version of
the last write to it, which is the log index of the entry that wrote it. A version the
history does not tell (a write whose answer was lost, an ``expire``, which answers only
"existed") is None until a read reveals it: the model binds it then, which is sound because
the version of a write is one fixed, unknown number.

Besides values, the model checks what versions promise: a key's writes get increasing
versions in linearization order (they are log indexes of one shard), a read returns the
version of the write it sees, and conditional operations (``if_version``, ``if_absent``,
transaction reads) succeed exactly when the version they name is current (0 = absent).

Per-key operations (``Operation.f``, ``input``, ``output`` when the outcome is known):

- ``read``: output None (absent) or (value, version);
- ``check`` (a transaction's read set entry): input the version read;
- ``put``: input (value, condition), output (version, existed);
- ``delete``: input condition, output (version, deleted);
- ``incr``: input delta, output (new value, version);
- ``expire``: output existed.

A condition is None, ``"absent"`` or ``("version", v)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from spindle.sim.linearizability import Operation

__all__ = ["READ_ONLY", "SpindleKeyModel", "State"]

State = tuple[bytes | None, int | None]
"""(value or None if absent, version of the last write or None if not known yet)."""

READ_ONLY = frozenset({"read", "check"})
_ILLEGAL: tuple[bool, State] = (False, (None, None))


def _parse_int(value: bytes | None) -> int | None:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        return None


def _condition_holds(state: State, condition: Any) -> tuple[bool, State]:
    """Whether a condition holds in ``state``; binds an unknown version it reveals."""
    value, version = state
    if condition is None:
        return True, state
    if condition == "absent":
        return value is None, state
    expected = condition[1]
    if value is None:
        return expected == 0, state
    if version is None:
        return expected != 0, (value, expected)
    return version == expected, state


def _newer(state: State, version: int) -> bool:
    """A write's version must exceed the version of every earlier write to the key."""
    return state[1] is None or version > state[1]


class SpindleKeyModel:
    """``Model`` (spindle/sim/linearizability.py) of a Spindle key space, checked per key."""

    name = "spindle-kv"

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        by_key: dict[Hashable, list[Operation]] = {}
        for op in ops:
            by_key.setdefault(op.key, []).append(op)
        return by_key

    def init_state(self) -> Hashable:
        return (None, 0)

    def is_read_only(self, op: Operation) -> bool:
        return op.f in READ_ONLY

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        assert isinstance(state, tuple)
        current: State = state
        known = op.status == "ok"
        f = op.f
        given: Any = op.input
        answer: Any = op.output
        if f == "read":
            return self._read(current, answer if known else None, known)
        if f == "check":
            return _condition_holds(current, ("version", given))
        if f == "put":
            new_value, condition = given
            holds, current = _condition_holds(current, condition)
            if not holds:
                return _ILLEGAL
            if not known:
                return True, (new_value, None)
            version, existed = answer
            if existed != (current[0] is not None) or not _newer(current, version):
                return _ILLEGAL
            return True, (new_value, version)
        if f == "delete":
            holds, current = _condition_holds(current, given)
            if not holds:
                return _ILLEGAL
            if not known:
                return True, (None, None)
            version, deleted = answer
            if deleted != (current[0] is not None) or not _newer(current, version):
                return _ILLEGAL
            return True, (None, version)
        if f == "incr":
            base = _parse_int(current[0])
            if base is None:  # not an integer: the increment fails and changes nothing
                return (not known), current
            total = base + int(given)
            if not known:
                return True, (str(total).encode(), None)
            new_total, version = answer
            if new_total != total or not _newer(current, version):
                return _ILLEGAL
            return True, (str(total).encode(), version)
        if f == "expire":
            if not known:
                return True, current if current[0] is None else (current[0], None)
            if answer != (current[0] is not None):
                return _ILLEGAL
            return True, current if current[0] is None else (current[0], None)
        raise ValueError(f"{self.name} model: unknown f {f!r} in {op.describe()}")

    @staticmethod
    def _read(state: State, output: Any, known: bool) -> tuple[bool, State]:
        if not known:
            return True, state
        value, version = state
        if output is None:
            return value is None, state
        read_value, read_version = output
        if read_value != value:
            return _ILLEGAL
        if version is None:
            return True, (value, read_version)
        return version == read_version, state
