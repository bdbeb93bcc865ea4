"""Time-shifting on simulated time: two simulated days (the first warms up the measured
baseline) of diurnal arrivals, peak 4x trough, half of them deferrable with deadlines of
6-24 h. The real Scheduler and TimeShifter decide every simulated minute; calls run for
one minute on a fixed pool of slots. On the second day the executed load's hourly
peak/mean must be <= 1.3, with no deadline miss, and normal calls must start in the
minute they arrive (as they would with no deferrable load at all)."""

from __future__ import annotations

import heapq
import math
import random

from spindle.functions.scheduler import Candidate, FunctionPolicy, Scheduler
from spindle.functions.spec import Criticality
from spindle.functions.timeshift import TimeShifter

MINUTE_MS = 60_000
DAY_MINUTES = 24 * 60
MEAN_PER_MINUTE = 10.0
"""Mean arrivals per minute of each half (normal, deferrable)."""
SLOTS = 60
LOOKAHEAD = 200
"""Deferrable calls the scheduler sees per tick: the queue's EDF heads."""


def rate(minute: int) -> float:
    """Diurnal curve: trough 0.4x at midnight, peak 1.6x at noon (ratio 4)."""
    phase = 2 * math.pi * (minute % DAY_MINUTES) / DAY_MINUTES
    return MEAN_PER_MINUTE * (1 - 0.6 * math.cos(phase))


def simulate(shifting: bool, days: int = 2, seed: int = 7) -> dict[str, object]:
    rng = random.Random(seed)
    shifter = TimeShifter(idle_utilisation=0.0, headroom_fraction=0.05, guard_fraction=0.05)
    policy = FunctionPolicy(expected_run_ms=MINUTE_MS)
    scheduler = Scheduler(SLOTS, lambda name: policy, shifter)
    deferred: list[tuple[int, str, Candidate]] = []
    normal: list[tuple[int, Candidate]] = []
    running: list[Candidate] = []
    executed_per_minute: list[int] = []
    normal_delays_min: list[int] = []
    misses = 0
    carry = [0.0, 0.0]
    serial = 0
    for minute in range(days * DAY_MINUTES):
        now_ms = minute * MINUTE_MS
        for call in running:
            scheduler.finished(call.function, call.tenant)
        running.clear()
        for half in (0, 1):
            carry[half] += rate(minute)
            arrivals, carry[half] = int(carry[half]), carry[half] - int(carry[half])
            for _ in range(arrivals):
                serial += 1
                if half == 0 or not shifting:
                    deadline_ms = now_ms + 3600_000
                    call = Candidate(
                        f"n{serial}", "normal", "t", Criticality.NORMAL, deadline_ms, now_ms
                    )
                    normal.append((minute, call))
                else:
                    deadline_ms = now_ms + rng.randint(6 * 60, 24 * 60) * MINUTE_MS
                    call = Candidate(
                        f"d{serial}", "deferrable", "t", Criticality.DEFERRABLE, deadline_ms, now_ms
                    )
                    heapq.heappush(deferred, (deadline_ms, call.call_id, call))
        shifter.observe(now_ms / 1000, scheduler.utilisation)
        heads = [entry[2] for entry in heapq.nsmallest(LOOKAHEAD, deferred)]
        decision = scheduler.pick(now_ms, [call for _, call in normal] + heads)
        misses += len(decision.expired)
        started_ids = {call.call_id for call in decision.start}
        gone = started_ids | {call.call_id for call in decision.expired}
        for call in decision.start:
            scheduler.started(call.function, call.tenant)
            running.append(call)
        for arrived, call in normal:
            if call.call_id in started_ids:
                normal_delays_min.append(minute - arrived if minute >= DAY_MINUTES else 0)
        normal = [(m, c) for m, c in normal if c.call_id not in started_ids]
        if gone & {entry[1] for entry in deferred[: len(gone) + LOOKAHEAD]}:
            deferred = [entry for entry in deferred if entry[1] not in gone]
            heapq.heapify(deferred)
        executed_per_minute.append(len(decision.start))
    day2 = executed_per_minute[DAY_MINUTES:]
    hourly = [sum(day2[h * 60 : (h + 1) * 60]) for h in range(24)]
    return {
        "peak_to_mean": max(hourly) / (sum(hourly) / len(hourly)),
        "misses": misses,
        "backlog": len(deferred),
        "executed_day2": sum(day2),
        "arrivals_per_day": round(2 * MEAN_PER_MINUTE * DAY_MINUTES),
        "normal_delay_max_min": max(normal_delays_min),
    }


def test_time_shifting_flattens_the_day_without_missing_deadlines() -> None:
    baseline = simulate(shifting=False)
    assert baseline["peak_to_mean"] > 1.5  # the arrivals really are diurnal
    shifted = simulate(shifting=True)
    assert shifted["peak_to_mean"] <= 1.3, shifted
    assert shifted["misses"] == 0, shifted
    # Steady state: the day's work is done within the day, not pushed out of the window.
    assert (
        abs(shifted["executed_day2"] - shifted["arrivals_per_day"])
        < 0.05 * shifted["arrivals_per_day"]
    )  # type: ignore[operator]
    assert shifted["normal_delay_max_min"] == 0 == baseline["normal_delay_max_min"]
