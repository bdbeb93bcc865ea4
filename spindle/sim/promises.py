"""The promises of the weaker read levels, checked against a run's history.

Strong reads are checked for linearizability; the other levels promise less, and each
promise is a bound on how old the state a read returns may be (versions are log indexes of
the key's shard, so "as new as write W" means "version >= W's version"):

- ``bounded`` (max_staleness_ms S): every write acknowledged more than S before the read
  started is visible. A replica measures S on its own clock, which may run up to
  ``clock_drift_ratio`` slow, so the check allows S / (1 - ratio) plus a millisecond.
- ``read_your_writes`` (min_version M, the version of the client's last acknowledged write
  to the shard): the replica has applied M, so every acknowledged write to the key with a
  version <= M is visible; the client's own last write is one of them.
- ``eventual``: the value returned was written by some write (or the key is absent).

"Visible" for a read that returns a value means its version is at least the required one;
for a read that finds the key absent it means the newest required write was a delete, or
some delete could have come after it (acknowledged with a higher version, or with an
unknown outcome). Every read, at any level, must also return a value some write wrote,
with the version that write got.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from spindle.sim.nodehistory import ClientOp, KeyOp

__all__ = ["PromiseReport", "check_read_promises"]

WEAK_LEVELS = ("bounded", "read_your_writes", "eventual")


@dataclasses.dataclass(slots=True)
class _Write:
    op: ClientOp
    key_op: KeyOp
    #: Value written (None: a delete), or ``...`` when unknown (an incr not acknowledged).
    value: object


@dataclasses.dataclass
class PromiseReport:
    reads_checked: Counter[str] = dataclasses.field(default_factory=Counter)
    violations: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _writes_by_key(ops: list[ClientOp]) -> dict[bytes, list[_Write]]:
    found: dict[bytes, list[_Write]] = {}
    for op in ops:
        if not op.is_write or op.status == "fail":
            continue
        for key_op in op.keys:
            if key_op.f == "put":
                value: object = key_op.input[0]
            elif key_op.f == "delete":
                value = None
            elif key_op.f == "incr":
                value = str(key_op.output[0]).encode() if op.status == "ok" else ...
            else:
                continue  # expire keeps the value; check writes nothing
            found.setdefault(key_op.key, []).append(_Write(op, key_op, value))
    return found


def check_read_promises(ops: list[ClientOp], *, clock_drift_ratio: float) -> PromiseReport:
    report = PromiseReport()
    writes = _writes_by_key(ops)
    slack = 1.0 / (1.0 - clock_drift_ratio)
    for op in ops:
        if op.is_write or op.status != "ok":
            continue
        assert op.return_us is not None
        for key_op in op.keys:
            if key_op.f != "read":
                continue
            report.reads_checked[op.level] += 1
            key_writes = writes.get(key_op.key, [])
            problem = _check_written(key_op, key_writes, op.return_us)
            if problem is None and op.level in WEAK_LEVELS:
                required = _required(op, key_writes, slack)
                if required is not None:
                    problem = _check_fresh(key_op, required, key_writes, op.return_us)
            if problem is not None:
                report.violations.append(
                    f"{op.level} read of {key_op.key!r}: {problem}\n  read: {op.describe()}"
                )
    return report


def _acked(write: _Write) -> bool:
    return write.op.status == "ok" and write.key_op.version is not None


def _required(op: ClientOp, key_writes: list[_Write], slack: float) -> _Write | None:
    """The newest acknowledged write the read must reflect, if any."""
    if op.level == "bounded":
        cutoff_us = op.call_us - op.max_staleness_ms * 1000 * slack - 1000
        eligible = [
            w
            for w in key_writes
            if _acked(w) and w.op.return_us is not None and w.op.return_us < cutoff_us
        ]
    elif op.level == "read_your_writes":
        eligible = [
            w for w in key_writes if _acked(w) and (w.key_op.version or 0) <= op.min_version
        ]
    else:
        return None
    return max(eligible, key=lambda w: w.key_op.version or 0, default=None)


def _check_fresh(
    read: KeyOp, required: _Write, key_writes: list[_Write], read_return_us: int
) -> str | None:
    required_version = required.key_op.version
    assert required_version is not None
    if read.output is not None:
        version = read.output[1]
        if version >= required_version:
            return None
        return (
            f"returned version {version}, older than version {required_version} it must "
            f"reflect ({required.op.describe()})"
        )
    if required.value is None:
        return None
    for write in key_writes:
        if write.value is not None or write.op.call_us > read_return_us:
            continue
        if write.op.status != "ok" or (write.key_op.version or 0) > required_version:
            return None  # a later (or possibly later) delete explains the absence
    return (
        f"found the key absent, but version {required_version} wrote it and no later delete "
        f"exists ({required.op.describe()})"
    )


def _check_written(read: KeyOp, key_writes: list[_Write], read_return_us: int) -> str | None:
    """The value read was written by some write invoked before the read returned, and a
    write whose version is known gave it that value."""
    if read.output is None:
        return None
    value, version = read.output
    for write in key_writes:
        if write.key_op.version == version and write.op.status == "ok":
            if write.value is not value and write.value != value:
                return (
                    f"returned {value!r} at version {version}, but that version wrote "
                    f"{write.value!r} ({write.op.describe()})"
                )
            return None
    for write in key_writes:
        if write.op.call_us > read_return_us:
            continue
        if write.value == value:
            return None
        if write.value is ... and value.lstrip(b"-").isdigit():
            return None
    return f"returned {value!r} (version {version}), which no write wrote"
