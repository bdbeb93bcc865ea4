"""Mutation check: break the Raft core on purpose and show the simulator notices.

Each mutation patches one method of the core (``spindle.kv.raft``) from the outside, for the
duration of a ``with`` block, so the core's code is never edited. ``hunt(name)`` runs seeds
with all faults until one fails. A mutation that survives many seeds means either the core's
structure hides it or the simulator is blind to it; both are worth knowing.

Run ``python -m spindle.sim.mutations`` for a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import msgspec

from spindle.kv.raft import NONE, Message, MessageType, Role
from spindle.kv.raft.log import RaftLog
from spindle.kv.raft.raft import Raft
from spindle.sim.cluster import SimConfig
from spindle.sim.faults import FaultConfig
from spindle.sim.runner import SeedResult, run_seed

__all__ = ["MUTATIONS", "Mutation", "applied", "hunt", "main"]

#: Seeds tried per mutation before declaring it survived.
HUNT_SEEDS_MAX = 60


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


def main(argv: Sequence[str] | None = None) -> int:
    """Prints, for each mutation, the first seed that caught it; 1 if any survived."""
    names = list(argv) if argv else list(MUTATIONS)
    survived = 0
    for name in names:
        started = time.perf_counter()
        result = hunt(name)
        elapsed_s = time.perf_counter() - started
        if result is None:
            survived += 1
            print(f"{name:<18} SURVIVED {HUNT_SEEDS_MAX} seeds ({elapsed_s:.1f}s)")
        else:
            first_line = result.failure.strip().splitlines()[0]
            if result.failure_kind == "error":
                first_line = result.failure.strip().splitlines()[-1]
            print(
                f"{name:<18} caught at seed {result.seed} by {result.failure_kind} "
                f"({elapsed_s:.1f}s): {first_line[:110]}"
            )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
