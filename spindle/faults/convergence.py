"""Have the replicas converged? Every node's /status lists the Raft groups it hosts with
their applied and commit indexes and the leader it knows; the cluster has converged when,
for every group, every node hosts a replica and all replicas agree on all three."""

from __future__ import annotations

import contextlib
import http.client
import time
from dataclasses import dataclass
from typing import Any

from spindle.localcluster import LocalCluster

CONVERGE_POLL_S = 0.25
CONVERGE_TIMEOUT_S = 45.0


@dataclass
class Convergence:
    ok: bool
    seconds: float
    groups: int
    detail: str = ""


def replica_view(statuses: dict[int, dict[str, Any]]) -> dict[int, dict[int, tuple[int, ...]]]:
    """Group id -> node id -> (applied, commit, leader id) from each node's /status."""
    view: dict[int, dict[int, tuple[int, ...]]] = {}
    for node_id, status in statuses.items():
        for group in status.get("cluster", {}).get("groups", []):
            view.setdefault(int(group["group_id"]), {})[node_id] = (
                int(group["applied"]),
                int(group["commit"]),
                int(group.get("leader_id") or 0),
            )
    return view


def divergence(view: dict[int, dict[int, tuple[int, ...]]], node_ids: list[int]) -> list[str]:
    """What keeps the replicas from agreeing (empty: converged)."""
    problems = []
    for group_id, replicas in sorted(view.items()):
        missing = [node_id for node_id in node_ids if node_id not in replicas]
        if missing:
            problems.append(f"group {group_id}: no replica reported by nodes {missing}")
            continue
        applied = {replica[0] for replica in replicas.values()}
        commits = {replica[1] for replica in replicas.values()}
        leaders = {replica[2] for replica in replicas.values()}
        if len(applied) > 1 or len(commits) > 1 or len(leaders) > 1 or 0 in leaders:
            shown = ", ".join(
                f"node{n}: applied {a} commit {c} leader {lead}"
                for n, (a, c, lead) in sorted(replicas.items())
            )
            problems.append(f"group {group_id}: {shown}")
    return problems


def wait_converged(cluster: LocalCluster, timeout_s: float = CONVERGE_TIMEOUT_S) -> Convergence:
    """Poll every node's /status until all replicas of every group agree."""
    start = time.monotonic()
    problems = ["no status yet"]
    view: dict[int, dict[int, tuple[int, ...]]] = {}
    while time.monotonic() - start < timeout_s:
        statuses: dict[int, dict[str, Any]] = {}
        for node_id in cluster.node_ids:
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                statuses[node_id] = cluster.status(node_id)
        view = replica_view(statuses)
        problems = divergence(view, cluster.node_ids) if len(statuses) == cluster.size else []
        if len(statuses) < cluster.size:
            problems = [f"nodes answering /status: {sorted(statuses)}"]
        if not problems:
            return Convergence(True, time.monotonic() - start, len(view))
        time.sleep(CONVERGE_POLL_S)
    return Convergence(False, time.monotonic() - start, len(view), "; ".join(problems))


__all__ = [
    "CONVERGE_TIMEOUT_S",
    "Convergence",
    "divergence",
    "replica_view",
    "wait_converged",
]
