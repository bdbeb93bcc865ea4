"""AIMD concurrency windows toward downstream services: a pure class per downstream.

Like TCP congestion control: the window grows by `increase_per_window` for every window's
worth of calls that succeed within the latency target, and shrinks by `decrease_factor`
on an error, `Throttled`, a timeout or a call slower than target. One burst of failures
(calls that were already in flight when the window shrank) shrinks it only once. A call
that finds the window full stays queued; it does not fail.
"""

from __future__ import annotations

import dataclasses
from enum import Enum


class Outcome(Enum):
    SUCCESS = "success"
    OVERLOAD = "overload"
    """Error, Throttled, timeout: the downstream is over its capacity."""
    NEUTRAL = "neutral"
    """The call failed for its own reasons (bad arguments): no signal about capacity."""


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Proof of a window slot; `epoch` is the decrease count when it was issued."""

    epoch: int


class AimdWindow:
    def __init__(
        self,
        *,
        initial: float = 4.0,
        minimum: float = 1.0,
        maximum: float = 10_000.0,
        increase_per_window: float = 1.0,
        decrease_factor: float = 0.7,
        latency_target_s: float = 1.0,
    ) -> None:
        assert 1 <= minimum <= initial <= maximum and 0 < decrease_factor < 1
        self.window = initial
        self.minimum = minimum
        self.maximum = maximum
        self.increase_per_window = increase_per_window
        self.decrease_factor = decrease_factor
        self.latency_target_s = latency_target_s
        self.in_flight = 0
        self.epoch = 0
        self.decreases = 0

    @property
    def full(self) -> bool:
        return self.in_flight + 1 > max(self.minimum, int(self.window))

    def try_acquire(self) -> Ticket | None:
        if self.full:
            return None
        self.in_flight += 1
        return Ticket(self.epoch)

    def release(self, ticket: Ticket, outcome: Outcome, latency_s: float) -> None:
        assert self.in_flight > 0
        self.in_flight -= 1
        if outcome == Outcome.SUCCESS and latency_s > self.latency_target_s:
            outcome = Outcome.OVERLOAD
        if outcome == Outcome.SUCCESS:
            step = self.increase_per_window / max(1.0, self.window)
            self.window = min(self.maximum, self.window + step)
        elif outcome == Outcome.OVERLOAD and ticket.epoch == self.epoch:
            self.window = max(self.minimum, self.window * self.decrease_factor)
            self.epoch += 1
            self.decreases += 1
