"""Each mutation of the Raft core (spindle/sim/mutations.py) must be caught by the suite.

Every mutation names what catches it: the simulator (within a few seeds) or a Raft scenario
(tests/kv/raft/testdata) that fails under it with the expected wrong output. The full table,
with the long simulator hunt and the Raft unit tests, is ``python -m spindle.sim.mutations``.
"""

from __future__ import annotations

import functools
import pathlib

import pytest

from spindle.sim.faults import FaultConfig
from spindle.sim.mutations import MUTATIONS, applied, hunt
from spindle.sim.runner import run_seed
from tests.kv.raft.datadriven import run_file

#: Seeds tried per mutation the simulator is expected to find (each is found within a few).
SEEDS_PER_MUTATION = 20

TESTDATA = pathlib.Path(__file__).parents[1] / "kv" / "raft" / "testdata"

#: Mutations the simulator finds within ``SEEDS_PER_MUTATION`` seeds.
SIMULATOR_FINDS = frozenset({"double-vote", "reject-as-ack", "commit-backwards", "vote-stale-log"})

#: Mutations a scenario catches: (scenario file, a line of the wrong output it then shows).
#: The simulator misses these four; spindle/sim/mutations.py says why.
SCENARIO_FINDS: dict[str, tuple[str, str]] = {
    # A delayed term-1 ack completes a quorum for 3/5, held by 2 of 5 nodes.
    "stale-ack": ("stale_append_ack.txt", "CommittedEntries: [3/5 'x']"),
    # A deposed leader answers read r2 with index 3; "w" committed at index 5 before r2.
    "stale-read-ack": ("stale_read_round_ack.txt", "ReadState index=3 ctx=r2"),
    # Figure 8: the old-term entry at index 3 is committed by counting replicas.
    "commit-old-term": ("figure8.txt", "1: LEADER term=3 lead=1 vote=1 commit=3"),
    # A leader cut off since tick 1 answers a lease read at tick 12 with index 3, although
    # the others elected 2 at tick 11 and committed "w" at index 5.
    "lease-forever": ("lease_deposed_leader_read.txt", "ReadState index=3 ctx=r"),
}


@functools.cache
def _scenario_passes_unmutated(file_name: str) -> bool:
    try:
        run_file(TESTDATA / file_name)
    except AssertionError:
        return False
    return True


def test_every_mutation_names_what_catches_it() -> None:
    assert set(MUTATIONS) == SIMULATOR_FINDS | set(SCENARIO_FINDS)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_is_caught(name: str) -> None:
    if name in SIMULATOR_FINDS:
        result = hunt(name, seeds_max=SEEDS_PER_MUTATION)
        assert result is not None, f"mutation {name!r} survived {SEEDS_PER_MUTATION} seeds"
        assert result.failure_kind in ("invariant", "linearizability", "error")
    if name in SCENARIO_FINDS:
        file_name, wrong_output = SCENARIO_FINDS[name]
        assert _scenario_passes_unmutated(file_name), f"{file_name} fails without a mutation"
        with applied(name), pytest.raises(AssertionError) as failure:
            run_file(TESTDATA / file_name)
        actual = str(failure.value).split("--- actual", 1)[-1]
        assert wrong_output in actual, f"{file_name} failed otherwise:\n{failure.value}"


def test_mutations_are_undone() -> None:
    with applied("double-vote"):
        pass
    assert run_seed(1, FaultConfig.parse("all")).ok
    assert _scenario_passes_unmutated("figure8.txt")
