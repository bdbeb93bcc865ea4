"""The nemesis: one fault at a time against a `LocalCluster`, then a quiet spell, until
its time is up; every fault is logged with its start and end.

Process faults (any cluster):
- `kill`: SIGKILL a node, restart it a few seconds later (it recovers from its disk);
- `kill-leader`: the same to the leader of a random data shard (found from /status);
- `pause` / `pause-leader`: SIGSTOP, then SIGCONT (a hung machine that comes back and
  must notice that it is no longer the leader).

Network faults (a `NetnsCluster`, see spindle.faults.netns):
- `isolate` / `isolate-leader`: the node loses its peers both ways, clients still reach it;
- `cut`: two nodes lose each other (both ways), each still reaches the third;
- `one-way`: one node's packets to another are lost, the other way works;
- `unplug`: the node's link goes down (nothing reaches it).

Faults that take one node out (all but `cut` and `one-way`) record it as `down`: those
are the windows in which the cluster must keep serving. After healing a fault the nemesis
waits until the replicas have converged again (up to `recover_timeout_s`) and records how
long that took, so each fault hits a recovered cluster and "one node out" means exactly
that. Only nodes in `targets` (default: all) are taken out.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spindle.faults.convergence import wait_converged
from spindle.faults.netns import NetnsNetwork
from spindle.localcluster import LocalCluster

PROCESS_FAULTS = ("kill", "kill-leader", "pause", "pause-leader")
NETWORK_FAULTS = ("isolate", "isolate-leader", "cut", "one-way", "unplug")
ALL_FAULTS = PROCESS_FAULTS + NETWORK_FAULTS
META_GROUP_ID = 0


@dataclass
class FaultRecord:
    kind: str
    nodes: tuple[int, ...]
    """The node faulted (for `cut`/`one-way`: the two ends, `one-way` src first)."""
    start_s: float
    end_s: float | None = None
    """When the fault was healed (a killed node: once it answers /health again)."""
    down: int | None = None
    """The node out of service during the fault (None: all nodes up, links cut)."""
    detail: str = ""
    recovered_s: float | None = None
    """Seconds from the end of the fault until the replicas converged (None: they did
    not within the nemesis's `recover_timeout_s`, or it was not waited for)."""
    unrecovered: str = ""
    """What still differed when the wait for recovery gave up."""

    def describe(self, origin_s: float = 0.0) -> str:
        end = "..." if self.end_s is None else f"{self.end_s - origin_s:.1f}"
        where = "->".join(map(str, self.nodes)) if self.kind == "one-way" else self.nodes
        extra = f" ({self.detail})" if self.detail else ""
        if self.recovered_s is not None:
            extra += f", converged {self.recovered_s:.1f} s later"
        elif self.unrecovered:
            extra += f", NOT converged: {self.unrecovered}"
        return f"{self.start_s - origin_s:6.1f}-{end:>6} s {self.kind} {where}{extra}"


@dataclass
class NemesisConfig:
    kinds: tuple[str, ...] = PROCESS_FAULTS
    targets: tuple[int, ...] = ()
    """Nodes that faults may take out (empty: every node)."""
    fault_s: tuple[float, float] = (2.5, 4.0)
    """How long one fault lasts: uniform in this range (longer than an election)."""
    quiet_s: tuple[float, float] = (0.5, 1.0)
    """Pause between two faults, after the replicas converged again."""
    recover_timeout_s: float = 20.0
    """How long to wait for convergence after a fault before going on regardless."""


def group_leaders(statuses: dict[int, dict[str, Any]]) -> dict[int, int]:
    """Group id -> leader id, from the /status of some nodes (the highest term wins)."""
    best: dict[int, tuple[int, int]] = {}
    for status in statuses.values():
        for group in status.get("cluster", {}).get("groups", []):
            leader, term = int(group.get("leader_id") or 0), int(group.get("term") or 0)
            if leader and term >= best.get(group["group_id"], (0, -1))[1]:
                best[group["group_id"]] = (leader, term)
    return {group_id: leader for group_id, (leader, _) in best.items()}


class Nemesis:
    def __init__(
        self,
        cluster: LocalCluster,
        config: NemesisConfig,
        *,
        seed: int = 0,
        network: NetnsNetwork | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        wants_network = [kind for kind in config.kinds if kind in NETWORK_FAULTS]
        if wants_network and network is None:
            raise ValueError(f"faults {wants_network} need a network (NetnsCluster)")
        unknown = [kind for kind in config.kinds if kind not in ALL_FAULTS]
        if unknown or not config.kinds:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(ALL_FAULTS)}")
        if not set(config.targets) <= set(cluster.node_ids):
            raise ValueError(f"targets {config.targets} not among nodes {cluster.node_ids}")
        self.cluster = cluster
        self.config = config
        self.network = network
        self.rng = random.Random(seed)
        self.clock = clock
        self.faults: list[FaultRecord] = []
        self._paused: set[int] = set()
        self._killed: set[int] = set()

    async def run(self, duration_s: float) -> None:
        """Inject faults for `duration_s` (a fault in progress at the end still runs its
        course, then is healed)."""
        end_s = self.clock() + duration_s
        while self.clock() < end_s:
            kind = self.rng.choice(self.config.kinds)
            await self._inject(kind)
            await self._recover(self.faults[-1])
            await asyncio.sleep(self.rng.uniform(*self.config.quiet_s))

    async def _recover(self, fault: FaultRecord) -> None:
        convergence = await asyncio.to_thread(
            wait_converged, self.cluster, self.config.recover_timeout_s
        )
        if convergence.ok:
            fault.recovered_s = self.clock() - (fault.end_s or self.clock())
        else:
            fault.unrecovered = convergence.detail

    async def heal(self) -> None:
        """Undo every fault still in effect: heal the network, resume, restart."""
        if self.network is not None:
            await asyncio.to_thread(self.network.heal)
        for node_id in sorted(self._paused):
            await asyncio.to_thread(self.cluster.resume, node_id)
        self._paused.clear()
        for node_id in sorted(self._killed):
            await asyncio.to_thread(self.cluster.restart, node_id)
        self._killed.clear()
        for fault in self.faults:
            if fault.end_s is None:
                fault.end_s = self.clock()

    # -- one fault ----------------------------------------------------------------------

    async def _inject(self, kind: str) -> None:
        hold_s = self.rng.uniform(*self.config.fault_s)
        if kind in ("cut", "one-way"):
            a, b = self.rng.sample(self.cluster.node_ids, 2)
            record = self._begin(kind, (a, b), None)
            assert self.network is not None
            if kind == "cut":
                await asyncio.to_thread(self.network.cut_both, a, b)
            else:
                await asyncio.to_thread(self.network.cut, a, b)
            await asyncio.sleep(hold_s)
            await asyncio.to_thread(self.network.heal)
            record.end_s = self.clock()
            return
        node_id, detail = await self._target(kind)
        record = self._begin(kind, (node_id,), node_id, detail)
        if kind.startswith("kill"):
            self._killed.add(node_id)
            await asyncio.to_thread(self.cluster.kill, node_id)
            await asyncio.sleep(hold_s)
            await asyncio.to_thread(self.cluster.restart, node_id)
            self._killed.discard(node_id)
        elif kind.startswith("pause"):
            self._paused.add(node_id)
            await asyncio.to_thread(self.cluster.pause, node_id)
            await asyncio.sleep(hold_s)
            await asyncio.to_thread(self.cluster.resume, node_id)
            self._paused.discard(node_id)
        else:
            network = self.network
            assert network is not None
            if kind == "unplug":
                await asyncio.to_thread(network.unplug, node_id)
            else:
                await asyncio.to_thread(network.isolate, node_id)
            await asyncio.sleep(hold_s)
            await asyncio.to_thread(network.heal)
        record.end_s = self.clock()

    def _begin(
        self, kind: str, nodes: tuple[int, ...], down: int | None, detail: str = ""
    ) -> FaultRecord:
        record = FaultRecord(kind, nodes, self.clock(), down=down, detail=detail)
        self.faults.append(record)
        return record

    async def _target(self, kind: str) -> tuple[int, str]:
        """The node to take out: a random target, or for `*-leader` the leader of a
        random data shard that is a target (else a random target)."""
        targets = list(self.config.targets or self.cluster.node_ids)
        if not kind.endswith("-leader"):
            return self.rng.choice(targets), ""
        statuses = await asyncio.to_thread(self._statuses)
        leaders = {
            group_id: leader
            for group_id, leader in group_leaders(statuses).items()
            if group_id != META_GROUP_ID and leader in targets
        }
        if not leaders:
            return self.rng.choice(targets), "no leader among the targets"
        group_id = self.rng.choice(sorted(leaders))
        return leaders[group_id], f"leader of group {group_id}"

    def _statuses(self) -> dict[int, dict[str, Any]]:
        statuses: dict[int, dict[str, Any]] = {}
        for node_id in self.cluster.node_ids:
            if node_id in self._killed or node_id in self._paused:
                continue
            try:
                statuses[node_id] = self.cluster.status(node_id)
            except (OSError, ValueError, http.client.HTTPException):
                continue
        return statuses


__all__ = [
    "ALL_FAULTS",
    "NETWORK_FAULTS",
    "PROCESS_FAULTS",
    "FaultRecord",
    "Nemesis",
    "NemesisConfig",
    "group_leaders",
]
