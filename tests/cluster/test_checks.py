"""The checks of the fault tests on made-up inputs (no processes): they must catch what
they are there to catch."""

from __future__ import annotations

import random

from spindle.faults.convergence import divergence, replica_view
from spindle.faults.history import Recorder, check_history
from spindle.faults.nemesis import group_leaders
from spindle.faults.netns import NetnsNetwork
from spindle.faults.workload import KeyPool, classify
from spindle.kv.client import NotSent
from spindle.kv.errors import Conflict, NotLeader, Timeout, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _op(recorder: Recorder, process: int, f: str, key: str, value: object, result: object) -> None:
    start = recorder.invoke(process, f, key, value)
    recorder.complete(process, "ok", result, client=process, node_id=1, f=f, key=key, start_s=start)


def test_a_stale_read_after_an_acknowledged_write_is_a_violation() -> None:
    recorder = Recorder(Clock())
    _op(recorder, 1, "put", "k", "a", None)
    _op(recorder, 1, "put", "k", "b", None)
    _op(recorder, 2, "get", "k", None, "a")
    _op(recorder, 2, "get", "other", None, None)
    report = check_history(recorder.history.events)
    assert not report.ok
    assert [verdict.key for verdict in report.violations] == ["k"]
    assert "not linearizable" in report.details()


def test_unknown_writes_may_take_effect_late_and_failed_cas_never() -> None:
    recorder = Recorder(Clock())
    start = recorder.invoke(1, "put", "k", "lost?")
    recorder.complete(1, "info", client=1, node_id=1, f="put", key="k", start_s=start)
    start = recorder.invoke(2, "cas", "k", (None, "never"))
    recorder.complete(2, "fail", client=2, node_id=1, f="cas", key="k", start_s=start)
    _op(recorder, 3, "get", "k", None, None)
    _op(recorder, 3, "get", "k", None, "lost?")
    assert check_history(recorder.history.events).ok
    _op(recorder, 3, "get", "k", None, "never")
    assert not check_history(recorder.history.events).ok


def test_an_undecided_key_is_reported_not_passed() -> None:
    recorder = Recorder(Clock())
    for process in range(8):  # eight overlapping writes, then a read
        recorder.invoke(process, "put", "k", f"v{process}")
    for process in range(8):
        recorder.complete(process, "ok", client=process, node_id=1, f="put", key="k", start_s=0)
    _op(recorder, 9, "get", "k", None, "v3")
    report = check_history(recorder.history.events, max_steps_per_key=2)
    assert not report.ok
    assert [verdict.key for verdict in report.unknown] == ["k"]
    assert report.retried == 1


def test_outcomes_of_errors() -> None:
    assert classify("get", Timeout("slow")) == "fail"
    assert classify("cas", Conflict("version")) == "fail"
    assert classify("put", Conflict("?")) == "info"
    assert classify("put", NotLeader("not applied")) == "fail"
    assert classify("put", NotSent("never left")) == "fail"
    assert classify("put", Timeout("slow")) == "info"
    assert classify("delete", Unavailable("connection lost")) == "info"


def test_keys_retire_after_their_share_of_operations() -> None:
    pool = KeyPool("k", active=2, ops_per_key=3)
    rng = random.Random(1)
    picks = [pool.pick(rng) for _ in range(30)]
    counts = {key: picks.count(key) for key in set(picks)}
    assert max(counts.values()) <= 3
    assert set(pool.all_keys) >= set(picks)


def _status(groups: list[tuple[int, int, int, int, int]]) -> dict[str, object]:
    return {
        "cluster": {
            "groups": [
                {"group_id": g, "applied": a, "commit": c, "leader_id": lead, "term": t}
                for g, a, c, lead, t in groups
            ]
        }
    }


def test_divergence_names_lagging_and_leaderless_replicas() -> None:
    agreed = {n: _status([(0, 5, 5, 1, 1), (1, 9, 9, 2, 3)]) for n in (1, 2, 3)}
    assert divergence(replica_view(agreed), [1, 2, 3]) == []
    lagging = {**agreed, 3: _status([(0, 4, 4, 0, 1), (1, 9, 9, 2, 3)])}
    problems = divergence(replica_view(lagging), [1, 2, 3])
    assert len(problems) == 1 and problems[0].startswith("group 0:")
    missing = {1: agreed[1], 2: agreed[2], 3: _status([(0, 5, 5, 1, 1)])}
    assert "no replica" in divergence(replica_view(missing), [1, 2, 3])[0]
    assert group_leaders(lagging) == {0: 1, 1: 2}


def test_interface_names_fit_the_kernel_limit() -> None:
    network = NetnsNetwork(9, tag="abcdef")
    names = [network.bridge] + [network.host_veth(n) + "x" for n in network.node_ids]
    assert all(len(name) <= 15 for name in names), names
