"""The pure scheduling policy, on a fake clock: EDF within criticality, limits, quotas,
fairness, deferral and expiry."""

from __future__ import annotations

from spindle.functions.scheduler import Candidate, FunctionPolicy, Scheduler
from spindle.functions.spec import Criticality
from spindle.functions.timeshift import TimeShifter

C, N, D = Criticality.CRITICAL, Criticality.NORMAL, Criticality.DEFERRABLE
NOW_MS = 1_000_000


def call(
    call_id: str,
    deadline_ms: int,
    criticality: Criticality = N,
    function: str = "f",
    tenant: str = "t",
) -> Candidate:
    return Candidate(call_id, function, tenant, criticality, deadline_ms, NOW_MS - 1000)


def scheduler(slots: int, **policies: FunctionPolicy) -> Scheduler:
    return Scheduler(slots, lambda name: policies.get(name, FunctionPolicy()))


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.call_id for c in candidates]


def test_edf_within_criticality_and_criticality_first() -> None:
    s = scheduler(3)
    decision = s.pick(
        NOW_MS,
        [
            call("n-late", NOW_MS + 9000),
            call("d-early", NOW_MS + 100_000, D),
            call("c-late", NOW_MS + 8000, C),
            call("n-early", NOW_MS + 1000),
            call("c-early", NOW_MS + 5000, C),
        ],
    )
    assert ids(decision.start) == ["c-early", "c-late", "n-early"]
    assert ids(decision.blocked) == ["n-late"]
    assert ids(decision.deferred) == ["d-early"]  # the worker is full: busy


def test_past_deadline_expires_never_starts() -> None:
    decision = scheduler(4).pick(NOW_MS, [call("old", NOW_MS - 1), call("ok", NOW_MS + 1)])
    assert ids(decision.expired) == ["old"] and ids(decision.start) == ["ok"]


def test_no_more_than_free_slots() -> None:
    s = scheduler(4)
    s.started("f", "t")
    s.started("f", "t")
    decision = s.pick(NOW_MS, [call(f"c{i}", NOW_MS + i + 1) for i in range(10)])
    assert ids(decision.start) == ["c0", "c1"]


def test_concurrency_limit_holds() -> None:
    s = scheduler(10, f=FunctionPolicy(concurrency_limit=3))
    s.started("f", "t")
    decision = s.pick(
        NOW_MS,
        [call(f"f{i}", NOW_MS + i + 1) for i in range(5)]
        + [call("g0", NOW_MS + 100, function="g")],
    )
    assert ids(decision.start) == ["f0", "f1", "g0"]


def test_reserved_share_is_kept_for_a_function_with_demand() -> None:
    # 10 slots, g reserves half. f (critical, opportunistic) may not take g's 5 slots.
    s = scheduler(10, g=FunctionPolicy(reserved_share=0.5))
    candidates = [call(f"f{i}", NOW_MS + i + 1, C, "f") for i in range(20)]
    candidates += [call(f"g{i}", NOW_MS + 50_000 + i, N, "g") for i in range(20)]
    decision = s.pick(NOW_MS, candidates)
    started = ids(decision.start)
    assert sum(1 for c in started if c.startswith("f")) == 5
    assert sum(1 for c in started if c.startswith("g")) == 5


def test_idle_reservation_is_spare_capacity() -> None:
    s = scheduler(10, g=FunctionPolicy(reserved_share=0.5))
    decision = s.pick(NOW_MS, [call(f"f{i}", NOW_MS + i + 1, function="f") for i in range(20)])
    assert len(decision.start) == 10


def test_non_opportunistic_function_stays_within_its_reservation() -> None:
    s = scheduler(10, g=FunctionPolicy(reserved_share=0.3, opportunistic=False))
    decision = s.pick(NOW_MS, [call(f"g{i}", NOW_MS + i + 1, function="g") for i in range(20)])
    assert len(decision.start) == 3


def test_fair_across_tenants_then_work_conserving() -> None:
    s = scheduler(6)
    # Tenant a has the earliest deadlines, but b gets an equal share of the slots.
    candidates = [call(f"a{i}", NOW_MS + i + 1, tenant="a", function="fa") for i in range(10)]
    candidates += [call(f"b{i}", NOW_MS + 100 + i, tenant="b", function="fb") for i in range(10)]
    started = ids(s.pick(NOW_MS, candidates).start)
    assert started == ["a0", "a1", "a2", "b0", "b1", "b2"]
    # With b's demand gone, a may use every slot.
    started = ids(scheduler(6).pick(NOW_MS, candidates[:10]).start)
    assert len(started) == 6


def test_fair_across_functions_within_a_tenant() -> None:
    s = scheduler(4)
    candidates = [call(f"x{i}", NOW_MS + i + 1, function="x") for i in range(10)]
    candidates += [call(f"y{i}", NOW_MS + 100 + i, function="y") for i in range(10)]
    started = ids(s.pick(NOW_MS, candidates).start)
    assert sorted(started) == ["x0", "x1", "y0", "y1"]


def test_deferrable_waits_while_busy_and_runs_when_idle() -> None:
    shifter = TimeShifter(idle_utilisation=0.5, guard_fraction=0.1)
    s = Scheduler(10, lambda name: FunctionPolicy(expected_run_ms=1000), shifter)
    for _ in range(6):
        s.started("busy", "t")
    deferrable = call("d", NOW_MS + 3_600_000, D)
    assert ids(s.pick(NOW_MS, [deferrable]).deferred) == ["d"]
    for _ in range(3):
        s.finished("busy", "t")
    assert ids(s.pick(NOW_MS, [deferrable]).start) == ["d"]
    # Store load counts as busy too.
    assert ids(s.pick(NOW_MS, [deferrable], store_load=0.9).deferred) == ["d"]


def test_deferrable_near_deadline_runs_whatever_the_load() -> None:
    shifter = TimeShifter(idle_utilisation=0.1, guard_fraction=0.1)
    s = Scheduler(10, lambda name: FunctionPolicy(expected_run_ms=1000), shifter)
    for _ in range(8):
        s.started("busy", "t")
    horizon_ms = 3_600_000
    far = Candidate("far", "f", "t", D, NOW_MS + horizon_ms // 2, NOW_MS - horizon_ms // 2)
    near = Candidate("near", "f", "t", D, NOW_MS + 60_000, NOW_MS - horizon_ms + 60_000)
    decision = s.pick(NOW_MS, [far, near])
    assert ids(decision.start) == ["near"] and ids(decision.deferred) == ["far"]


def test_time_shifter_baseline_follows_measured_load() -> None:
    shifter = TimeShifter(baseline_window_s=100, idle_utilisation=0.0, headroom_fraction=0.0)
    for second in range(1000):
        shifter.observe(second, 0.6)
    assert abs(shifter.level() - 0.6) < 0.01
    for second in range(1000, 1010):
        shifter.observe(second, 0.0)
    assert 0.5 < shifter.level() < 0.6  # a long window: a short dip moves it little
