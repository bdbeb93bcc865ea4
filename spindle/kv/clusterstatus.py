"""The cluster as `spindle status` shows it: every node's health, every shard's leader and
replica lag, gathered by asking each node for its own status.

A node knows the members from the catalog; each member reports its process id, uptime and
the Raft groups it hosts (role, term, commit, applied). A member that does not answer in
`NODE_STATUS_TIMEOUT_S` is shown as down.
"""

from __future__ import annotations

import asyncio
from typing import Any

from spindle.kv.client import AsyncClient
from spindle.kv.errors import SpindleError

NODE_STATUS_TIMEOUT_S = 2.0


async def _node_status(address: str, tenant: str | None, token: str | None) -> dict[str, Any] | str:
    try:
        async with AsyncClient(
            address, timeout_s=NODE_STATUS_TIMEOUT_S, retries=0, tenant=tenant, token=token
        ) as client:
            return await client.status()
    except (SpindleError, OSError) as error:
        return str(error)


async def cluster_view(
    address: str, *, tenant: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Nodes (id, addresses, pid, health) and shards (replicas, leader, lag) as seen by
    asking the node at `address`, then every member it knows."""
    seed = await _node_status(address, tenant, token)
    if isinstance(seed, str):
        raise SpindleError(f"cannot get status from {address}: {seed}")
    members = sorted(seed.get("cluster", {}).get("nodes", []), key=lambda m: int(m["node_id"]))
    addresses = {
        m["node_id"]: f"{m['host']}:{m['port']}" for m in members if m["node_id"] != seed["node_id"]
    }
    found = await asyncio.gather(
        *(_node_status(addr, tenant, token) for addr in addresses.values())
    )
    statuses: dict[int, dict[str, Any] | str] = {seed["node_id"]: seed}
    statuses.update(zip(addresses, found, strict=True))
    nodes = []
    for member in members:
        status = statuses.get(member["node_id"])
        up = isinstance(status, dict)
        nodes.append(
            {
                **member,
                "health": "up" if up else "down",
                "error": None if up else status,
                "pid": status.get("pid") if isinstance(status, dict) else None,
                "uptime_s": status.get("uptime_s") if isinstance(status, dict) else None,
                "ready": status.get("cluster", {}).get("ready")
                if isinstance(status, dict)
                else None,
            }
        )
    groups: dict[int, dict[str, Any]] = {}
    for node_id, status in statuses.items():
        if not isinstance(status, dict):
            continue
        for group in status.get("cluster", {}).get("groups", []):
            entry = groups.setdefault(
                group["group_id"],
                {"group_id": group["group_id"], "leader_id": 0, "term": 0, "replicas": {}},
            )
            entry["replicas"][node_id] = {
                "role": group["role"],
                "commit": group["commit"],
                "applied": group["applied"],
            }
            if group["term"] >= entry["term"] and group["leader_id"]:
                entry["term"] = group["term"]
                entry["leader_id"] = group["leader_id"]
    for entry in groups.values():
        replicas = entry["replicas"]
        newest = max((r["applied"] for r in replicas.values()), default=0)
        for replica in replicas.values():
            replica["lag"] = newest - replica["applied"]
        entry["max_lag"] = max((r["lag"] for r in replicas.values()), default=0)
    shard_names: dict[int, str] = {0: "(metadata)"}
    for keyspace in seed.get("keyspaces", []):
        for shard in keyspace.get("shard_list", []):
            shard_names[shard["shard_id"]] = f"{keyspace['tenant']}/{keyspace['name']}"
    shards = [
        {**groups[group_id], "keyspace": shard_names.get(group_id, "?")}
        for group_id in sorted(groups)
    ]
    return {
        "queried": address,
        "seed_node_id": seed["node_id"],
        "replication_factor": seed.get("cluster", {}).get("replication_factor"),
        "nodes": nodes,
        "shards": shards,
        "node_status": {str(k): v for k, v in statuses.items()},
    }
