"""Simulated time: one event queue, one clock, one trace.

Everything in a simulation happens inside an event popped from this queue, so a run is a
pure function of its seed. Ties in time are broken by insertion order (a sequence number),
never by comparing callbacks, so the order is reproducible.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

__all__ = ["TRACE_LINES_MAX", "Scheduler", "Trace"]

#: Trace lines kept for the failure report (the most recent ones); older lines are dropped
#: so a long run does not grow without bound. Replaying the seed reproduces all of them.
TRACE_LINES_MAX = 4000


class Trace:
    """A bounded log of what happened, formatted only when somebody reads it.

    Formatting every event eagerly would dominate the cost of a run; storing the format
    string and its arguments keeps the hot path to one tuple allocation.
    """

    def __init__(self, lines_max: int = TRACE_LINES_MAX, echo: bool = False) -> None:
        self._lines: deque[tuple[int, str, tuple[object, ...]]] = deque(maxlen=lines_max)
        self.echo = echo
        self.dropped_lines = 0

    def log(self, time_us: int, fmt: str, *args: object) -> None:
        if len(self._lines) == self._lines.maxlen:
            self.dropped_lines += 1
        self._lines.append((time_us, fmt, args))
        if self.echo:
            print(self._format(time_us, fmt, args))

    @staticmethod
    def _format(time_us: int, fmt: str, args: tuple[object, ...]) -> str:
        return f"{time_us / 1000:>10.3f}ms  " + (fmt % args if args else fmt)

    def lines(self, last: int | None = None) -> list[str]:
        items = list(self._lines)
        if last is not None:
            items = items[-last:]
        return [self._format(t, fmt, args) for t, fmt, args in items]

    def timed_lines(self) -> list[tuple[int, str]]:
        return [(t, self._format(t, fmt, args)) for t, fmt, args in self._lines]

    def format(self, last: int | None = None) -> str:
        head = [f"... ({self.dropped_lines} earlier lines dropped)"] if self.dropped_lines else []
        return "\n".join(head + self.lines(last))


class Scheduler:
    """A discrete-event clock in integer microseconds (integers keep replays exact)."""

    def __init__(self) -> None:
        self.now_us = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.events_run = 0

    def at(self, time_us: int, action: Callable[[], None]) -> None:
        assert time_us >= self.now_us, f"scheduling in the past: {time_us} < {self.now_us}"
        self._seq += 1
        heapq.heappush(self._queue, (time_us, self._seq, action))

    def after(self, delay_us: int, action: Callable[[], None]) -> None:
        self.at(self.now_us + max(0, delay_us), action)

    def run_next(self) -> bool:
        """Runs the earliest event; False when the queue is empty."""
        if not self._queue:
            return False
        time_us, _, action = heapq.heappop(self._queue)
        self.now_us = time_us
        self.events_run += 1
        action()
        return True

    def next_time_us(self) -> int | None:
        return self._queue[0][0] if self._queue else None
