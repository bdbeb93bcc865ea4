"""One fault run, start to verdict: workload + nemesis, heal, convergence, checks.

    with fault_cluster(root, netns_on=False) as (cluster, network):
        report = asyncio.run(run_faults(cluster, FaultRunConfig(fault_seconds=15)))
    assert not report.problems(), report.summary()

The run: clients start (spindle.faults.workload); after a warm-up the nemesis injects one
fault after another for `fault_seconds` (spindle.faults.nemesis); then every fault is
healed, the clients run a little longer and stop. Then the checks:

1. Convergence: every node's /status, polled until every Raft group reports the same
   applied and commit index, and the same leader, on every node.
2. Final reads: every shared key read at strong consistency through every node (added to
   the history), and every key (shared and unique) read at eventual consistency from every
   node, which serves its own replica: the replicas must hold identical items.
3. Linearizability of the history, key by key (an undecided key is a problem, not a pass).
4. No acknowledged write lost: every acknowledged unique key reads back, at strong
   consistency through every node, with the value written.
5. Availability: in every window in which one node was out (killed, paused, isolated,
   unplugged) for at least `window_min_s`, clients of the other nodes completed reads and
   writes.
6. Recovery: after each fault the replicas converged within the nemesis's
   `recover_timeout_s`; no node logged a failed Raft pass.

`python -m spindle.faults --seconds 240 [--netns]` runs it by hand and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spindle.faults import netns
from spindle.faults.convergence import CONVERGE_TIMEOUT_S, Convergence, wait_converged
from spindle.faults.history import LinearizabilityReport, Recorder, check_history
from spindle.faults.nemesis import (
    ALL_FAULTS,
    PROCESS_FAULTS,
    FaultRecord,
    Nemesis,
    NemesisConfig,
)
from spindle.faults.netns import NetnsCluster, NetnsNetwork
from spindle.faults.workload import PinnedClient, Workload, WorkloadConfig
from spindle.kv.errors import SpindleError
from spindle.kv.values import Stored
from spindle.localcluster import (
    LocalCluster,
    LocalClusterConfig,
    NodePorts,
    every_node,
    node_reports_ready,
)
from spindle.sim.linearizability import MAX_SEARCH_STEPS

READ_CHUNK_KEYS = 500
"""Keys per multi_get of the final reads (the limit is 1,000)."""
FINAL_READ_TIMEOUT_S = 5.0
FINAL_READS_TIMEOUT_S = 60.0
FINAL_READ_ATTEMPTS = 5
SHOWN_MAX = 10
ERROR_SHOWN_CHARS = 90


@dataclass
class FaultRunConfig:
    fault_seconds: float = 15.0
    seed: int = 0
    nemesis: NemesisConfig = field(default_factory=NemesisConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    warmup_s: float = 0.5
    settle_s: float = 1.0
    """Clients keep running this long after the last fault is healed."""
    converge_timeout_s: float = CONVERGE_TIMEOUT_S
    window_min_s: float = 2.0
    """Shorter single-node-down windows are not judged for availability."""
    max_steps_per_key: int = MAX_SEARCH_STEPS


# -- the report ----------------------------------------------------------------------------


@dataclass
class WindowStats:
    fault: FaultRecord
    ok_reads: int = 0
    ok_writes: int = 0
    failed: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.ok_reads + self.ok_writes + self.failed + self.unknown


@dataclass
class FaultReport:
    config: FaultRunConfig
    origin_s: float
    duration_s: float = 0.0
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: list[FaultRecord] = field(default_factory=list)
    linearizability: LinearizabilityReport = field(default_factory=LinearizabilityReport)
    keys: int = 0
    acknowledged: int = 0
    unknown_acks: int = 0
    unknown_acks_found: int = 0
    lost: list[str] = field(default_factory=list)
    convergence: Convergence = field(default_factory=lambda: Convergence(False, 0.0, 0))
    divergent: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    windows: list[WindowStats] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    node_log_problems: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.linearizability.ok:
            found.append("linearizability: " + self.linearizability.details())
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged writes lost: {self.lost[:SHOWN_MAX]}")
        if not self.convergence.ok:
            found.append(
                f"replicas did not converge in {self.convergence.seconds:.0f} s: "
                f"{self.convergence.detail}"
            )
        if self.divergent:
            found.append(
                f"{len(self.divergent)} keys differ between replicas: {self.divergent[:SHOWN_MAX]}"
            )
        if self.read_errors:
            found.append(f"final reads failed: {self.read_errors[:SHOWN_MAX]}")
        for window in self.windows:
            if window.ok_reads == 0 or window.ok_writes == 0:
                found.append(
                    "not serving with one node out: "
                    f"{window.fault.describe(self.origin_s)}: {window.ok_reads} reads and "
                    f"{window.ok_writes} writes succeeded, {window.failed} failed, "
                    f"{window.unknown} unknown"
                )
        if self.unexpected:
            found.append(f"unexpected answers: {self.unexpected[:SHOWN_MAX]}")
        found.extend(self.node_log_problems)
        for fault in self.faults:
            if fault.unrecovered:
                found.append(
                    f"no convergence within {self.config.nemesis.recover_timeout_s:g} s "
                    f"after: {fault.describe(self.origin_s)}"
                )
        return found

    def summary(self) -> str:
        by_outcome: Counter[str] = Counter()
        by_f: dict[str, Counter[str]] = {}
        for (f, outcome), count in self.ops.items():
            by_outcome[outcome] += count
            by_f.setdefault(f, Counter())[outcome] += count
        total = sum(by_outcome.values())
        kinds = Counter(fault.kind for fault in self.faults)
        lines = [
            f"fault run: {self.duration_s:.0f} s, seed {self.config.seed}, "
            f"{self.config.fault_seconds:g} s of faults",
            f"ops: {total} (ok {by_outcome['ok']}, failed {by_outcome['fail']}, "
            f"unknown {by_outcome['info']}); "
            + ", ".join(f"{f} {c['ok']}/{c['fail']}/{c['info']}" for f, c in sorted(by_f.items()))
            + " (ok/failed/unknown)",
            f"faults: {len(self.faults)} ("
            + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
            + ")",
            f"linearizability: {self.linearizability.summary()}",
            f"acknowledged unique writes: {self.acknowledged}, lost {len(self.lost)}; "
            f"unknown outcome {self.unknown_acks} (found afterwards: "
            f"{self.unknown_acks_found})",
            f"convergence: {'ok' if self.convergence.ok else 'FAILED'} in "
            f"{self.convergence.seconds:.1f} s ({self.convergence.groups} groups); "
            f"{self.keys} keys compared on every replica, {len(self.divergent)} differ",
        ]
        recoveries = sorted(f.recovered_s for f in self.faults if f.recovered_s is not None)
        if recoveries:
            lines.append(
                f"convergence after each fault: median {recoveries[len(recoveries) // 2]:.1f} s, "
                f"max {recoveries[-1]:.1f} s; "
                f"{sum(1 for f in self.faults if f.unrecovered)} faults never converged"
            )
        judged = self.windows
        if judged:
            ok = sum(w.ok_reads + w.ok_writes for w in judged)
            total_ops = sum(w.total for w in judged)
            rate = 0.0 if total_ops == 0 else 1 - ok / total_ops
            lines.append(
                f"one node out: {len(judged)} windows, {ok} ok ops of {total_ops} "
                f"(error rate {rate:.1%}); min per window: reads "
                f"{min(w.ok_reads for w in judged)}, writes {min(w.ok_writes for w in judged)}"
            )
        if self.errors:
            lines.append(
                "errors: "
                + "; ".join(f"{count}x {text}" for text, count in self.errors.most_common(5))
            )
        lines.append("fault log:")
        lines.extend("  " + fault.describe(self.origin_s) for fault in self.faults)
        problems = self.problems()
        lines.append("PROBLEMS:" if problems else "no problems found")
        lines.extend("  " + problem for problem in problems)
        return "\n".join(lines)


# -- node logs -----------------------------------------------------------------------------

FAILED_PASS_LOG = "raft ready loop pass failed"
"""What a node logs when a pass of its Raft loop raised (it then stops serving)."""


def failed_passes(cluster: LocalCluster) -> list[str]:
    """Nodes whose log shows a failed Raft pass."""
    found = []
    for node_id in cluster.node_ids:
        try:
            log = cluster.log_path(node_id).read_text(errors="replace")
        except OSError:
            continue
        if FAILED_PASS_LOG in log:
            found.append(f"node{node_id}: {FAILED_PASS_LOG} (see {cluster.log_path(node_id)})")
    return found


# -- the run -------------------------------------------------------------------------------


def client_credentials(cluster: LocalCluster) -> tuple[str | None, str | None]:
    """Loopback clients act as the default tenant; a client outside loopback (a
    `NetnsCluster`) needs the default tenant's token, kept by node 1 when it bootstrapped."""
    if not isinstance(cluster, NetnsCluster):
        return None, None
    path = cluster.data_dir(1) / "credentials.json"
    return "default", str(json.loads(path.read_text())["default"])


@contextlib.contextmanager
def fault_cluster(
    root: Path, *, netns_on: bool = False, size: int = 3, ready_timeout_s: float = 60.0
) -> Iterator[tuple[LocalCluster, NetnsNetwork | None]]:
    """A started, ready cluster on loopback or (netns_on) in namespaces; everything is
    stopped and removed on exit, failures included."""
    network = NetnsNetwork(size) if netns_on else None
    config = LocalClusterConfig(root=root, size=size, ports=NodePorts.free(size))
    try:
        if network is not None:
            network.setup()
        cluster = LocalCluster(config) if network is None else NetnsCluster(config, network)
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=ready_timeout_s, ready=every_node(node_reports_ready))
            yield cluster, network
        finally:
            cluster.stop()
    finally:
        if network is not None:
            network.teardown()


async def read_items(
    address: str,
    keys: list[str],
    consistency: str,
    tenant: str | None,
    token: str | None,
) -> dict[str, Stored | None]:
    """Every key's item as the node at `address` serves it (retried a few times; raises
    TimeoutError after `FINAL_READS_TIMEOUT_S` in all)."""
    return await asyncio.wait_for(
        _read_items(address, keys, consistency, tenant, token), FINAL_READS_TIMEOUT_S
    )


async def _read_items(
    address: str,
    keys: list[str],
    consistency: str,
    tenant: str | None,
    token: str | None,
) -> dict[str, Stored | None]:
    found: dict[str, Stored | None] = {}
    client = PinnedClient(address, timeout_s=FINAL_READ_TIMEOUT_S, tenant=tenant, token=token)
    try:
        for start in range(0, len(keys), READ_CHUNK_KEYS):
            chunk = keys[start : start + READ_CHUNK_KEYS]
            for attempt in range(FINAL_READ_ATTEMPTS):
                try:
                    items = await client.multi_get_items(
                        [key.encode() for key in chunk], consistency=consistency
                    )
                    break
                except (SpindleError, OSError, TimeoutError):
                    if attempt == FINAL_READ_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
            found.update(zip(chunk, items, strict=True))
    finally:
        await client.close()
    return found


def _text(item: Stored | None) -> str | None:
    return None if item is None else item.value.decode()


async def _final_strong_reads(
    cluster: LocalCluster, report: FaultReport, recorder: Recorder, keys: list[str]
) -> dict[int, dict[str, Stored | None]]:
    """Strong reads of `keys` through every node, entered into the history."""
    tenant, token = client_credentials(cluster)
    results: dict[int, dict[str, Stored | None]] = {}
    for node_id, address in zip(cluster.node_ids, cluster.addresses, strict=True):
        starts = {key: recorder.invoke(("final", node_id, key), "get", key) for key in keys}
        try:
            items = await read_items(address, keys, "strong", tenant, token)
        except (SpindleError, OSError, TimeoutError) as error:
            report.read_errors.append(f"strong reads through node{node_id}: {error}")
            for key in keys:
                recorder.history.fail(("final", node_id, key))
            continue
        for key in keys:
            recorder.complete(
                ("final", node_id, key),
                "ok",
                _text(items[key]),
                client=-1,
                node_id=node_id,
                f="get",
                key=key,
                start_s=starts[key],
            )
        results[node_id] = items
    return results


def _availability(report: FaultReport, recorder: Recorder, workload: Workload) -> None:
    for fault in report.faults:
        if fault.down is None or fault.end_s is None:
            continue
        if fault.end_s - fault.start_s < report.config.window_min_s:
            continue
        window = WindowStats(fault)
        for record in recorder.records:
            if record.client < 0 or record.start_s < fault.start_s or record.end_s > fault.end_s:
                continue
            if workload.pinned(record.client) and record.node_id == fault.down:
                continue  # a client pinned to the node that is out
            if record.outcome == "ok":
                if record.is_write:
                    window.ok_writes += 1
                else:
                    window.ok_reads += 1
            elif record.outcome == "fail":
                window.failed += 1
            else:
                window.unknown += 1
        report.windows.append(window)


async def run_faults(
    cluster: LocalCluster,
    config: FaultRunConfig,
    *,
    network: NetnsNetwork | None = None,
    artifacts: Path | None = None,
) -> FaultReport:
    """Run the workload under the nemesis on a started, ready cluster; heal; check."""
    recorder = Recorder()
    report = FaultReport(config, recorder.clock())
    tenant, token = client_credentials(cluster)
    workload = Workload(
        cluster.addresses, recorder, config.workload, seed=config.seed, tenant=tenant, token=token
    )
    nemesis = Nemesis(cluster, config.nemesis, seed=config.seed + 1, network=network)
    stop = asyncio.Event()
    clients = asyncio.ensure_future(workload.run(stop))
    try:
        await asyncio.sleep(config.warmup_s)
        try:
            await nemesis.run(config.fault_seconds)
        finally:
            await nemesis.heal()
        await asyncio.sleep(config.settle_s)
    finally:
        stop.set()
        await clients
    report.faults = nemesis.faults
    report.unexpected = list(workload.unexpected)

    report.convergence = await asyncio.to_thread(wait_converged, cluster, config.converge_timeout_s)
    shared_keys = list(workload.keys.all_keys)
    strong = await _final_strong_reads(cluster, report, recorder, shared_keys)
    acks = workload.acks
    ack_keys = sorted(acks.acknowledged)
    unknown_keys = sorted(acks.unknown)
    all_keys = shared_keys + ack_keys + unknown_keys
    report.keys = len(all_keys)
    replicas: dict[int, dict[str, Stored | None]] = {}
    for node_id, address in zip(cluster.node_ids, cluster.addresses, strict=True):
        try:
            ack_items = await read_items(address, ack_keys, "strong", tenant, token)
            replicas[node_id] = await read_items(address, all_keys, "eventual", tenant, token)
        except (SpindleError, OSError, TimeoutError) as error:
            report.read_errors.append(f"reads from node{node_id}: {error}")
            continue
        strong[node_id] = {**strong.get(node_id, {}), **ack_items}
    lost: set[str] = set()
    for key in ack_keys:
        for node_id, items in strong.items():
            if _text(items.get(key)) != acks.acknowledged[key]:
                lost.add(f"{key} (node{node_id}: {_text(items.get(key))!r})")
    report.lost = sorted(lost)
    report.acknowledged = len(ack_keys)
    report.unknown_acks = len(unknown_keys)
    if replicas:
        first = next(iter(replicas.values()))
        report.unknown_acks_found = sum(1 for key in unknown_keys if first.get(key) is not None)
        for key in all_keys:
            seen = {
                node_id: (None if item is None else (item.value, item.version))
                for node_id, items in replicas.items()
                for item in [items.get(key)]
            }
            if len(set(seen.values())) > 1:
                report.divergent.append(f"{key}: {seen}")

    report.linearizability = await asyncio.to_thread(
        check_history, recorder.history.events, config.max_steps_per_key
    )
    for record in recorder.records:
        report.ops[(record.f, record.outcome)] += 1
        if record.error:
            shape = re.sub(r"\d+", "N", re.sub(r"b'[^']*'", "b'..'", record.error))
            report.errors[shape[:ERROR_SHOWN_CHARS]] += 1
    _availability(report, recorder, workload)
    report.node_log_problems = failed_passes(cluster)
    report.duration_s = recorder.clock() - report.origin_s
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        recorder.write_jsonl(artifacts / "history.jsonl")
        with (artifacts / "ops.jsonl").open("w") as file:
            for record in recorder.records:
                file.write(json.dumps(dataclasses.asdict(record), default=repr) + "\n")
        (artifacts / "report.txt").write_text(report.summary() + "\n")
    return report


# -- by hand -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m spindle.faults`: one fault run against a fresh local cluster; prints the
    report, exits 1 if it found a problem."""
    parser = argparse.ArgumentParser(prog="python -m spindle.faults", description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="of faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--netns", action="store_true", help="nodes in network namespaces")
    parser.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated, of: {', '.join(ALL_FAULTS)} "
        "(default: process faults; with --netns all)",
    )
    parser.add_argument(
        "--targets", default="", help="comma-separated nodes faults may take out (default: all)"
    )
    parser.add_argument("--root", default=None, help="data and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.netns:
        reason = netns.unavailable_reason()
        if reason is not None:
            print(f"--netns: {reason}", file=sys.stderr)
            return 2
    kinds = tuple(args.faults.split(",")) if args.faults else None
    if kinds is None:
        kinds = ALL_FAULTS if args.netns else PROCESS_FAULTS
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    config = FaultRunConfig(
        fault_seconds=args.seconds,
        seed=seed,
        nemesis=NemesisConfig(
            kinds=kinds, targets=tuple(int(t) for t in args.targets.split(",") if t)
        ),
    )
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="spindle-faults-"))
    with fault_cluster(root, netns_on=args.netns) as (cluster, network):
        report = asyncio.run(run_faults(cluster, config, network=network, artifacts=root))
    print(report.summary())
    print(f"data, logs, history: {root}")
    return 1 if report.problems() else 0


__all__ = [
    "FaultReport",
    "FaultRunConfig",
    "client_credentials",
    "failed_passes",
    "fault_cluster",
    "main",
    "read_items",
    "run_faults",
]
