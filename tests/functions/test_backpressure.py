"""The AIMD window, as a pure class."""

from __future__ import annotations

from spindle.functions.backpressure import AimdWindow, Outcome


def test_additive_increase_one_per_window_of_successes() -> None:
    window = AimdWindow(initial=4, maximum=100)
    for _ in range(4):
        ticket = window.try_acquire()
        assert ticket is not None
        window.release(ticket, Outcome.SUCCESS, 0.01)
    assert 4.8 < window.window < 5.01


def test_full_window_refuses_without_failing() -> None:
    window = AimdWindow(initial=2)
    assert window.try_acquire() is not None and window.try_acquire() is not None
    assert window.try_acquire() is None
    assert window.in_flight == 2


def test_multiplicative_decrease_once_per_burst() -> None:
    window = AimdWindow(initial=10, decrease_factor=0.5)
    tickets = [window.try_acquire() for _ in range(10)]
    for ticket in tickets:
        assert ticket is not None
        window.release(ticket, Outcome.OVERLOAD, 0.01)
    assert window.window == 5 and window.decreases == 1
    ticket = window.try_acquire()
    assert ticket is not None
    window.release(ticket, Outcome.OVERLOAD, 0.01)
    assert window.window == 2.5


def test_slow_success_counts_as_overload_and_neutral_is_ignored() -> None:
    window = AimdWindow(initial=8, decrease_factor=0.5, latency_target_s=0.1)
    ticket = window.try_acquire()
    assert ticket is not None
    window.release(ticket, Outcome.NEUTRAL, 5.0)
    assert window.window == 8
    ticket = window.try_acquire()
    assert ticket is not None
    window.release(ticket, Outcome.SUCCESS, 0.5)
    assert window.window == 4


def test_never_below_minimum() -> None:
    window = AimdWindow(initial=2, minimum=1, decrease_factor=0.1)
    for _ in range(5):
        ticket = window.try_acquire()
        assert ticket is not None
        window.release(ticket, Outcome.OVERLOAD, 0.0)
    assert window.window == 1 and window.try_acquire() is not None


def test_settles_near_capacity_of_a_model_service() -> None:
    """A downstream that fails any call above 20 in flight, offered unbounded demand:
    the window oscillates around 20 and few attempts fail."""
    capacity = 20
    window = AimdWindow(initial=1, maximum=1000)
    in_flight: list[object] = []
    failures = attempts = 0
    sizes: list[int] = []
    for _ in range(3000):
        while (ticket := window.try_acquire()) is not None:
            in_flight.append(ticket)
        sizes.append(len(in_flight))
        # Each round every call in flight completes; the ones above capacity fail.
        for position, ticket in enumerate(in_flight):
            attempts += 1
            failed = position >= capacity
            failures += failed
            window.release(ticket, Outcome.OVERLOAD if failed else Outcome.SUCCESS, 0.01)  # type: ignore[arg-type]
        in_flight.clear()
    settled = sizes[500:]
    mean = sum(settled) / len(settled)
    assert 0.8 * capacity <= mean <= 1.2 * capacity
    assert failures / attempts < 0.05
