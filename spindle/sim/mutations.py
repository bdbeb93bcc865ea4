"""Mutation check: break the Raft core on purpose and show the test suite notices.

Each mutation patches one method of the core (``spindle.kv.raft``) from the outside, for the
duration of a ``with applied(name):`` block, so the core's code is never edited. A mutation
is *caught* if the deterministic simulator fails on some seed with it (``hunt``) or if one
of the Raft core's scenario or unit tests (tests/kv/raft) fails with it (``raft_tests``).

``python -m spindle.sim.mutations`` prints a table: for each mutation, the first simulator
seed that caught it, the Raft tests that fail under it (tests that fail without any mutation
are left out and reported), and the verdict. Exit status 1 if any mutation survived.

What catches what (the simulator hunt runs ``HUNT_SEEDS_MAX`` seeds with all faults):

- double-vote, reject-as-ack, commit-backwards, vote-stale-log: the simulator, within a few
  seeds, and Raft tests too.
- stale-ack: tests/kv/raft/testdata/stale_append_ack.txt. The simulator misses it: the
  stale ack does harm only if the leader it was sent to leads again after a third leader
  overwrote that leader's uncommitted entries, and the late ack then completes a quorum for
  an entry of the new term. With the simulator's 3 replicas the third leader needs a vote
  from one of the two nodes holding the longer log, which only lost unsynced writes allow
  (the scenario uses 5); random faults have not produced that sequence.
- stale-read-ack: tests/kv/raft/testdata/stale_read_round_ack.txt (a deposed leader whose
  late round-1 heartbeat ack would confirm a read issued after a new leader committed). The
  simulator misses it: an ack of an earlier round must reach a leader that was deposed in
  the meantime, after a read arrived there and before check_quorum made it step down.
- commit-old-term: the figure8 scenario and a unit test. The simulator misses it: it needs
  the full figure 8 sequence (three leader changes with crashes at exact points).
- lease-forever: tests/kv/raft/testdata/lease_deposed_leader_read.txt (a leader cut off from
  its followers answers a lease read after they elected a new leader that committed a
  write), the other lease scenarios (which check ``lease_valid`` directly) and a unit test.
  The simulator misses it: check_quorum deposes a cut-off leader within two election
  timeouts, so the stale read needs a client's lease read to reach the old leader in the
  few ticks between the new leader's first commit and that step-down, and to return a value
  a completed write had already replaced; random faults have not produced that.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import msgspec

from spindle.kv.raft import NONE, Message, MessageType, Role
from spindle.kv.raft.log import RaftLog
from spindle.kv.raft.raft import Raft
from spindle.sim.cluster import SimConfig
from spindle.sim.faults import FaultConfig
from spindle.sim.runner import SeedResult, run_seed

__all__ = [
    "MUTATIONS",
    "Mutation",
    "MutationReport",
    "RaftTestsResult",
    "applied",
    "check",
    "hunt",
    "main",
    "raft_tests",
]

#: Seeds tried per mutation before declaring it survived the simulator.
HUNT_SEEDS_MAX = 60
#: The Raft core's scenario and unit tests, relative to the repository root.
RAFT_TEST_PATHS = ("tests/kv/raft",)
#: A run of the Raft tests (a subprocess) taking longer than this is a failure of the check.
RAFT_TESTS_TIMEOUT_S = 600.0
#: The repository root: where ``RAFT_TEST_PATHS`` are found (a source checkout).
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    install: Callable[[contextlib.ExitStack], None]


def _patch(stack: contextlib.ExitStack, owner: type, attribute: str, value: object) -> None:
    original = getattr(owner, attribute)
    setattr(owner, attribute, value)
    stack.callback(setattr, owner, attribute, original)


def _double_vote(stack: contextlib.ExitStack) -> None:
    original = Raft._handle_vote_request

    def forgetful(self: Raft, m: Message) -> None:
        if m.type is MessageType.VOTE and self.role is Role.FOLLOWER:
            self.vote = NONE  # forget whom we voted for in this term
            self.lead = NONE
        original(self, m)

    _patch(stack, Raft, "_handle_vote_request", forgetful)


def _stale_ack(stack: contextlib.ExitStack) -> None:
    original = Raft.step

    def credulous(self: Raft, m: Message) -> None:
        if m.type is MessageType.APP_RESP and m.term < self.term and not m.reject:
            m = msgspec.structs.replace(m, term=self.term)
        original(self, m)

    _patch(stack, Raft, "step", credulous)


def _stale_read_ack(stack: contextlib.ExitStack) -> None:
    original = Raft._handle_read_ack

    def any_round(self: Raft, voter: int, round_id: int) -> None:
        original(self, voter, 2**62)  # an ack of an earlier round confirms later reads too

    _patch(stack, Raft, "_handle_read_ack", any_round)


def _reject_counts_as_ack(stack: contextlib.ExitStack) -> None:
    original = Raft._handle_append_response

    def optimistic(self: Raft, m: Message, pr: object) -> None:
        if m.reject:
            m = msgspec.structs.replace(m, reject=False)
        original(self, m, pr)  # type: ignore[arg-type]

    _patch(stack, Raft, "_handle_append_response", optimistic)


def _commit_backwards(stack: contextlib.ExitStack) -> None:
    def assign(self: RaftLog, index: int) -> None:
        assert index <= self.last_index()
        self.committed = max(index, self.applied)  # may lower the commit index

    _patch(stack, RaftLog, "commit_to", assign)


def _commit_old_term(stack: contextlib.ExitStack) -> None:
    def by_count(self: RaftLog, index: int, term: int) -> bool:
        if index > self.committed:  # figure 8: no check that entry ``index`` is of ``term``
            self.commit_to(index)
            return True
        return False

    _patch(stack, RaftLog, "maybe_commit", by_count)


def _vote_for_stale_log(stack: contextlib.ExitStack) -> None:
    _patch(stack, RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)


def _lease_forever(stack: contextlib.ExitStack) -> None:
    _patch(stack, Raft, "lease_valid", lambda self: self.role.name == "LEADER")


MUTATIONS: dict[str, Mutation] = {
    m.name: m
    for m in (
        Mutation(
            "double-vote",
            "a follower forgets its vote and grants another in the same term",
            _double_vote,
        ),
        Mutation(
            "stale-ack",
            "a leader counts an append ack from an earlier term as current",
            _stale_ack,
        ),
        Mutation(
            "stale-read-ack",
            "a leader confirms a ReadIndex round with a heartbeat ack sent before the read",
            _stale_read_ack,
        ),
        Mutation(
            "reject-as-ack",
            "a leader counts a rejected append as a match",
            _reject_counts_as_ack,
        ),
        Mutation("commit-backwards", "the commit index may move backwards", _commit_backwards),
        Mutation(
            "commit-old-term",
            "a leader commits an earlier term's entry by counting replicas (figure 8)",
            _commit_old_term,
        ),
        Mutation(
            "vote-stale-log",
            "a voter ignores whether the candidate's log is up to date",
            _vote_for_stale_log,
        ),
        Mutation("lease-forever", "a leader's lease never expires", _lease_forever),
    )
}


@contextlib.contextmanager
def applied(name: str) -> Iterator[None]:
    """Installs mutation ``name`` for the duration of the block."""
    with contextlib.ExitStack() as stack:
        MUTATIONS[name].install(stack)
        yield


def hunt(
    name: str,
    seeds_max: int = HUNT_SEEDS_MAX,
    faults: FaultConfig | None = None,
    config: SimConfig | None = None,
) -> SeedResult | None:
    """Runs seeds 0.. under mutation ``name``; returns the first failing result, or None."""
    faults = faults or FaultConfig.parse("all")
    with applied(name):
        for seed in range(seeds_max):
            result = run_seed(seed, faults, config)
            if not result.ok:
                return result
    return None


# -- the Raft core's scenario and unit tests under a mutation ------------------------------------


@dataclasses.dataclass(frozen=True)
class RaftTestsResult:
    """Which Raft tests fail under a mutation, beyond those that fail without one."""

    failed: tuple[str, ...]
    """Test ids (pytest node ids) that pass without the mutation and fail with it."""
    failing_anyway: tuple[str, ...]
    """Test ids that fail without any mutation: they prove nothing and are left out."""


def raft_tests(name: str, baseline: Sequence[str] | None = None) -> RaftTestsResult:
    """Runs the Raft core's tests (``RAFT_TEST_PATHS``) with mutation ``name`` installed.

    Each run is a fresh ``pytest`` subprocess, so no patch can leak and scenario files added
    since are collected. ``baseline`` is the failures without a mutation
    (``raft_test_failures(None)``); it is computed if not given.
    """
    if baseline is None:
        baseline = raft_test_failures(None)
    failed = raft_test_failures(name)
    return RaftTestsResult(
        failed=tuple(t for t in failed if t not in baseline),
        failing_anyway=tuple(baseline),
    )


def raft_test_failures(name: str | None) -> list[str]:
    """Ids of the Raft tests that fail with mutation ``name`` (None: without a mutation)."""
    missing = [p for p in RAFT_TEST_PATHS if not (REPO_ROOT / p).exists()]
    if missing:
        raise FileNotFoundError(f"Raft tests not found under {REPO_ROOT}: {missing}")
    with tempfile.TemporaryDirectory() as tmp:
        report_path = pathlib.Path(tmp) / "failed.json"
        command = [sys.executable, "-m", "spindle.sim.mutations", "--run-tests"]
        command += ["--mutation", name or "", "--report", str(report_path), *RAFT_TEST_PATHS]
        proc = subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=RAFT_TESTS_TIMEOUT_S,
            check=False,
        )
        if not report_path.exists():
            raise RuntimeError(
                f"Raft tests under mutation {name!r} did not report (exit {proc.returncode}):\n"
                + proc.stdout[-4000:]
                + proc.stderr[-4000:]
            )
        failed: list[str] = json.loads(report_path.read_text())
    return failed


class _FailureCollector:
    """A pytest plugin that records the ids of failed tests and failed collections."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: object) -> None:
        if getattr(report, "failed", False):
            self.failed.append(str(getattr(report, "nodeid", "?")))

    def pytest_collectreport(self, report: object) -> None:
        if getattr(report, "failed", False):
            self.failed.append("collecting " + str(getattr(report, "nodeid", "?")))


def _run_tests_here(name: str, paths: Sequence[str], report_path: pathlib.Path) -> int:
    """The subprocess side of ``raft_test_failures``: pytest in this process, mutated."""
    import pytest  # a test dependency: only this entry point needs it

    collector = _FailureCollector()
    args = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", *paths]
    with applied(name) if name else contextlib.nullcontext():
        exit_code = pytest.main(args, plugins=[collector])
    if exit_code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(exit_code)  # no report: the caller shows pytest's output
    report_path.write_text(json.dumps(collector.failed))
    return 0


# -- the check: every mutation against the simulator and the Raft tests ---------------------------


@dataclasses.dataclass(frozen=True)
class MutationReport:
    name: str
    simulator: SeedResult | None
    """The first failing seed, or None if the simulator did not catch the mutation."""
    simulator_seeds: int
    """Seeds tried (0: the simulator was not run)."""
    simulator_s: float
    tests: RaftTestsResult | None
    """None: the Raft tests were not run."""
    tests_s: float

    @property
    def caught(self) -> bool:
        return self.simulator is not None or (self.tests is not None and bool(self.tests.failed))

    def simulator_summary(self) -> str:
        if self.simulator_seeds == 0:
            return "not run"
        if self.simulator is None:
            return f"survived {self.simulator_seeds} seeds"
        return f"seed {self.simulator.seed} ({self.simulator.failure_kind})"

    def simulator_failure(self) -> str:
        """The failure's first line (for an error, the exception's line)."""
        if self.simulator is None:
            return ""
        lines = self.simulator.failure.strip().splitlines() or [""]
        return lines[-1] if self.simulator.failure_kind == "error" else lines[0]

    def tests_summary(self, width: int) -> str:
        if self.tests is None:
            return "not run"
        if not self.tests.failed:
            return "none fail"
        names = ", ".join(_short_test_id(t) for t in self.tests.failed)
        text = f"{len(self.tests.failed)}: {names}"
        return text if len(text) <= width else text[: width - 3] + "..."


def _short_test_id(node_id: str) -> str:
    """``figure8.txt`` for a scenario, ``test_units::test_x`` for a unit test."""
    module, _, test = node_id.rpartition("::")
    if test.startswith("test_scenario[") and test.endswith("]"):
        return test[len("test_scenario[") : -1]
    return pathlib.Path(module).stem + "::" + test


def check(
    names: Sequence[str],
    *,
    seeds_max: int = HUNT_SEEDS_MAX,
    simulator: bool = True,
    tests: bool = True,
) -> Iterator[MutationReport]:
    """Checks each mutation against the simulator and the Raft tests, yielding as it goes."""
    baseline = raft_test_failures(None) if tests else []
    for name in names:
        started = time.perf_counter()
        sim_result = hunt(name, seeds_max) if simulator else None
        sim_s = time.perf_counter() - started
        started = time.perf_counter()
        tests_result = raft_tests(name, baseline) if tests else None
        tests_s = time.perf_counter() - started
        yield MutationReport(
            name=name,
            simulator=sim_result,
            simulator_seeds=seeds_max if simulator else 0,
            simulator_s=sim_s,
            tests=tests_result,
            tests_s=tests_s,
        )


_TABLE_FORMAT = "{:<17} {:<28} {:<56} {}"
_TESTS_COLUMN_CHARS = 56


def main(argv: Sequence[str] | None = None) -> int:
    """Prints, per mutation, what catches it; exit status 1 if any mutation survived."""
    parser = argparse.ArgumentParser(
        prog="python -m spindle.sim.mutations",
        description="Apply each mutation of the Raft core and show what in the suite catches it.",
    )
    parser.add_argument("names", nargs="*", help=f"mutations (default: all of {list(MUTATIONS)})")
    parser.add_argument("--seeds", type=int, default=HUNT_SEEDS_MAX, help="simulator seeds")
    parser.add_argument("--no-sim", action="store_true", help="skip the simulator hunt")
    parser.add_argument("--no-tests", action="store_true", help="skip the Raft tests")
    parser.add_argument(
        "--replay", type=int, metavar="SEED", help="run one simulator seed under one mutation"
    )
    parser.add_argument("--trace", action="store_true", help="with --replay: the whole trace")
    parser.add_argument("--run-tests", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mutation", default="", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_tests:  # internal: the subprocess of ``raft_test_failures``
        assert args.report is not None
        return _run_tests_here(args.mutation, args.names, args.report)

    names: list[str] = args.names or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {list(MUTATIONS)}")
    if args.replay is not None:
        if len(names) != 1:
            parser.error("--replay needs exactly one mutation")
        with applied(names[0]):
            result = run_seed(args.replay, FaultConfig.parse("all"), echo_trace=args.trace)
        print(result.report())
        return 0 if result.ok else 1
    started = time.perf_counter()
    print(_TABLE_FORMAT.format("mutation", "simulator", "raft scenario/unit tests", "verdict"))
    reports: list[MutationReport] = []
    for report in check(
        names, seeds_max=args.seeds, simulator=not args.no_sim, tests=not args.no_tests
    ):
        reports.append(report)
        print(
            _TABLE_FORMAT.format(
                report.name,
                report.simulator_summary(),
                report.tests_summary(_TESTS_COLUMN_CHARS),
                "caught" if report.caught else "SURVIVED",
            ),
            flush=True,
        )
    print()
    for report in reports:
        print(
            f"{report.name}: {MUTATIONS[report.name].description}"
            f" (simulator {report.simulator_s:.1f}s, tests {report.tests_s:.1f}s)"
        )
        if report.simulator is not None:
            print(f"  simulator: {report.simulator_failure()[:150]}")
            print(
                f"  replay: python -m spindle.sim.mutations {report.name}"
                f" --replay {report.simulator.seed} [--trace]"
            )
        if report.tests is not None:
            for test_id in report.tests.failed:
                print(f"  fails: {test_id}")
    failing_anyway = reports[0].tests.failing_anyway if reports and reports[0].tests else ()
    if failing_anyway:
        print(f"\nfailing without any mutation (not counted): {', '.join(failing_anyway)}")
    survived = [r.name for r in reports if not r.caught]
    print(
        f"\n{len(reports) - len(survived)} of {len(reports)} mutations caught"
        + (f"; SURVIVED: {', '.join(survived)}" if survived else "")
        + f" ({time.perf_counter() - started:.1f}s)"
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
