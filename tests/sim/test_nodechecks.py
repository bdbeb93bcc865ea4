"""The checks of the node simulator on small hand-written histories: the per-key model of
Spindle's data API and the promises of the weaker read levels."""

from __future__ import annotations

from typing import Any

from spindle.sim.kvmodel import SpindleKeyModel
from spindle.sim.linearizability import Verdict, check
from spindle.sim.nodehistory import ClientOp, KeyOp, Recorder, strong_events
from spindle.sim.promises import check_read_promises

MS = 1000


class _History:
    def __init__(self) -> None:
        self.recorder = Recorder()

    def op(
        self,
        f: str,
        key: bytes,
        start_ms: float,
        end_ms: float,
        *,
        input: Any = None,
        output: Any = None,
        level: str = "write",
        status: Any = "ok",
        **fields: Any,
    ) -> ClientOp:
        key_op = KeyOp(key, f, input, output)
        if status == "ok" and output is not None and f in ("put", "delete", "incr", "read"):
            key_op.version = output[0] if f in ("put", "delete") else output[1]
        op = self.recorder.invoke(0, f, level, 1, int(start_ms * MS), [key_op])
        for name, value in fields.items():
            setattr(op, name, value)
        self.recorder.complete(op, status, int(end_ms * MS))
        return op

    def linearizable(self) -> Verdict:
        return check(strong_events(self.recorder.ops), SpindleKeyModel()).verdict


def test_reads_must_see_the_version_of_the_write_they_see() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("read", b"k", 2, 3, output=(b"a", 5), level="strong")
    assert h.linearizable() is Verdict.LINEARIZABLE
    h.op("read", b"k", 4, 5, output=(b"a", 4), level="strong")
    assert h.linearizable() is Verdict.NOT_LINEARIZABLE


def test_a_stale_strong_read_is_not_linearizable() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("put", b"k", 2, 3, input=(b"b", None), output=(6, True))
    h.op("read", b"k", 4, 5, output=(b"a", 5), level="strong")
    assert h.linearizable() is Verdict.NOT_LINEARIZABLE


def test_versions_of_a_key_grow_in_linearization_order() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(7, False))
    h.op("put", b"k", 2, 3, input=(b"b", None), output=(6, True))
    assert h.linearizable() is Verdict.NOT_LINEARIZABLE


def test_an_unknown_outcome_write_may_or_may_not_have_happened() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("put", b"k", 2, 3, input=(b"b", None), status="info")
    h.op("read", b"k", 4, 5, output=(b"a", 5), level="strong")
    h.op("read", b"k", 6, 7, output=(b"b", 9), level="strong")
    assert h.linearizable() is Verdict.LINEARIZABLE
    h.op("read", b"k", 8, 9, output=(b"a", 5), level="strong")
    assert h.linearizable() is Verdict.NOT_LINEARIZABLE


def test_conditions_and_increments() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", "absent"), output=(3, False))
    h.op("put", b"k", 2, 3, input=(b"b", ("version", 3)), output=(4, True))
    h.op("delete", b"k", 4, 5, input=("version", 4), output=(5, True))
    h.op("incr", b"n", 0, 1, input=2, output=(2, 3))
    h.op("incr", b"n", 2, 3, input=5, output=(7, 4))
    assert h.linearizable() is Verdict.LINEARIZABLE
    h.op("put", b"k", 6, 7, input=(b"c", ("version", 4)), output=(6, False))
    assert h.linearizable() is Verdict.NOT_LINEARIZABLE


def test_bounded_read_older_than_its_bound_is_caught() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("put", b"k", 2, 3, input=(b"b", None), output=(6, True))
    h.op("read", b"k", 10, 11, output=(b"a", 5), level="bounded", max_staleness_ms=100)
    assert check_read_promises(h.recorder.ops, clock_drift_ratio=0.0).ok
    h.op("read", b"k", 500, 501, output=(b"a", 5), level="bounded", max_staleness_ms=100)
    report = check_read_promises(h.recorder.ops, clock_drift_ratio=0.0)
    assert len(report.violations) == 1 and "older than version 6" in report.violations[0]


def test_read_your_writes_and_absence() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("read", b"k", 2, 3, output=None, level="read_your_writes", min_version=4)
    assert check_read_promises(h.recorder.ops, clock_drift_ratio=0.0).ok
    h.op("read", b"k", 4, 5, output=None, level="read_your_writes", min_version=5)
    assert not check_read_promises(h.recorder.ops, clock_drift_ratio=0.0).ok
    h.op("delete", b"k", 3.5, 7, status="info")
    assert check_read_promises(h.recorder.ops, clock_drift_ratio=0.0).ok  # maybe deleted


def test_every_level_returns_only_values_that_were_written() -> None:
    h = _History()
    h.op("put", b"k", 0, 1, input=(b"a", None), output=(5, False))
    h.op("read", b"k", 2, 3, output=(b"zz", 5), level="eventual")
    report = check_read_promises(h.recorder.ops, clock_drift_ratio=0.0)
    assert report.reads_checked["eventual"] == 1
    assert "that version wrote b'a'" in report.violations[0]
