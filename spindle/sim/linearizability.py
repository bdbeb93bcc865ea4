"""Linearizability checking of Jepsen-style histories.

A history is a list of events ``(process, type, f, value, key, time)`` where ``type`` is
``invoke`` followed, on the same process, by one completion:

- ``ok``: the operation took effect and returned ``value`` (the value read, for reads);
- ``fail``: the operation certainly did not take effect; it is dropped before checking
  (this is Jepsen's convention, so a CAS whose comparison failed is recorded as ``fail``);
- ``info``: the outcome is unknown; the operation may or may not have taken effect, at any
  point after its invocation, so it stays open until the end of the history. An invocation
  with no completion at all is treated the same way.

The search is Wing & Gong's, with Lowe's memoisation as used by Porcupine: call and return
events sit in a doubly linked list ordered by time; the search repeatedly picks a pending
call that the model accepts, removes it from the list ("lifts" it) and restarts from the
head; reaching the return of an operation that has not been linearized means the current
prefix is a dead end, so it backtracks. A cache of ``(linearized-set bitset, model state)``
pairs prunes configurations already explored, because the remaining problem depends only on
those two. Operations with an unknown outcome have no return event: they never block, and
linearizing one "at the end" is the same as it never having happened, so the search succeeds
as soon as every ``ok`` operation is linearized.

Key/value histories are checked per key (linearizability is compositional, Herlihy & Wing),
which keeps each search small. Search effort is bounded by ``MAX_SEARCH_STEPS``; when the
bound is hit the verdict is ``UNKNOWN``, never a hang.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "MAX_SEARCH_STEPS",
    "CheckResult",
    "Event",
    "EventType",
    "History",
    "KVModel",
    "Model",
    "Operation",
    "RegisterModel",
    "Verdict",
    "check",
    "pair_operations",
]

#: Upper bound on search steps (model steps plus backtracks) for one ``check`` call, summed
#: over all partitions. A history of a few thousand operations with modest concurrency needs
#: far fewer; pathological concurrency (dozens of overlapping writes to one key) can need
#: exponentially many, and then the result is ``Verdict.UNKNOWN``.
MAX_SEARCH_STEPS = 2_000_000

EventType = Literal["invoke", "ok", "fail", "info"]
_EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a Jepsen history."""

    process: Hashable
    type: EventType
    f: str
    value: object = None
    key: Hashable = None
    #: Real time (any monotone unit). ``None`` means "use the event's index in the history".
    time: float | None = None

    @staticmethod
    def from_dict(raw: Mapping[str, object]) -> Event:
        """Build an event from a Jepsen-like dict (``process``, ``type``, ``f``, ``value``...)."""
        event_type = raw["type"]
        if event_type not in _EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        time = raw.get("time")
        return Event(
            process=raw["process"],
            type=event_type,  # type: ignore[arg-type]
            f=str(raw["f"]),
            value=raw.get("value"),
            key=raw.get("key"),
            time=None if time is None else float(time),  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion; the unit the search linearizes."""

    op_id: int
    process: Hashable
    f: str
    key: Hashable
    #: The invocation's value (what was written; ``(expected, new)`` for CAS).
    input: object
    #: The completion's value (what was read); ``None`` when the outcome is unknown.
    output: object
    status: Literal["ok", "info"]
    call_time: float
    #: ``None`` when the outcome is unknown (the operation is open until the end).
    return_time: float | None

    def describe(self) -> str:
        where = "" if self.key is None else f" key={self.key!r}"
        if self.f in ("read", "get"):
            what = f"{self.f}{where} -> {self.output!r}" if self.status == "ok" else self.f
        else:
            what = f"{self.f}{where} {self.input!r}"
        end = "open (info)" if self.return_time is None else f"{self.return_time:g}"
        return f"[op {self.op_id}] process {self.process!r}: {what} (t={self.call_time:g}..{end})"


class Model(Protocol):
    """A sequential specification: the checker asks whether a history matches some legal order.

    States must be hashable: the memo cache is keyed on them.
    """

    name: str

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        """Split operations into independent sub-histories (e.g. per key)."""
        ...

    def init_state(self) -> Hashable: ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Apply ``op`` to ``state``: (legal?, next state). ``op.output`` is None if unknown."""
        ...

    def is_read_only(self, op: Operation) -> bool:
        """Read-only ops with unknown outcome constrain nothing and are dropped."""
        ...


def _cas_args(op: Operation) -> tuple[object, object]:
    value = op.input
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"cas value must be (expected, new), got {value!r} in {op.describe()}")
    return value[0], value[1]


class RegisterModel:
    """A single read/write/compare-and-set register.

    ``read`` must return the current value; ``write v`` sets it; ``cas (old, new)`` sets it to
    ``new`` if it equals ``old`` (a CAS that found a different value is recorded as ``fail``).
    """

    name = "register"
    _READS = frozenset({"read", "get"})
    _WRITES = frozenset({"write", "put"})

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        return {None: list(ops)}

    def init_state(self) -> Hashable:
        return self.initial

    def is_read_only(self, op: Operation) -> bool:
        return op.f in self._READS

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        f = op.f
        if f in self._READS:
            return (op.status == "info" or op.output == state), state
        if f in self._WRITES:
            return True, op.input
        if f == "delete":
            return True, None
        if f == "cas":
            expected, new = _cas_args(op)
            if state == expected:
                return True, new
            return False, state
        raise ValueError(f"{self.name} model: unknown f {f!r} in {op.describe()}")


class KVModel(RegisterModel):
    """A key/value map: ``get``/``put``/``delete``/``cas`` on a key, ``None`` meaning absent.

    Keys are independent, so the history is partitioned per key and each key is a register
    whose initial value is ``None`` (``cas (None, v)`` means "create if absent").
    """

    name = "kv"

    def __init__(self) -> None:
        super().__init__(initial=None)

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        by_key: dict[Hashable, list[Operation]] = {}
        for op in ops:
            by_key.setdefault(op.key, []).append(op)
        return by_key


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    #: The search bound (``MAX_SEARCH_STEPS``) was exceeded before a verdict.
    UNKNOWN = "unknown (search bound exceeded)"


@dataclass(slots=True)
class CheckResult:
    verdict: Verdict
    #: Human-readable reason; empty when linearizable.
    explanation: str = ""
    #: Partition (key) that failed, for partitioned models.
    failing_key: Hashable = None
    #: The longest prefix of that partition that could be linearized, in linearization order.
    longest_prefix: list[Operation] = field(default_factory=list)
    #: The operation whose return was reached without being placeable after that prefix.
    unplaced: Operation | None = None
    steps: int = 0
    ops_checked: int = 0

    @property
    def ok(self) -> bool:
        """True only for a proven-linearizable history (``UNKNOWN`` is not ok)."""
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def unknown(self) -> bool:
        return self.verdict is Verdict.UNKNOWN


def pair_operations(events: Iterable[Event]) -> list[Operation]:
    """Pair each invocation with its completion; drop ``fail``ed ops; leave unknowns open.

    Raises ValueError on malformed histories (a completion without an invocation, a second
    invocation on a process with one still open, or times that go backwards).
    """
    ops: list[Operation] = []
    open_by_process: dict[Hashable, tuple[Event, float]] = {}
    last_time = float("-inf")
    for index, event in enumerate(events):
        time = float(index) if event.time is None else event.time
        if time < last_time:
            raise ValueError(f"event {index} goes back in time ({time} < {last_time}): {event}")
        last_time = time
        if event.type == "invoke":
            if event.process in open_by_process:
                raise ValueError(
                    f"event {index}: process {event.process!r} invokes while an operation is "
                    "still open (after an info, Jepsen uses a fresh process id)"
                )
            open_by_process[event.process] = (event, time)
            continue
        if event.process not in open_by_process:
            raise ValueError(f"event {index}: completion without invocation: {event}")
        invoke, call_time = open_by_process.pop(event.process)
        if event.f != invoke.f:
            raise ValueError(f"event {index}: completion f {event.f!r} != invoked {invoke.f!r}")
        if event.type == "fail":
            continue
        known = event.type == "ok"
        ops.append(
            Operation(
                op_id=len(ops),
                process=invoke.process,
                f=invoke.f,
                key=invoke.key,
                input=invoke.value,
                output=event.value if known else None,
                status="ok" if known else "info",
                call_time=call_time,
                return_time=time if known else None,
            )
        )
    for invoke, call_time in open_by_process.values():
        ops.append(
            Operation(
                op_id=len(ops),
                process=invoke.process,
                f=invoke.f,
                key=invoke.key,
                input=invoke.value,
                output=None,
                status="info",
                call_time=call_time,
                return_time=None,
            )
        )
    return ops


@dataclass(slots=True)
class _PartitionOutcome:
    verdict: Verdict
    steps: int
    prefix: list[Operation]
    unplaced: Operation | None
    state_at_failure: Hashable


def _check_partition(model: Model, ops: Sequence[Operation], max_steps: int) -> _PartitionOutcome:
    """Wing & Gong search with memoisation over one partition (see module docstring)."""
    ops = [op for op in ops if not (op.status == "info" and model.is_read_only(op))]
    n_ops = len(ops)
    required_total = sum(1 for op in ops if op.status == "ok")
    if required_total == 0:
        return _PartitionOutcome(Verdict.LINEARIZABLE, 0, [], None, None)

    # Nodes 1..k are events, 0 is the head sentinel, k+1 the tail sentinel. At equal times a
    # call sorts before a return, so touching intervals count as concurrent (the lenient,
    # sound reading of a clock with coarse resolution).
    raw: list[tuple[float, int, int]] = []  # (time, 0=call/1=return, local op index)
    for i, op in enumerate(ops):
        raw.append((op.call_time, 0, i))
        if op.return_time is not None:
            raw.append((op.return_time, 1, i))
    raw.sort()
    n_nodes = len(raw) + 2
    head, tail = 0, n_nodes - 1
    nxt = [*range(1, n_nodes), tail]
    prv = [0, *range(0, n_nodes - 1)]
    node_is_call = [False] * n_nodes
    node_op = [-1] * n_nodes
    call_node = [0] * n_ops
    return_node = [-1] * n_ops
    for position, (_, kind, i) in enumerate(raw, start=1):
        node_op[position] = i
        if kind == 0:
            node_is_call[position] = True
            call_node[i] = position
        else:
            return_node[i] = position
    required = [op.status == "ok" for op in ops]

    def unlink(node: int) -> None:
        nxt[prv[node]] = nxt[node]
        prv[nxt[node]] = prv[node]

    def relink(node: int) -> None:
        nxt[prv[node]] = node
        prv[nxt[node]] = node

    step = model.step
    state: Hashable = model.init_state()
    linearized = 0  # bitset over local op indexes
    done_required = 0
    stack: list[tuple[int, Hashable]] = []  # (op index, state before it)
    cache: set[tuple[int, Hashable]] = set()
    best_depth = -1
    best_prefix: list[int] = []
    best_unplaced = -1
    best_state: Hashable = None
    steps = 0
    entry = nxt[head]
    while done_required < required_total:
        steps += 1
        if steps > max_steps:
            return _PartitionOutcome(Verdict.UNKNOWN, steps, [], None, None)
        assert entry != tail, "search ran past the last return event"
        if node_is_call[entry]:
            i = node_op[entry]
            legal, new_state = step(state, ops[i])
            if legal:
                new_linearized = linearized | (1 << i)
                memo_key = (new_linearized, new_state)
                if memo_key not in cache:
                    cache.add(memo_key)
                    stack.append((i, state))
                    state, linearized = new_state, new_linearized
                    unlink(entry)
                    if return_node[i] >= 0:
                        unlink(return_node[i])
                    done_required += required[i]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # The return of an op not yet linearized: nothing in this prefix can place it.
        if len(stack) > best_depth:
            best_depth = len(stack)
            best_prefix = [i for i, _ in stack]
            best_unplaced = node_op[entry]
            best_state = state
        if not stack:
            break
        i, state = stack.pop()
        linearized &= ~(1 << i)
        done_required -= required[i]
        if return_node[i] >= 0:
            relink(return_node[i])
        relink(call_node[i])
        entry = nxt[call_node[i]]
    else:
        return _PartitionOutcome(Verdict.LINEARIZABLE, steps, [], None, None)
    return _PartitionOutcome(
        Verdict.NOT_LINEARIZABLE,
        steps,
        [ops[i] for i in best_prefix],
        ops[best_unplaced],
        best_state,
    )


def check(
    history: Iterable[Event] | Iterable[Mapping[str, object]],
    model: Model,
    max_steps: int = MAX_SEARCH_STEPS,
) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    Returns ``LINEARIZABLE``, ``NOT_LINEARIZABLE`` (with the longest linearizable prefix of the
    failing partition and the operation that could not be placed after it), or ``UNKNOWN``
    when ``max_steps`` is exhausted.
    """
    events = [e if isinstance(e, Event) else Event.from_dict(e) for e in history]
    ops = pair_operations(events)
    total_steps = 0
    unknown_keys: list[Hashable] = []
    partitions = model.partition(ops)
    for key in sorted(partitions, key=repr):
        part = partitions[key]
        outcome = _check_partition(model, part, max_steps - total_steps)
        total_steps += outcome.steps
        if outcome.verdict is Verdict.NOT_LINEARIZABLE:
            return CheckResult(
                verdict=Verdict.NOT_LINEARIZABLE,
                explanation=_explain(model, key, part, outcome),
                failing_key=key,
                longest_prefix=outcome.prefix,
                unplaced=outcome.unplaced,
                steps=total_steps,
                ops_checked=len(ops),
            )
        if outcome.verdict is Verdict.UNKNOWN:
            unknown_keys.append(key)
            if total_steps >= max_steps:
                break
    if unknown_keys:
        return CheckResult(
            verdict=Verdict.UNKNOWN,
            explanation=(
                f"search bound of {max_steps} steps exceeded "
                f"(partitions without a verdict: {unknown_keys!r})"
            ),
            failing_key=unknown_keys[0],
            steps=total_steps,
            ops_checked=len(ops),
        )
    return CheckResult(Verdict.LINEARIZABLE, steps=total_steps, ops_checked=len(ops))


def _explain(
    model: Model, key: Hashable, part: Sequence[Operation], outcome: _PartitionOutcome
) -> str:
    where = f"{model.name} model" + ("" if key is None else f", key {key!r}")
    lines = [f"not linearizable ({where}, {len(part)} operations)."]
    if outcome.prefix:
        lines.append(f"Longest linearizable prefix ({len(outcome.prefix)} ops, in order):")
        lines.extend(f"  {op.describe()}" for op in outcome.prefix)
    else:
        lines.append("No operation can be linearized first.")
    lines.append(f"Model state after that prefix: {outcome.state_at_failure!r}")
    if outcome.unplaced is not None:
        lines.append("Could not place (its response arrives before any legal order includes it):")
        lines.append(f"  {outcome.unplaced.describe()}")
    return "\n".join(lines)


class History:
    """Records a Jepsen history as a test or simulated client runs.

    Time is the supplied ``time`` (e.g. simulated milliseconds), else ``clock()``, else a
    logical counter; it must never go backwards. ``ok``/``fail``/``info`` copy ``f`` and
    ``key`` from the process's open invocation.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._events: list[Event] = []
        self._open: dict[Hashable, Event] = {}
        self._logical_time = 0

    def _now(self, time: float | None) -> float:
        if time is None:
            if self._clock is not None:
                time = self._clock()
            else:
                time = float(self._logical_time)
                self._logical_time += 1
        if self._events and self._events[-1].time is not None:
            assert time >= self._events[-1].time, "history time went backwards"
        return time

    def invoke(
        self,
        process: Hashable,
        f: str,
        value: object = None,
        *,
        key: Hashable = None,
        time: float | None = None,
    ) -> Event:
        if process in self._open:
            raise ValueError(f"process {process!r} already has an open operation")
        event = Event(process, "invoke", f, value, key, self._now(time))
        self._open[process] = event
        self._events.append(event)
        return event

    def _complete(
        self, process: Hashable, event_type: EventType, value: object, time: float | None
    ) -> Event:
        invoke = self._open.pop(process, None)
        if invoke is None:
            raise ValueError(f"process {process!r} has no open operation")
        event = Event(process, event_type, invoke.f, value, invoke.key, self._now(time))
        self._events.append(event)
        return event

    def ok(self, process: Hashable, value: object = None, *, time: float | None = None) -> Event:
        """The operation took effect; ``value`` is what it returned (the read value)."""
        return self._complete(process, "ok", value, time)

    def fail(self, process: Hashable, *, time: float | None = None) -> Event:
        """The operation certainly did not take effect."""
        return self._complete(process, "fail", None, time)

    def info(self, process: Hashable, *, time: float | None = None) -> Event:
        """The outcome is unknown (e.g. a timeout): the op stays open to the end of the history.

        Jepsen moves the client to a fresh process id after this; reusing the id is allowed
        here because pairing closes the invocation either way.
        """
        return self._complete(process, "info", None, time)

    def is_open(self, process: Hashable) -> bool:
        return process in self._open

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def format(self) -> str:
        """One line per event, for traces."""
        return "\n".join(
            f"{e.time:>10g} {e.process!s:>6} {e.type:<6} {e.f}"
            + ("" if e.key is None else f" {e.key!r}")
            + ("" if e.value is None else f" {e.value!r}")
            for e in self._events
        )
