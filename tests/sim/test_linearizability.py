"""Tests for the linearizability checker: hand-written histories, a brute-force oracle, and
property tests over histories produced by a real sequential register."""

from __future__ import annotations

import ast
import random
from collections.abc import Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spindle.sim.linearizability import (
    CheckResult,
    Event,
    History,
    KVModel,
    Model,
    Operation,
    RegisterModel,
    Verdict,
    check,
    pair_operations,
)


def parse(text: str, *, kv: bool = False) -> list[Event]:
    """One event per line: ``process type f [key] [value]``; the value is a Python literal.

    Events are timed by line number, so the order of lines is the real-time order.
    """
    events: list[Event] = []
    for line in text.strip().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split(maxsplit=4 if kv else 3)
        process, event_type, f = int(tokens[0]), tokens[1], tokens[2]
        key: Hashable = None
        rest = tokens[3:]
        if kv:
            key, rest = rest[0], rest[1:]
        value = ast.literal_eval(rest[0]) if rest else None
        events.append(Event.from_dict(dict(process=process, type=event_type, f=f, value=value,
                                           key=key)))  # fmt: skip
    return events


def reg(text: str) -> CheckResult:
    return check(parse(text), RegisterModel())


def kv(text: str) -> CheckResult:
    return check(parse(text, kv=True), KVModel())


# --------------------------------------------------------------------------------------------
# Register histories that must be accepted.

ACCEPTED_REGISTER = {
    "empty": "",
    "read initial": """
        1 invoke read
        1 ok read None
    """,
    "sequential write then read": """
        1 invoke write 1
        1 ok write 1
        2 invoke read
        2 ok read 1
    """,
    "read concurrent with write sees old": """
        1 invoke write 1
        2 invoke read
        2 ok read None
        1 ok write 1
    """,
    "read concurrent with write sees new": """
        1 invoke write 1
        2 invoke read
        2 ok read 1
        1 ok write 1
    """,
    "concurrent writes, both orders observed by later reads": """
        1 invoke write 1
        2 invoke write 2
        1 ok write 1
        2 ok write 2
        3 invoke read
        3 ok read 1
    """,
    "concurrent writes, other order": """
        1 invoke write 1
        2 invoke write 2
        1 ok write 1
        2 ok write 2
        3 invoke read
        3 ok read 2
    """,
    "two reads concurrent with a write flip once": """
        1 invoke write 1
        2 invoke read
        2 ok read None
        3 invoke read
        3 ok read 1
        1 ok write 1
    """,
    "cas succeeds after write": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (1, 2)
        2 ok cas (1, 2)
        3 invoke read
        3 ok read 2
    """,
    "failed cas does not take effect": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (5, 2)
        2 fail cas (5, 2)
        3 invoke read
        3 ok read 1
    """,
    "failed write does not take effect": """
        1 invoke write 1
        1 ok write 1
        2 invoke write 2
        2 fail write 2
        3 invoke read
        3 ok read 1
    """,
    "info write that happened": """
        1 invoke write 1
        1 ok write 1
        2 invoke write 2
        2 info write 2
        3 invoke read
        3 ok read 2
    """,
    "info write that did not happen": """
        1 invoke write 1
        1 ok write 1
        2 invoke write 2
        2 info write 2
        3 invoke read
        3 ok read 1
    """,
    "info write happens late, after later reads": """
        2 invoke write 2
        2 info write 2
        3 invoke read
        3 ok read None
        4 invoke read
        4 ok read 2
    """,
    "invocation never completed is open": """
        2 invoke write 7
        3 invoke read
        3 ok read 7
    """,
    "info cas that happened": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (1, 3)
        2 info cas (1, 3)
        3 invoke read
        3 ok read 3
    """,
    "info cas whose compare cannot match is simply skipped": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (9, 3)
        2 info cas (9, 3)
        3 invoke read
        3 ok read 1
    """,
    "info read constrains nothing": """
        1 invoke write 1
        1 ok write 1
        2 invoke read
        2 info read
        3 invoke read
        3 ok read 1
    """,
    "chain of cas with concurrency": """
        1 invoke cas (None, 1)
        2 invoke cas (1, 2)
        1 ok cas (None, 1)
        2 ok cas (1, 2)
        3 invoke read
        3 ok read 2
    """,
    "write overlapping several sequential reads": """
        1 invoke write 1
        2 invoke read
        2 ok read None
        2 invoke read
        2 ok read None
        2 invoke read
        2 ok read 1
        1 ok write 1
        2 invoke read
        2 ok read 1
    """,
    "process reused after info": """
        1 invoke write 1
        1 info write 1
        1 invoke read
        1 ok read 1
    """,
}

# Register histories that must be rejected.
REJECTED_REGISTER = {
    "read of a value never written": """
        1 invoke read
        1 ok read 3
    """,
    "stale read after completed write": """
        1 invoke write 1
        1 ok write 1
        2 invoke read
        2 ok read None
    """,
    "stale read after two completed writes": """
        1 invoke write 1
        1 ok write 1
        1 invoke write 2
        1 ok write 2
        2 invoke read
        2 ok read 1
    """,
    "lost write: later reads see the older value": """
        1 invoke write 1
        1 ok write 1
        2 invoke write 2
        2 ok write 2
        3 invoke read
        3 ok read 2
        3 invoke read
        3 ok read 1
    """,
    "reads flip back (new then old) during one write": """
        1 invoke write 1
        2 invoke read
        2 ok read 1
        3 invoke read
        3 ok read None
        1 ok write 1
    """,
    "failed write observed": """
        1 invoke write 2
        1 fail write 2
        3 invoke read
        3 ok read 2
    """,
    "failed cas observed": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (1, 2)
        2 fail cas (1, 2)
        3 invoke read
        3 ok read 2
    """,
    "cas succeeds with wrong expected value": """
        1 invoke write 1
        1 ok write 1
        2 invoke cas (0, 2)
        2 ok cas (0, 2)
    """,
    "two cas from same value both succeed": """
        1 invoke write 0
        1 ok write 0
        2 invoke cas (0, 1)
        3 invoke cas (0, 2)
        2 ok cas (0, 1)
        3 ok cas (0, 2)
    """,
    "cas success not visible to later read": """
        1 invoke write 0
        1 ok write 0
        2 invoke cas (0, 1)
        2 ok cas (0, 1)
        3 invoke read
        3 ok read 0
    """,
    "info write seen, then unseen": """
        1 invoke write 1
        1 ok write 1
        2 invoke write 2
        2 info write 2
        3 invoke read
        3 ok read 2
        3 invoke read
        3 ok read 1
    """,
    "concurrent writes seen in both orders by sequential reads": """
        1 invoke write 1
        2 invoke write 2
        1 ok write 1
        2 ok write 2
        3 invoke read
        3 ok read 1
        3 invoke read
        3 ok read 2
        3 invoke read
        3 ok read 1
    """,
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_REGISTER))
def test_register_accepts(name: str) -> None:
    result = reg(ACCEPTED_REGISTER[name])
    assert result.ok, result.explanation


@pytest.mark.parametrize("name", sorted(REJECTED_REGISTER))
def test_register_rejects(name: str) -> None:
    result = reg(REJECTED_REGISTER[name])
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.explanation
    assert result.unplaced is not None


# --------------------------------------------------------------------------------------------
# Key/value histories.

ACCEPTED_KV = {
    "independent keys": """
        1 invoke put x 1
        2 invoke put y 2
        1 ok put x 1
        2 ok put y 2
        3 invoke get x
        3 ok get x 1
        3 invoke get y
        3 ok get y 2
    """,
    "absent key reads None": """
        1 invoke get x
        1 ok get x None
    """,
    "delete then get": """
        1 invoke put x 1
        1 ok put x 1
        1 invoke delete x
        1 ok delete x
        2 invoke get x
        2 ok get x None
    """,
    "cas create if absent": """
        1 invoke cas x (None, 1)
        1 ok cas x (None, 1)
        2 invoke get x
        2 ok get x 1
    """,
    "write to one key does not affect another": """
        1 invoke put x 1
        1 ok put x 1
        2 invoke get y
        2 ok get y None
    """,
}

REJECTED_KV = {
    "stale get": """
        1 invoke put x 1
        1 ok put x 1
        2 invoke get x
        2 ok get x None
    """,
    "value leaks across keys": """
        1 invoke put x 1
        1 ok put x 1
        2 invoke get y
        2 ok get y 1
    """,
    "deleted key still visible": """
        1 invoke put x 1
        1 ok put x 1
        1 invoke delete x
        1 ok delete x
        2 invoke get x
        2 ok get x 1
    """,
    "cas create when present": """
        1 invoke put x 1
        1 ok put x 1
        2 invoke cas x (None, 2)
        2 ok cas x (None, 2)
    """,
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_KV))
def test_kv_accepts(name: str) -> None:
    result = kv(ACCEPTED_KV[name])
    assert result.ok, result.explanation


@pytest.mark.parametrize("name", sorted(REJECTED_KV))
def test_kv_rejects(name: str) -> None:
    result = kv(REJECTED_KV[name])
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.failing_key in ("x", "y")


def test_explanation_names_prefix_and_unplaced_op() -> None:
    result = reg(REJECTED_REGISTER["lost write: later reads see the older value"])
    assert not result.ok
    assert [op.f for op in result.longest_prefix] == ["write", "write", "read"]
    assert result.unplaced is not None
    assert result.unplaced.f == "read" and result.unplaced.output == 1
    assert "Longest linearizable prefix (3 ops" in result.explanation
    assert "read -> 1" in result.explanation


def test_search_bound_gives_unknown_not_hang() -> None:
    # Many concurrent writes and then an impossible read: exponential without the bound.
    history = History()
    for p in range(18):
        history.invoke(p, "write", p)
    for p in range(18):
        history.ok(p)
    history.invoke(99, "read")
    history.ok(99, -1)
    result = check(history, RegisterModel(), max_steps=5_000)
    assert result.verdict is Verdict.UNKNOWN
    assert result.unknown and not result.ok
    assert "bound" in result.explanation


def test_malformed_histories_raise() -> None:
    with pytest.raises(ValueError, match="without invocation"):
        pair_operations([Event(1, "ok", "read", 1)])
    with pytest.raises(ValueError, match="still open"):
        pair_operations([Event(1, "invoke", "read"), Event(1, "invoke", "read")])
    with pytest.raises(ValueError, match="back in time"):
        pair_operations([Event(1, "invoke", "read", time=5), Event(1, "ok", "read", time=4)])
    with pytest.raises(ValueError, match="unknown event type"):
        Event.from_dict({"process": 1, "type": "done", "f": "read"})


def test_history_recorder() -> None:
    now = [0.0]
    history = History(clock=lambda: now[0])
    history.invoke("a", "put", 1, key="k")
    now[0] = 3.0
    history.invoke("b", "get", key="k")
    now[0] = 5.0
    history.ok("b", 1)
    history.info("a")
    assert [e.type for e in history] == ["invoke", "invoke", "ok", "info"]
    assert history.events[2].key == "k" and history.events[2].f == "get"
    assert history.events[2].time == 5.0
    assert not history.is_open("a")
    with pytest.raises(ValueError):
        history.ok("a")
    assert check(history, KVModel()).ok
    assert "get 'k' 1" in history.format()


def test_ties_count_as_concurrent() -> None:
    events = [
        Event(1, "invoke", "write", 1, time=0),
        Event(1, "ok", "write", 1, time=5),
        Event(2, "invoke", "read", time=5),
        Event(2, "ok", "read", None, time=6),
    ]
    assert check(events, RegisterModel()).ok
    late = [*events[:2], Event(2, "invoke", "read", time=5.5), Event(2, "ok", "read", time=6)]
    assert not check(late, RegisterModel()).ok


# --------------------------------------------------------------------------------------------
# Brute-force oracle and property tests.


def _precedes(a: Operation, b: Operation) -> bool:
    return a.return_time is not None and a.return_time < b.call_time


def brute_force_linearizable(ops: Sequence[Operation], model: Model) -> bool:
    """Exhaustive search without memoisation or linked lists: an independent reference.

    Places, one at a time, any remaining op that no remaining ``ok`` op strictly precedes in
    real time; an ``info`` op may also never be placed. Succeeds when every ``ok`` op is placed.
    """
    for part in model.partition(ops).values():

        def search(state: Hashable, remaining: frozenset[int], part: list[Operation]) -> bool:
            if all(part[i].status == "info" for i in remaining):
                return True
            for i in remaining:
                op = part[i]
                blocked = any(_precedes(part[j], op) for j in remaining if j != i)
                if blocked:
                    continue
                legal, new_state = model.step(state, op)
                if legal and search(new_state, remaining - {i}, part):
                    return True
            return False

        if not search(model.init_state(), frozenset(range(len(part))), part):
            return False
    return True


@st.composite
def register_runs(draw: st.DrawFn, max_ops: int = 14) -> list[Event]:
    """A history from a real sequential register with random concurrency windows.

    Each op gets a linearization point at 10*i, an invocation up to ``window`` before it and a
    response up to ``window`` after it; ops are assigned to processes so no process overlaps
    itself. Some effective writes are reported as ``info``; some ghost writes that never took
    effect are reported as ``fail`` or ``info``; CAS whose compare fails are ``fail``.
    """
    n_ops = draw(st.integers(1, max_ops))
    window = draw(st.integers(0, 40))
    rng = random.Random(draw(st.integers(0, 2**32)))
    state: int | None = None
    timed: list[tuple[int, int, str, str, object, object]] = []  # call, ret, kind, f, in, out
    for i in range(n_ops):
        point = 10 * i
        call, ret = point - rng.randint(0, window), point + rng.randint(0, window)
        f = rng.choice(["read", "read", "write", "cas"])
        if f == "read":
            timed.append((call, ret, "ok", f, None, state))
        elif f == "write":
            value = rng.randint(0, 3)
            state = value
            timed.append((call, ret, rng.choice(["ok", "ok", "ok", "info"]), f, value, value))
        else:
            expected, new = rng.choice([state, rng.randint(0, 3)]), rng.randint(0, 3)
            if expected == state:
                state = new
                timed.append(
                    (call, ret, rng.choice(["ok", "ok", "info"]), f, (expected, new), None)
                )
            else:
                timed.append((call, ret, "fail", f, (expected, new), None))
        if rng.random() < 0.15:  # a ghost op that never took effect
            timed.append((call, ret, rng.choice(["fail", "info"]), "write", 100 + i, None))
    events: list[tuple[int, int, Event]] = []
    process_free_at: list[int] = []
    for call, ret, kind, f, value_in, value_out in timed:
        process = next((p for p, free in enumerate(process_free_at) if free < call), None)
        if process is None:
            process = len(process_free_at)
            process_free_at.append(0)
        process_free_at[process] = ret
        events.append((call, 0, Event(process, "invoke", f, value_in, time=call)))
        done_value = value_out if kind == "ok" else None
        events.append((ret, 1, Event(process, kind, f, done_value, time=ret)))  # type: ignore[arg-type]
    events.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in events]


@settings(max_examples=300, deadline=None)
@given(register_runs())
def test_histories_of_a_real_register_are_accepted(events: list[Event]) -> None:
    result = check(events, RegisterModel())
    assert result.ok, result.explanation


@settings(max_examples=300, deadline=None)
@given(register_runs(), st.data())
def test_read_of_a_value_never_written_is_always_rejected(
    events: list[Event], data: st.DataObject
) -> None:
    reads = [i for i, e in enumerate(events) if e.type == "ok" and e.f == "read"]
    if not reads:
        return
    target = data.draw(st.sampled_from(reads))
    corrupted = list(events)
    corrupted[target] = Event(events[target].process, "ok", "read", 999, time=events[target].time)
    assert check(corrupted, RegisterModel()).verdict is Verdict.NOT_LINEARIZABLE


@settings(max_examples=300, deadline=None)
@given(register_runs(max_ops=7), st.data())
def test_corrupted_read_verdict_matches_brute_force(
    events: list[Event], data: st.DataObject
) -> None:
    """Changing a read to another written value is rejected exactly when no order explains it.

    (So "mostly rejected" is made precise: it is rejected iff the exhaustive oracle rejects.)
    """
    reads = [i for i, e in enumerate(events) if e.type == "ok" and e.f == "read"]
    if not reads:
        return
    target = data.draw(st.sampled_from(reads))
    value = data.draw(st.sampled_from([None, 0, 1, 2, 3]))
    corrupted = list(events)
    corrupted[target] = Event(events[target].process, "ok", "read", value, time=events[target].time)
    expected = brute_force_linearizable(pair_operations(corrupted), RegisterModel())
    assert check(corrupted, RegisterModel()).ok == expected


@st.composite
def arbitrary_kv_histories(draw: st.DrawFn) -> list[Event]:
    """Arbitrary (mostly non-linearizable) small KV histories for differential testing."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    n_processes = draw(st.integers(1, 4))
    history = History()
    open_processes: set[int] = set()
    for _ in range(draw(st.integers(0, 16))):
        process = rng.randrange(n_processes)
        if process in open_processes:
            open_processes.discard(process)
            kind = rng.choice(["ok", "ok", "ok", "fail", "info"])
            if kind == "ok":
                history.ok(process, rng.choice([None, 1, 2]))
            elif kind == "fail":
                history.fail(process)
            else:
                history.info(process)
        else:
            open_processes.add(process)
            f = rng.choice(["get", "put", "delete", "cas"])
            value: object = None
            if f == "put":
                value = rng.choice([1, 2])
            elif f == "cas":
                value = (rng.choice([None, 1, 2]), rng.choice([1, 2]))
            history.invoke(process, f, value, key=rng.choice(["x", "y"]))
    return history.events


@settings(max_examples=400, deadline=None)
@given(arbitrary_kv_histories())
def test_checker_agrees_with_brute_force_on_arbitrary_histories(events: list[Event]) -> None:
    expected = brute_force_linearizable(pair_operations(events), KVModel())
    assert check(events, KVModel()).ok == expected
