"""Run many seeds, report failures with a replay command and a readable trace.

``run(seeds, faults)`` is the API the ``spindle sim`` command wraps; ``main(argv)`` is a
self-contained command line (``python -m spindle.sim --seeds 100 --faults all``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
import traceback
from collections.abc import Iterable, Sequence

from spindle.sim.cluster import Cluster, SimConfig
from spindle.sim.faults import FAULT_NAMES, FaultConfig
from spindle.sim.invariants import InvariantViolation
from spindle.sim.linearizability import KVModel, Verdict, check
from spindle.sim.scheduler import Trace

__all__ = ["RunReport", "SeedResult", "main", "run", "run_seed"]

#: Trace lines printed with a failure (the full trace is one replay away).
FAILURE_TRACE_LINES = 150
#: For a linearizability failure, the trace shown starts this long before the invocation of
#: the operation that could not be placed.
LINEARIZABILITY_TRACE_LEAD_US = 50_000
#: Trace lines kept when replaying a failed seed to show the failure's time window.
REPLAY_TRACE_LINES_MAX = 2_000_000


@dataclasses.dataclass
class SeedResult:
    seed: int
    faults: str
    ok: bool
    #: "invariant", "linearizability", "unknown" (checker bound hit), "error", or "" if ok.
    failure_kind: str = ""
    failure: str = ""
    trace_tail: str = ""
    ops: int = 0
    ops_ok: int = 0
    committed_entries: int = 0
    crashes: int = 0
    partitions: int = 0
    events: int = 0
    wall_s: float = 0.0

    def replay_command(self) -> str:
        return f"python -m spindle.sim --seed {self.seed} --faults {self.faults} --trace"

    def report(self) -> str:
        if self.ok:
            return (
                f"seed {self.seed}: ok ({self.ops_ok}/{self.ops} ops ok, "
                f"{self.committed_entries} committed, {self.crashes} crashes, "
                f"{self.partitions} partitions, {self.events} events, {self.wall_s:.2f}s)"
            )
        return "\n".join(
            [
                f"seed {self.seed}: FAILED ({self.failure_kind})",
                self.failure,
                "--- trace ---",
                self.trace_tail,
                f"--- replay: {self.replay_command()}",
            ]
        )


@dataclasses.dataclass
class RunReport:
    results: list[SeedResult]
    wall_s: float

    @property
    def failures(self) -> list[SeedResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        n = len(self.results)
        ops = sum(r.ops for r in self.results)
        ops_ok = sum(r.ops_ok for r in self.results)
        failed = [r.seed for r in self.failures]
        return (
            f"{n} seeds, {n - len(failed)} passed, {len(failed)} failed {failed}; "
            f"{ops_ok}/{ops} client ops ok; {self.wall_s:.1f}s"
        )


def run_seed(
    seed: int,
    faults: FaultConfig,
    config: SimConfig | None = None,
    *,
    echo_trace: bool = False,
) -> SeedResult:
    """One deterministic run: the same seed, faults and config give the same result."""
    config = config or SimConfig()
    trace = Trace(echo=echo_trace)
    started = time.perf_counter()
    cluster = Cluster(seed, faults, config, trace)
    result = SeedResult(seed=seed, faults=faults.describe(), ok=True)
    window_us: tuple[float, float] | None = None
    try:
        cluster.run()
        verdict = check(cluster.resolved_history(), KVModel())
        if verdict.verdict is Verdict.NOT_LINEARIZABLE:
            result.ok, result.failure_kind = False, "linearizability"
            result.failure = verdict.explanation
            if verdict.unplaced is not None:
                op = verdict.unplaced
                end_us = op.return_time if op.return_time is not None else op.call_time
                window_us = (op.call_time - LINEARIZABILITY_TRACE_LEAD_US, end_us)
        elif verdict.verdict is Verdict.UNKNOWN:
            result.ok, result.failure_kind = False, "unknown"
            result.failure = verdict.explanation
    except InvariantViolation as violation:
        result.ok, result.failure_kind = False, "invariant"
        result.failure = f"invariant violated: {violation}"
    except Exception:
        result.ok, result.failure_kind = False, "error"
        result.failure = traceback.format_exc()
    events = cluster.history.events
    result.ops = sum(1 for e in events if e.type == "invoke")
    result.ops_ok = sum(1 for e in events if e.type == "ok")
    result.committed_entries = cluster.invariants.commit_max
    result.crashes, result.partitions = cluster.crashes, cluster.partitions
    result.events = cluster.scheduler.events_run
    result.wall_s = time.perf_counter() - started
    if not result.ok:
        result.trace_tail = trace.format(last=FAILURE_TRACE_LINES)
        if window_us is not None and not echo_trace:
            result.trace_tail = _replay_window(seed, faults, config, window_us)
    return result


def _replay_window(
    seed: int, faults: FaultConfig, config: SimConfig, window_us: tuple[float, float]
) -> str:
    """Replays the seed with a full trace and returns the lines inside ``window_us``.

    The operation that could not be linearized usually happened long before the end of the
    run, so the tail of the bounded trace would not show it; determinism makes the replay
    show exactly what happened then.
    """
    trace = Trace(lines_max=REPLAY_TRACE_LINES_MAX)
    with contextlib.suppress(Exception):
        Cluster(seed, faults, config, trace).run()
    start_us, end_us = window_us
    lines = [line for time_us, line in trace.timed_lines() if start_us <= time_us <= end_us]
    if len(lines) > FAILURE_TRACE_LINES:
        half = FAILURE_TRACE_LINES // 2
        lines = [*lines[:half], "...", *lines[-half:]]
    header = f"(replayed: trace from {start_us / 1000:.3f}ms to {end_us / 1000:.3f}ms)"
    return "\n".join([header, *lines])


def run(
    seeds: int | Iterable[int],
    faults: str | FaultConfig = "all",
    config: SimConfig | None = None,
    *,
    first_seed: int = 0,
    stop_on_failure: bool = False,
) -> RunReport:
    """Runs the simulator over many seeds.

    ``seeds`` is a count (seeds ``first_seed .. first_seed+N-1``) or explicit seeds; ``faults``
    is a ``FaultConfig`` or a spec like ``"all"`` or ``"loss,partition,crash"``. Each result
    carries the replay command for its seed.
    """
    fault_config = faults if isinstance(faults, FaultConfig) else FaultConfig.parse(faults)
    seed_list = range(first_seed, first_seed + seeds) if isinstance(seeds, int) else seeds
    started = time.perf_counter()
    results: list[SeedResult] = []
    for seed in seed_list:
        result = run_seed(seed, fault_config, config)
        results.append(result)
        if stop_on_failure and not result.ok:
            break
    return RunReport(results, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit status 0 if every seed passed, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="spindle sim", description="Deterministic simulation of a Raft KV cluster."
    )
    parser.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="run (replay) exactly this seed")
    parser.add_argument(
        "--faults", default="all", help=f"'all', 'none' or a list of: {','.join(FAULT_NAMES)}"
    )
    parser.add_argument("--nodes", type=int, default=SimConfig.nodes)
    parser.add_argument("--clients", type=int, default=SimConfig.clients)
    parser.add_argument("--duration-ms", type=int, help="total simulated time")
    parser.add_argument("--trace", action="store_true", help="print the whole trace live")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per seed")
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args(argv)

    config = SimConfig(nodes=args.nodes, clients=args.clients)
    if args.duration_ms is not None:
        fault_phase_us = args.duration_ms * 1000 * 2 // 3
        config = dataclasses.replace(
            config,
            fault_phase_us=fault_phase_us,
            quiet_phase_us=args.duration_ms * 1000 - fault_phase_us,
        )
    faults = FaultConfig.parse(args.faults)
    if args.seed is not None:
        result = run_seed(args.seed, faults, config, echo_trace=args.trace)
        print(result.report())
        return 0 if result.ok else 1
    started = time.perf_counter()
    results: list[SeedResult] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_seed(seed, faults, config)
        results.append(result)
        if args.verbose or not result.ok:
            print(result.report(), flush=True)
        if args.stop_on_failure and not result.ok:
            break
    report = RunReport(results, time.perf_counter() - started)
    print(f"faults={faults.describe()}: {report.summary()}")
    return 0 if report.ok else 1
