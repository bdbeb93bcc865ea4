"""Mutation check of the node simulator: break a promise on purpose, see a seed catch it.

Each mutation patches the node code (or the Raft core) from the outside for the duration
of a ``with applied(name):`` block; nothing in spindle/kv is edited. ``hunt(name)`` runs
seeds of the node simulator (spindle/sim/nodes.py) until one fails, showing that the
checks can fail, and on what. ``python -m spindle.sim.nodemutations`` prints a table.

The node-level mutations break each read level's promise, durability and replication:

- strong-no-fence: a replica serves a strong read from its own state, no lease, no
  ReadIndex (a follower answers stale data);
- bounded-no-bound: a bounded-staleness read is served however stale the replica is;
- ryw-no-wait: a read-your-writes read is served before the replica applied min_version;
- ack-before-fsync: the Ready loop sends and applies before its fsync (a crash loses
  acknowledged writes);
- corrupt-apply-n3: node 3's replicas of data shards apply every tenth put with another
  value (replicas diverge silently).

The Raft-core mutations of spindle/sim/mutations.py apply here too (``raft:<name>``).

Measured (``--seeds 40``): every node-level mutation is caught within 5 seeds (strong,
bounded and read-your-writes by the history checks, corrupt-apply by linearizability or
replica comparison, ack-before-fsync by the Raft core's own assertions after a crash), and
so are raft:double-vote (election safety), raft:vote-stale-log (leader completeness),
raft:reject-as-ack and raft:commit-backwards (core assertions). raft:stale-ack,
raft:stale-read-ack, raft:commit-old-term and raft:lease-forever survive 100 seeds, as they
survive the bare-Raft simulator: each needs a precise interleaving (see
spindle/sim/mutations.py) that the Raft scenario tests pin down instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import msgspec

from spindle.kv import protocol as p
from spindle.kv.commands import Batch, PutOp, decode_entry, encode_entry
from spindle.kv.multiraft import RaftHost
from spindle.kv.node import Node
from spindle.kv.shard import Shard, ShardApplier
from spindle.sim import mutations as raft_mutations
from spindle.sim.nodedisk import SimDisk
from spindle.sim.nodes import NodeSeedResult, NodeSimConfig, run_seed

__all__ = ["NODE_MUTATIONS", "applied", "hunt", "main"]

#: Seeds tried per mutation before it is declared to have survived.
HUNT_SEEDS_MAX = 40


def _patch(stack: contextlib.ExitStack, owner: type, attribute: str, value: object) -> None:
    original = getattr(owner, attribute)
    setattr(owner, attribute, value)
    stack.callback(setattr, owner, attribute, original)


def _unfenced(level: str) -> Callable[[contextlib.ExitStack], None]:
    """Reads at ``level`` are served at once from the replica's own state."""

    def install(stack: contextlib.ExitStack) -> None:
        fence, readable = Node._fence, Node._readable_now

        def no_fence(self: Node, shard: Shard, request: p.ReadRequest) -> Awaitable[None] | None:
            if request.consistency == level:
                return None
            return fence(self, shard, request)

        def always(self: Node, shard: Shard, request: p.ReadRequest) -> bool:
            return request.consistency == level or readable(self, shard, request)

        _patch(stack, Node, "_fence", no_fence)
        _patch(stack, Node, "_readable_now", always)

    return install


def _ack_before_fsync(stack: contextlib.ExitStack) -> None:
    async def run_pass(self: RaftHost) -> None:
        readies = self.collect()
        if not readies:
            return
        self.passes += 1
        self.send_early(readies)
        self.persist(readies)
        self.send_and_apply(readies)  # no wait for the fsync: acks before durability
        self.committer.after_durable(None)

    _patch(stack, RaftHost, "run_pass", run_pass)


def _corrupt_apply_on_node_3(stack: contextlib.ExitStack) -> None:
    original = ShardApplier.apply_entry
    counter = [0]

    def apply_entry(self: ShardApplier, index: int, data: bytes) -> Any:
        engine = getattr(self.state.engine, "inner", None)  # the node's BatchingEngine
        disk = getattr(engine, "disk", None)
        if isinstance(disk, SimDisk) and disk.node_id == 3:
            entry = decode_entry(data)
            command = entry.command
            if isinstance(command, Batch) and isinstance(command.ops[0], PutOp):
                counter[0] += 1
                if counter[0] % 10 == 0:
                    put = msgspec.structs.replace(command.ops[0], value=b"corrupted")
                    command = msgspec.structs.replace(command, ops=[put, *command.ops[1:]])
                    data = encode_entry(msgspec.structs.replace(entry, command=command))
        return original(self, index, data)

    _patch(stack, ShardApplier, "apply_entry", apply_entry)


@dataclasses.dataclass(frozen=True)
class NodeMutation:
    name: str
    description: str
    install: Callable[[contextlib.ExitStack], None]


NODE_MUTATIONS: dict[str, NodeMutation] = {
    m.name: m
    for m in (
        NodeMutation(
            "strong-no-fence",
            "strong reads served from the local state with no lease or ReadIndex",
            _unfenced("strong"),
        ),
        NodeMutation(
            "bounded-no-bound",
            "bounded-staleness reads served however stale the replica",
            _unfenced("bounded"),
        ),
        NodeMutation(
            "ryw-no-wait",
            "read-your-writes reads served before min_version is applied",
            _unfenced("read_your_writes"),
        ),
        NodeMutation(
            "ack-before-fsync",
            "the Ready loop sends and applies before its fsync completes",
            _ack_before_fsync,
        ),
        NodeMutation(
            "corrupt-apply-n3",
            "node 3's data replicas apply every tenth put with another value",
            _corrupt_apply_on_node_3,
        ),
    )
}
for _name, _mutation in raft_mutations.MUTATIONS.items():
    NODE_MUTATIONS[f"raft:{_name}"] = NodeMutation(
        f"raft:{_name}", _mutation.description, _mutation.install
    )


@contextlib.contextmanager
def applied(name: str) -> Iterator[None]:
    """The mutation ``name`` is in effect inside the block."""
    with contextlib.ExitStack() as stack:
        NODE_MUTATIONS[name].install(stack)
        yield


def hunt(
    name: str,
    seeds: Sequence[int] = range(HUNT_SEEDS_MAX),
    faults: str = "all",
    config: NodeSimConfig | None = None,
) -> NodeSeedResult | None:
    """The first seed's result that fails under mutation ``name``, or None if none does."""
    with applied(name):
        for seed in seeds:
            result = run_seed(seed, faults, config)
            if not result.ok:
                return result
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spindle.sim.nodemutations")
    parser.add_argument("names", nargs="*", help="mutations (default: all)")
    parser.add_argument("--seeds", type=int, default=HUNT_SEEDS_MAX)
    parser.add_argument("--faults", default="all")
    args = parser.parse_args(argv)
    names = args.names or list(NODE_MUTATIONS)
    survivors = 0
    for name in names:
        started = time.perf_counter()
        result = hunt(name, range(args.seeds), args.faults)
        wall_s = time.perf_counter() - started
        if result is None:
            survivors += 1
            print(f"{name:<24} SURVIVED {args.seeds} seeds ({wall_s:.1f}s)")
        else:
            first_line = result.failure.strip().splitlines()[0] if result.failure else ""
            print(
                f"{name:<24} caught by seed {result.seed} ({result.failure_kind}: "
                f"{first_line[:90]}) ({wall_s:.1f}s)"
            )
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
