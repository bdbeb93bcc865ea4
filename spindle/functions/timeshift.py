"""Time-shifting of deferrable calls: a pure class fed with measured utilisation.

The shifter keeps a long-run average of the worker's measured utilisation (busy slots over
slots, including the store's load), which converges to the mean demand because every call
runs eventually. Deferrable calls run only while the current load is below that average
(plus headroom), or below `idle_utilisation`, so they fill the troughs and stay out of the
peaks. A deferrable call is released whatever the load once its remaining time to deadline
falls under a guard, so it always runs before its deadline.
"""

from __future__ import annotations

import math

DAY_S = 24 * 3600.0


class TimeShifter:
    def __init__(
        self,
        *,
        baseline_window_s: float = DAY_S,
        idle_utilisation: float = 0.5,
        headroom_fraction: float = 0.05,
        guard_fraction: float = 0.1,
        guard_s_min: float = 1.0,
    ) -> None:
        assert baseline_window_s > 0 and 0 <= idle_utilisation <= 1
        self.baseline_window_s = baseline_window_s
        self.idle_utilisation = idle_utilisation
        self.headroom_fraction = headroom_fraction
        self.guard_fraction = guard_fraction
        self.guard_s_min = guard_s_min
        self.baseline = 0.0
        self._observed_s = 0.0
        self._last_s: float | None = None

    def observe(self, now_s: float, utilisation: float) -> None:
        """Fold in a measurement. The average weighs time, so the sampling rate does not
        matter; until a full window has been seen it is the plain mean so far."""
        if self._last_s is None:
            self._last_s = now_s
            self.baseline = utilisation
            return
        dt_s = max(0.0, now_s - self._last_s)
        self._last_s = now_s
        if dt_s == 0:
            return
        self._observed_s += dt_s
        window_s = min(self._observed_s, self.baseline_window_s)
        weight = 1 - math.exp(-dt_s / window_s)
        self.baseline += weight * (utilisation - self.baseline)

    def level(self) -> float:
        """Load under which deferrable calls run."""
        return max(self.idle_utilisation, self.baseline * (1 + self.headroom_fraction))

    def due(self, now_ms: int, submitted_ms: int, deadline_ms: int, expected_run_ms: int) -> bool:
        """True when a deferrable call must start now to be sure to meet its deadline."""
        horizon_ms = max(0, deadline_ms - submitted_ms)
        guard_ms = max(self.guard_s_min * 1000, self.guard_fraction * horizon_ms)
        return deadline_ms - now_ms <= expected_run_ms + guard_ms
