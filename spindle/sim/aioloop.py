"""Deterministic asyncio on virtual time: an event loop per simulated process, one clock.

The simulator runs the real node code, which is asyncio code. ``SimEventLoop`` is an
asyncio loop with no I/O and no threads whose ``time()`` is virtual: it never sleeps, it is
told what time it is. ``LoopDriver`` owns the one global clock (integer microseconds, the
``Scheduler`` of the network and the faults) and runs many loops on it, one per simulated
process, so a process can crash (its loop is never run again, like a killed process),
pause (its loop is skipped while its clock runs on: timers fire late, inputs queue) or have
a clock that drifts. Nothing here reads the wall clock or the OS random source, so a run is
a pure function of its inputs.

Work in different loops never interacts at the same instant (everything between processes
crosses the simulated network, which takes time), so the order the driver visits loops in
only has to be fixed, not clever.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

from spindle.sim.scheduler import Scheduler

__all__ = ["LoopDriver", "SimEventLoop", "run_virtual"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

#: Iterations of one loop at one instant before the driver calls it a livelock (a coroutine
#: spinning on ``sleep(0)`` would otherwise hang the simulation at one point in time).
ITERATIONS_PER_INSTANT_MAX = 100_000


class LivelockError(RuntimeError):
    """A loop kept finding work without virtual time moving."""


class _NoIO:
    """The selector of a loop with no file descriptors: ``select`` only lets time pass.

    With a driver the loop is only run when it has work due now, so asyncio asks for a
    zero timeout; standalone (``run_virtual``) a positive timeout moves the loop's own clock
    to its next timer instead of sleeping.
    """

    def __init__(self, advance: Callable[[float], None] | None) -> None:
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise LivelockError("the loop waits for I/O that can never come (nothing scheduled)")
        if timeout > 0:
            if self._advance is None:
                raise RuntimeError(
                    "a driven SimEventLoop was asked to sleep; run it via its driver"
                )
            self._advance(timeout)
        return []

    def close(self) -> None:
        pass


class SimEventLoop(asyncio.BaseEventLoop):
    """An asyncio loop on a virtual clock, for one simulated process.

    ``clock`` gives the process's local time in seconds (the driver's global time through
    the process's drift and skew). ``executor_delay_s`` is how long work handed to
    ``run_in_executor`` takes (the group committer's fsync): the function runs inline when
    that simulated time has passed, so a crash in between means it never ran.
    """

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        *,
        name: str = "loop",
        executor_delay_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        super().__init__()
        self.name = name
        self._own_time_s = 0.0
        self._clock = clock if clock is not None else self._own_clock
        self._selector = _NoIO(None if clock is not None else self._advance_own_clock)
        self._executor_delay_s = executor_delay_s
        self.paused = False
        self.killed = False
        self.iterations = 0
        self.set_debug(False)
        # A timer fires strictly after its time, never "within the clock's resolution"
        # before it: virtual time only moves when nothing is due, so a coroutine that
        # sleeps until a deadline computed in floats would otherwise spin at one instant.
        self._clock_resolution = 0.0

    # -- time -------------------------------------------------------------------------------

    def _own_clock(self) -> float:
        return self._own_time_s

    def _advance_own_clock(self, seconds: float) -> None:
        """Standalone: jump just past the next timer (timers fire strictly after their
        time, and ``now + (when - now)`` may round to just below ``when``)."""
        target = self._own_time_s + seconds
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            target = max(target, scheduled[0]._when)
        self._own_time_s = math.nextafter(target, math.inf)

    def time(self) -> float:
        return self._clock()

    # -- what BaseEventLoop leaves to subclasses ------------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[_Ts]], _T], *args: *_Ts
    ) -> asyncio.Future[_T]:
        """Runs ``func`` inline after the simulated executor delay (no threads)."""
        future: asyncio.Future[_T] = self.create_future()

        def run() -> None:
            if future.cancelled():
                return
            try:
                result = func(*args)
            except BaseException as error:  # handed to the awaiting code, as a thread would
                future.set_exception(error)
            else:
                future.set_result(result)

        self.call_later(self._executor_delay_s(), run)
        return future

    def __del__(self) -> None:
        """A simulated process owns no OS resources: nothing to warn about."""

    # -- driving ----------------------------------------------------------------------------

    def kill(self) -> None:
        """The process died: drop everything it had pending and never run it again.

        The loop is not closed, so late finalizers of its coroutines find a loop to schedule
        on (whose callbacks never run) instead of raising.
        """
        self.killed = True
        self._ready.clear()  # type: ignore[attr-defined]
        self._scheduled.clear()  # type: ignore[attr-defined]

    def has_due_work(self) -> bool:
        if self.killed or self.paused:
            return False
        if self._ready:  # type: ignore[attr-defined]
            return True
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return bool(scheduled) and scheduled[0]._when < self.time()

    def next_timer_s(self) -> float | None:
        """Local time of the earliest timer, or None (cancelled timers count: harmless)."""
        if self.killed or self.paused:
            return None
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return float(scheduled[0]._when) if scheduled else None

    def run_once(self) -> None:
        """One iteration: everything ready now, then the timers due now."""
        self.iterations += 1
        self.stop()
        self.run_forever()


class LoopDriver:
    """Runs a ``Scheduler`` and many ``SimEventLoop``s on one global clock.

    A loop's local time is ``skew_s + global_s * (1 + drift_ppm / 1e6)``: a process clock
    that runs fast or slow (rate drift) and started elsewhere (skew).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._loops: list[tuple[SimEventLoop, float, float]] = []
        self.iterations = 0

    @property
    def now_us(self) -> int:
        return self.scheduler.now_us

    def new_loop(
        self,
        name: str,
        *,
        drift_ppm: int = 0,
        skew_s: float = 0.0,
        executor_delay_s: Callable[[], float] = lambda: 0.0,
    ) -> SimEventLoop:
        rate = 1.0 + drift_ppm / 1_000_000
        scheduler = self.scheduler

        def clock() -> float:
            return skew_s + scheduler.now_us * rate / 1_000_000

        loop = SimEventLoop(clock, name=name, executor_delay_s=executor_delay_s)
        self._loops.append((loop, rate, skew_s))
        return loop

    def remove(self, loop: SimEventLoop) -> None:
        self._loops = [entry for entry in self._loops if entry[0] is not loop]

    def _global_us(self, local_s: float, rate: float, skew_s: float) -> int:
        """The first global microsecond after now at which local time reaches ``local_s``
        (called only for timers not due yet, so never now itself)."""
        return max(self.scheduler.now_us + 1, math.ceil((local_s - skew_s) * 1_000_000 / rate))

    def run_until(self, end_us: int, done: Callable[[], bool] | None = None) -> bool:
        """Runs until ``done()`` holds (True) or global time would pass ``end_us`` (False)."""
        scheduler = self.scheduler
        spins = 0
        while True:
            if done is not None and done():
                return True
            ran: list[str] = []
            for loop, _, _ in list(self._loops):
                if loop.has_due_work():
                    loop.run_once()
                    ran.append(loop.name)
            if ran:
                self.iterations += 1
                spins += 1
                if spins > ITERATIONS_PER_INSTANT_MAX:
                    raise LivelockError(f"loops {ran} spin at {scheduler.now_us}us")
                continue
            next_us = scheduler.next_time_us()
            if next_us is not None and next_us <= scheduler.now_us:
                scheduler.run_next()
                continue
            for loop, rate, skew_s in self._loops:
                when_s = loop.next_timer_s()
                if when_s is not None:
                    at_us = self._global_us(when_s, rate, skew_s)
                    if next_us is None or at_us < next_us:
                        next_us = at_us
            if next_us is None or next_us > end_us:
                scheduler.now_us = max(scheduler.now_us, end_us)
                return False
            spins = 0
            scheduler.now_us = next_us


def run_virtual(main: Callable[[], Any], *, timeout_s: float = 3600.0) -> Any:
    """Runs coroutine function ``main`` on a standalone SimEventLoop (virtual time: sleeps
    cost nothing). For tests of code that only needs a loop, not a simulated world."""
    loop = SimEventLoop(name="standalone")
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), timeout_s))
    finally:
        loop.close()
