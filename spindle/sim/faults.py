"""Which faults a simulation injects, and how hard.

Faults are named so a command line can say ``--faults loss,partition,crash`` or ``all``.
Each name switches on one family; the magnitudes are fields with units so a regression test
can pin them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["FAULT_NAMES", "FaultConfig"]

#: Every fault family, in the order ``all`` enables them.
FAULT_NAMES: tuple[str, ...] = (
    "loss",  # messages dropped at random
    "delay",  # message latency varies widely (which also reorders)
    "reorder",  # a few messages are held back much longer than the rest
    "duplicate",  # messages delivered twice
    "partition",  # links cut, symmetrically or in one direction only, then healed
    "crash",  # nodes crash (losing unsynced disk writes) and restart later
    "pause",  # a process stops (GC pause, SIGSTOP) and resumes with a backlog of input
    "slow-disk",  # fsync latency spikes
    "clock",  # per-node tick-rate drift and phase skew
)


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Fault switches and magnitudes. ``FaultConfig()`` is a perfect world."""

    enabled: frozenset[str] = frozenset()

    base_delay_us: int = 200
    #: With ``delay``: extra latency uniform in [0, max_jitter_us].
    max_jitter_us: int = 8_000
    loss_probability: float = 0.05
    duplicate_probability: float = 0.03
    reorder_probability: float = 0.02
    #: With ``reorder``: a held-back message arrives up to this much later (long enough to
    #: outlive an election, so stale-term messages reach new leaders).
    reorder_delay_us_max: int = 300_000

    #: Mean time between fault actions (partition, crash) while the fault phase lasts.
    fault_interval_us: int = 250_000
    partition_duration_us_max: int = 400_000
    crash_downtime_us_max: int = 300_000
    pause_us_max: int = 400_000
    #: Share of crashes and pauses aimed at the leader (leader churn is where Raft is subtle).
    crash_leader_probability: float = 0.5
    #: Simultaneously crashed nodes are limited to a minority, so progress stays possible.
    crash_minority_only: bool = True

    fsync_us: int = 100
    #: With ``slow-disk``: occasional fsyncs take up to this long.
    slow_fsync_us_max: int = 50_000
    slow_fsync_probability: float = 0.05

    #: With ``clock``: per-node tick-rate drift, uniform in [-max, +max] parts per million.
    #: It must stay below what the Raft lease margin absorbs (see ``Config.lease_margin_ticks``);
    #: 20_000 ppm (2%) over a 10-tick election timeout with a 1-tick margin is inside it.
    clock_drift_ppm_max: int = 20_000
    #: With ``clock``: each node's ticks start at a random phase up to this offset.
    clock_skew_us_max: int = 10_000

    def on(self, name: str) -> bool:
        return name in self.enabled

    @staticmethod
    def parse(spec: str | Iterable[str]) -> FaultConfig:
        """``"all"``, ``"none"``/``""``, or a comma-separated list of ``FAULT_NAMES``."""
        names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        names = [n for n in names if n]
        if names in (["all"], ["*"]):
            return FaultConfig(enabled=frozenset(FAULT_NAMES))
        if names in ([], ["none"]):
            return FaultConfig()
        unknown = sorted(set(names) - set(FAULT_NAMES))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; choose from {', '.join(FAULT_NAMES)}")
        return FaultConfig(enabled=frozenset(names))

    def describe(self) -> str:
        names = [n for n in FAULT_NAMES if n in self.enabled]
        return ",".join(names) if names else "none"
