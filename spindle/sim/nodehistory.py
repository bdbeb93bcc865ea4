"""What the simulated clients did and saw, and its projection onto keys.

A ``ClientOp`` is one request of the data API as a client issued it: which node it went
to, its consistency level, when it was invoked and answered (global simulated
microseconds), and how it ended: ``ok``, ``fail`` (it certainly had no effect: refused,
a condition did not hold) or ``info`` (outcome unknown: a timeout, a lost connection, an
``Unavailable``/``Timeout`` error after it was sent). Its ``KeyOp``s are its effects and
observations per key (spindle/sim/kvmodel.py names them), so a batch, a transaction or a
scan page becomes several per-key operations with the same interval.

``strong_events`` turns the strong reads and every write into a Jepsen history for the
linearizability checker; ``resolve_unapplied`` first marks ``fail`` the unknown-outcome
writes whose unique value no replica ever applied (they had no effect on anything, and
left open they would only slow the search).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from spindle.sim.linearizability import Event

__all__ = ["WRITE_LEVEL", "ClientOp", "KeyOp", "Recorder", "strong_events"]

WRITE_LEVEL = "write"
"""The ``level`` of a write (reads carry their consistency level)."""

Status = Literal["ok", "fail", "info"]


@dataclasses.dataclass(slots=True)
class KeyOp:
    key: bytes
    f: str
    input: Any = None
    output: Any = None
    #: Version this op wrote (writes, once acknowledged) or read (reads of a present key).
    version: int | None = None
    #: Internal key (hash prefix + key), to find the op's entry in the applied log.
    internal_key: bytes = b""


@dataclasses.dataclass(slots=True)
class ClientOp:
    op_id: int
    client: int
    name: str
    level: str
    node: int
    call_us: int
    keys: list[KeyOp]
    return_us: int | None = None
    status: Status | None = None
    error: str = ""
    max_staleness_ms: int = 0
    min_version: int = 0
    shard_id: int = 0

    @property
    def is_write(self) -> bool:
        return self.level == WRITE_LEVEL

    def describe(self) -> str:
        parts = []
        for k in self.keys:
            text = f"{k.f} {k.key.decode(errors='replace')}"
            if k.input is not None:
                text += f" {k.input!r}"
            if k.output is not None or self.status == "ok":
                text += f" -> {k.output!r}"
            parts.append(text)
        level = "" if self.is_write else f" [{self.level}"
        if self.level == "bounded":
            level += f" {self.max_staleness_ms}ms"
        if self.level == "read_your_writes":
            level += f" v>={self.min_version}"
        level += "" if self.is_write else "]"
        end = "open" if self.return_us is None else f"{self.return_us / 1000:.3f}ms"
        status = self.status or "open"
        error = f" ({self.error})" if self.error else ""
        return (
            f"#{self.op_id} c{self.client}->n{self.node} {self.name}{level}: "
            + "; ".join(parts)
            + f" = {status}{error} [{self.call_us / 1000:.3f}ms..{end}]"
        )


class Recorder:
    """The history of one run, in invocation order."""

    def __init__(self, on_complete: Callable[[ClientOp], None] = lambda op: None) -> None:
        self.ops: list[ClientOp] = []
        self.on_complete = on_complete
        """Told of every completed op (the simulator traces it)."""

    def invoke(
        self, client: int, name: str, level: str, node: int, now_us: int, keys: list[KeyOp]
    ) -> ClientOp:
        op = ClientOp(len(self.ops), client, name, level, node, now_us, keys)
        self.ops.append(op)
        return op

    def complete(self, op: ClientOp, status: Status, now_us: int, error: str = "") -> None:
        assert op.status is None, f"op {op.op_id} completed twice"
        op.status, op.return_us, op.error = status, now_us, error
        self.on_complete(op)

    def resolve_unapplied(self, applied_puts: set[tuple[bytes, bytes]]) -> int:
        """Unknown-outcome writes carrying a put no replica applied -> ``fail``."""
        resolved = 0
        for op in self.ops:
            if not op.is_write or op.status not in ("info", None):
                continue
            puts = [k for k in op.keys if k.f == "put"]
            if puts and any((k.internal_key, k.input[0]) not in applied_puts for k in puts):
                op.status = "fail"
                op.error += " (never applied)"
                resolved += 1
        return resolved

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for op in self.ops:
            name = f"{op.name}:{op.level}:{op.status}"
            found[name] = found.get(name, 0) + 1
        return found


def strong_events(ops: list[ClientOp]) -> list[Event]:
    """The Jepsen history of strong reads and all writes, one process per per-key op."""
    timed: list[tuple[int, int, int, Event]] = []
    for op in ops:
        if not (op.is_write or op.level == "strong") or op.status == "fail":
            continue
        if op.status is None and not op.is_write:
            continue  # a read still open when the run ended says nothing
        for index, key_op in enumerate(op.keys):
            process = (op.op_id, index)
            invoke = Event(process, "invoke", key_op.f, key_op.input, key_op.key, op.call_us)
            timed.append((op.call_us, 0, len(timed), invoke))
            if op.status is None or op.return_us is None:
                continue  # a write still open at the end: it may take effect any time
            if op.status == "ok":
                done = Event(process, "ok", key_op.f, key_op.output, key_op.key, op.return_us)
            else:
                done = Event(process, "info", key_op.f, None, key_op.key, op.return_us)
            timed.append((op.return_us, 1, len(timed), done))
    timed.sort(key=lambda item: item[:3])
    return [event for _, _, _, event in timed]
