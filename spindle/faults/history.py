"""A client history recorded from real processes, and its linearizability check.

Real clients share one asyncio loop, so recording is a plain append: each invocation and
completion is stamped with `time.monotonic()`, which never goes backwards within this
process. The history is the simulator's (spindle.sim.linearizability): `ok` (took effect,
with the value read), `fail` (certainly did not take effect: dropped before checking) and
`info` (outcome unknown: a write that timed out may take effect at any later time, so it
stays open to the end of the history). After an `info` the client continues under a fresh
process id, as in Jepsen.

Checking is per key (linearizability is compositional), each key with its own search
budget; a key whose search exceeds it is retried with a larger one and, if still
undecided, reported as unknown: an unknown is never a pass. The workload keeps the number
of operations on one key small (it retires keys) so that the search is decisive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spindle.sim.linearizability import (
    MAX_SEARCH_STEPS,
    Event,
    History,
    KVModel,
    Verdict,
    check,
)

Outcome = Literal["ok", "fail", "info"]

RETRY_STEPS_FACTOR = 10
"""An undecided key is checked again with this many times the budget."""
EXPLANATION_CHARS_MAX = 4000


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One client operation as the workload saw it (for statistics, not for checking)."""

    client: int
    node_id: int
    """The node the client is connected to (its seed; pinned clients send only there)."""
    f: str
    key: str
    start_s: float
    end_s: float
    outcome: Outcome
    error: str = ""

    @property
    def is_write(self) -> bool:
        return self.f != "get"


class Recorder:
    """The history of the checked keys plus a record of every operation, both stamped
    with one monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.history = History(clock=clock)
        self.records: list[OpRecord] = []

    def invoke(self, process: Hashable, f: str, key: str, value: object = None) -> float:
        """Record an invocation; returns its time."""
        return float(self.history.invoke(process, f, value, key=key).time or 0.0)

    def complete(
        self,
        process: Hashable,
        outcome: Outcome,
        value: object = None,
        *,
        client: int,
        node_id: int,
        f: str,
        key: str,
        start_s: float,
        error: str = "",
    ) -> None:
        if outcome == "ok":
            event = self.history.ok(process, value)
        elif outcome == "fail":
            event = self.history.fail(process)
        else:
            event = self.history.info(process)
        end_s = float(event.time or 0.0)
        self.records.append(OpRecord(client, node_id, f, key, start_s, end_s, outcome, error))

    def note(self, record: OpRecord) -> None:
        """An operation that is not part of the checked history (e.g. unique-key writes)."""
        self.records.append(record)

    def write_jsonl(self, path: Path) -> None:
        """The history, one event per line (for a failing run's post-mortem)."""
        with path.open("w") as file:
            for event in self.history:
                file.write(
                    json.dumps(
                        {
                            "process": str(event.process),
                            "type": event.type,
                            "f": event.f,
                            "key": event.key,
                            "value": event.value,
                            "time": event.time,
                        },
                        default=repr,
                    )
                    + "\n"
                )


@dataclass(slots=True)
class KeyVerdict:
    key: Hashable
    verdict: Verdict
    ops: int
    steps: int
    explanation: str = ""


@dataclass(slots=True)
class LinearizabilityReport:
    keys: int = 0
    ops: int = 0
    """Operations checked (ok and info; failed ones are dropped)."""
    steps: int = 0
    violations: list[KeyVerdict] = field(default_factory=list)
    unknown: list[KeyVerdict] = field(default_factory=list)
    retried: int = 0
    """Keys that needed the larger budget."""

    @property
    def ok(self) -> bool:
        """Every key proven linearizable (an undecided key is not ok)."""
        return not self.violations and not self.unknown

    def summary(self) -> str:
        verdict = (
            "linearizable"
            if self.ok
            else f"{len(self.violations)} keys NOT linearizable, {len(self.unknown)} undecided"
        )
        return (
            f"{verdict} ({self.keys} keys, {self.ops} ops, {self.steps} search steps, "
            f"{self.retried} keys retried with a larger budget)"
        )

    def details(self) -> str:
        parts = [self.summary()]
        for verdict in self.violations[:3]:
            parts.append(verdict.explanation[:EXPLANATION_CHARS_MAX])
        for verdict in self.unknown[:3]:
            parts.append(f"key {verdict.key!r}: {verdict.explanation}")
        return "\n".join(parts)


def check_history(
    events: Iterable[Event], max_steps_per_key: int = MAX_SEARCH_STEPS
) -> LinearizabilityReport:
    """Check a key/value history key by key, each key with its own budget."""
    by_key: dict[Hashable, list[Event]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    report = LinearizabilityReport(keys=len(by_key))
    model = KVModel()
    for key in sorted(by_key, key=repr):
        key_events = by_key[key]
        result = check(key_events, model, max_steps=max_steps_per_key)
        report.steps += result.steps
        if result.unknown:
            report.retried += 1
            result = check(key_events, model, max_steps=max_steps_per_key * RETRY_STEPS_FACTOR)
            report.steps += result.steps
        report.ops += result.ops_checked
        if result.verdict is Verdict.LINEARIZABLE:
            continue
        verdict = KeyVerdict(key, result.verdict, result.ops_checked, result.steps)
        verdict.explanation = result.explanation
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            report.violations.append(verdict)
        else:
            report.unknown.append(verdict)
    return report


__all__ = [
    "KeyVerdict",
    "LinearizabilityReport",
    "OpRecord",
    "Outcome",
    "Recorder",
    "check_history",
]
