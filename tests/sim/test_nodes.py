"""The simulator of whole nodes: the CI seed sweep, determinism, failures it must catch,
and the regression seeds of Spindle bugs it found."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest

from spindle.sim.nodemutations import hunt
from spindle.sim.nodes import NodeSimConfig, NodeWorld, main, node_faults, run_seed
from spindle.sim.scheduler import Trace

#: The CI sweep: seeds with every fault on (the issue asks for >= 50; the 1,000-seed run is
#: recorded in spindle/sim/nodes.py).
CI_SEEDS = 50


@pytest.mark.parametrize("seed", range(CI_SEEDS))
def test_seed_with_every_fault(seed: int) -> None:
    result = run_seed(seed, "all")
    assert result.ok, result.report()
    assert result.ops_ok > 0 and result.strong_ops_checked > 0


@pytest.mark.parametrize("seed", [291, 905])
def test_regression_an_older_term_elected_by_a_delayed_vote(seed: int) -> None:
    """An isolated candidate of term 2 wins with a vote delayed past term 3's first commits:
    legal Raft, which a too-strong leader-completeness check once reported."""
    result = run_seed(seed, "all")
    assert result.ok, result.report()


def test_perfect_world_answers_every_unconditional_request() -> None:
    world = NodeWorld(11, node_faults("none"), NodeSimConfig(fault_phase_s=3, quiet_phase_s=1))
    world.run()
    failed = [op for op in world.recorder.ops if op.status != "ok"]
    assert all(op.error.startswith("Conflict") for op in failed), failed[:3]
    names = {op.name for op in world.recorder.ops if op.status == "ok"}
    assert names == {
        "get",
        "multi_get",
        "scan",
        "put",
        "delete",
        "incr",
        "expire",
        "write_batch",
        "txn",
    }
    levels = {op.level for op in world.recorder.ops}
    assert levels == {"strong", "bounded", "read_your_writes", "eventual", "write"}


def _digest(seed: int) -> tuple[str, str]:
    trace = Trace(lines_max=10_000_000)
    world = NodeWorld(seed, node_faults("all"), NodeSimConfig(), trace)
    world.run()
    history = hashlib.sha256("\n".join(op.describe() for op in world.recorder.ops).encode())
    lines = hashlib.sha256("\n".join(trace.lines()).encode())
    return history.hexdigest(), lines.hexdigest()


def test_a_seed_replays_exactly() -> None:
    assert _digest(5) == _digest(5)
    assert _digest(5) != _digest(6)


def test_a_seed_replays_exactly_in_another_process() -> None:
    """Nothing depends on the process: not string hashing, not the wall clock."""
    code = "from tests.sim.test_nodes import _digest; print(*_digest(5))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout.strip())
    assert outputs == {" ".join(_digest(5))}


@pytest.mark.parametrize(
    ("mutation", "kinds"),
    [
        ("strong-no-fence", {"linearizability"}),
        ("bounded-no-bound", {"promise"}),
        ("ryw-no-wait", {"promise"}),
        ("ack-before-fsync", {"linearizability", "node-error", "invariant", "divergence"}),
        ("corrupt-apply-n3", {"divergence", "linearizability", "promise"}),
        ("raft:vote-stale-log", {"invariant", "linearizability", "node-error"}),
        ("raft:double-vote", {"invariant", "linearizability", "node-error"}),
    ],
)
def test_a_broken_promise_is_caught(mutation: str, kinds: set[str]) -> None:
    result = hunt(mutation, range(12))
    assert result is not None, f"{mutation} survived 12 seeds"
    assert result.failure_kind in kinds, result.report()


def test_a_failure_reports_its_replay_command(capsys: pytest.CaptureFixture[str]) -> None:
    from spindle.sim.nodemutations import applied

    with applied("strong-no-fence"):
        status = main(["--seed", "0", "--faults", "all"])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED (linearizability)" in out
    assert "python -m spindle.sim.nodes --seed 0 --faults" in out
    assert "c" in out.split("--- trace ---")[1]  # the trace around the unplaceable op


def test_regression_joiners_learn_the_founder_of_the_metadata_group() -> None:
    """Seed 1 found it: joiners replayed the metadata log from index 1, which lacks the
    founder's membership, and held voters {2, 3}; they now start from a snapshot."""
    config = dataclasses.replace(NodeSimConfig(), meta_membership_workaround=False)
    result = run_seed(1, "all", config)
    assert result.ok, result.report()


def test_regression_a_read_waiting_for_a_leader_asks_the_new_one() -> None:
    """A strong read on a follower that had no leader (or asked one that then crashed)
    waited out its 2 s and failed, though a new leader was elected within a second. Now
    the replica asks the new leader again. Found by a flaky cluster test; in these seeds
    124 of 5,052 strong reads failed so before, none after."""
    reads = failures = 0
    for seed in range(6):
        world = NodeWorld(seed, node_faults("crash"), NodeSimConfig())
        world.run()
        for op in world.recorder.ops:
            if op.level == "strong" and op.name in ("get", "multi_get", "scan"):
                reads += 1
                failures += op.status != "ok" and "no leader confirmed" in (op.error or "")
    assert reads > 1_000
    assert failures <= reads * 0.005, (failures, reads)
