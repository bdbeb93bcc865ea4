"""Deterministic simulation of whole Spindle nodes: the same node code, simulated I/O.

Three machines each run a real ``Node`` (spindle/kv/node.py) — metadata group, 8 shards of
3 replicas each, Ready loop, group commit, forwarding — on a virtual-time event loop
(spindle/sim/aioloop.py), a crashable disk (nodedisk.py) and a faulty network (nodenet.py
over network.py). Clients (nodeclients.py) issue the whole data API at every consistency
level. A run is a pure function of its seed:

1. setup: node 1 bootstraps the cluster, nodes 2 and 3 join, the default keyspace is
   created and every shard elects a leader (no faults yet);
2. fault phase: clients run while the faults of ``--faults`` hit (spindle/sim/faults.py,
   with magnitudes scaled to a node's 100 ms tick: ``node_faults``);
3. quiet phase: the network heals, crashed nodes restart, paused ones resume; clients go on;
4. settle: clients stop, a final strong read of every key, and every group converges.

Checked: the Raft invariants of every group as it runs (raftobserver.py), linearizability of
strong reads and all writes (kvmodel.py, linearizability.py), the promises of bounded,
read-your-writes and eventual reads (promises.py), that every replica of every shard holds
the same data once converged, and that no node raised an unexpected exception.

``python -m spindle.sim.nodes --seeds 100 --faults all`` (or ``python -m spindle.sim nodes
...``) runs seeds, ``--jobs N`` in N processes; ``--seed N --trace`` replays one with its
trace. A failure prints its kind, the evidence (for linearizability: the longest order
found and the operation that cannot be placed, with the trace around it) and its replay
command. tests/sim/test_nodes.py runs 50 seeds in CI.

Measured at commit 6cb8c86 (the joiner fix in, no workaround) on 2 cores: ``python -m
spindle.sim.nodes --seeds 1000 --faults all --jobs 2``: 1,000 of 1,000 seeds passed in
182 s; 696,844 client operations (569,954 ok), 494,293 per-key strong operations checked
for linearizability, 306,821 bounded, read-your-writes and eventual reads checked; 17,717
simulated seconds. (At 1ff8c6c, with the workaround: 1,000 of 1,000 in 272 s.)

Found: joining nodes left the founder out of the metadata group's membership (they
replayed a log that lacks it); fixed in spindle/kv/node.py (joiners start from a
snapshot). Seed 1 is the regression test; ``meta_membership_workaround`` (off by default)
is kept to compare.

Not covered yet: expiry timing (TTLs are long, so expire is exercised as a write, not as a
race against skewed clocks), delete_range, keyspace creation, tenants and membership
changes under faults (the cluster forms before faults start), a disk that loses synced data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from spindle.kv.node import Node
from spindle.kv.replica import Replica
from spindle.kv.shardmap import DEFAULT_KEYSPACE, DEFAULT_TENANT, KeyspaceInfo
from spindle.kv.statemachine import keyspace_end_key
from spindle.kv.storage import CF
from spindle.sim.aioloop import LoopDriver, SimEventLoop
from spindle.sim.faults import FAULT_NAMES, FaultConfig
from spindle.sim.kvmodel import SpindleKeyModel
from spindle.sim.linearizability import Verdict, check
from spindle.sim.network import SimNetwork
from spindle.sim.nodeclients import ClientConfig, KeyUniverse, SimClient
from spindle.sim.nodehistory import ClientOp, Recorder, strong_events
from spindle.sim.nodenet import Endpoint, SimWire
from spindle.sim.nodeprocess import NodeProcess, ProcessSettings
from spindle.sim.promises import check_read_promises
from spindle.sim.raftobserver import RaftObserver
from spindle.sim.scheduler import Scheduler, Trace

__all__ = ["NodeSeedResult", "NodeSimConfig", "NodeWorld", "main", "node_faults", "run_seed"]

US = 1_000_000
CLIENT_ADDRESS_BASE = 1000
FAILURE_TRACE_LINES = 200


@dataclasses.dataclass(frozen=True)
class NodeSimConfig:
    """Shape and length of one run (simulated seconds)."""

    nodes: int = 3
    clients: int = 6
    registers: int = 12
    counters: int = 3
    setup_s_max: float = 30.0
    fault_phase_s: float = 12.0
    quiet_phase_s: float = 4.0
    settle_s_max: float = 40.0
    #: Logs are compacted this early (production: 20,000) so snapshots get installed.
    log_compact_entries: int = 40
    log_keep_entries: int = 10
    #: Work around the joiners' metadata membership bug (raftobserver.ObservedRaftHost).
    meta_membership_workaround: bool = False
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)


def node_faults(spec: str | FaultConfig) -> FaultConfig:
    """The fault families of ``spec`` with magnitudes for nodes that tick every 100 ms and
    elect within 1-2 s (the defaults suit the bare-Raft simulator's 10 ms ticks)."""
    faults = spec if isinstance(spec, FaultConfig) else FaultConfig.parse(spec)
    return dataclasses.replace(
        faults,
        base_delay_us=200,
        max_jitter_us=10_000,
        reorder_delay_us_max=2_500_000,
        fault_interval_us=1_000_000,
        partition_duration_us_max=4_000_000,
        crash_downtime_us_max=4_000_000,
        pause_us_max=3_000_000,
        fsync_us=500,
        slow_fsync_us_max=300_000,
    )


class _TraceLogs(logging.Handler):
    """Node log records go to the trace; errors are remembered (they mean a bug)."""

    def __init__(self, world: NodeWorld) -> None:
        super().__init__(logging.DEBUG)
        self.world = world
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        self.world.trace.log(
            self.world.now_us, "LOG   %s %s: %s", record.levelname, record.name, text
        )
        if record.levelno >= logging.ERROR:
            self.errors.append(f"{record.name}: {text}")


@contextlib.contextmanager
def _captured_logs(handler: _TraceLogs) -> Iterator[None]:
    logger = logging.getLogger("spindle")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _Described:
    """An op described when the trace is printed (its final status, after resolution)."""

    __slots__ = ("_op",)

    def __init__(self, op: ClientOp) -> None:
        self._op = op

    def __str__(self) -> str:
        return self._op.describe()


class SimFailure(Exception):
    """The run failed a check: ``kind`` names which."""

    def __init__(self, kind: str, message: str, window_us: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.window_us = window_us


class NodeWorld:
    """Everything of one run: machines, network, clients, faults, checks."""

    def __init__(
        self, seed: int, faults: FaultConfig, config: NodeSimConfig, trace: Trace | None = None
    ) -> None:
        self.seed = seed
        self.faults = faults
        self.config = config
        self.trace = trace if trace is not None else Trace()
        master = random.Random(seed)
        self.rng_net = random.Random(master.getrandbits(64))
        self.rng_faults = random.Random(master.getrandbits(64))
        self.rng_clients = random.Random(master.getrandbits(64))
        self.rng_nodes = random.Random(master.getrandbits(64))
        self.rng_disk = random.Random(master.getrandbits(64))
        self.scheduler = Scheduler()
        self.driver = LoopDriver(self.scheduler)
        self.network = SimNetwork(self.scheduler, self.rng_net, faults, self.trace)
        call_faults = dataclasses.replace(faults, enabled=faults.enabled - {"loss", "duplicate"})
        self.call_network = SimNetwork(self.scheduler, self.rng_net, call_faults, self.trace)
        self.wire = SimWire(
            self.network,
            self.call_network,
            self.scheduler,
            self.trace,
            delay_us=faults.base_delay_us,
        )
        self.node_ids = list(range(1, config.nodes + 1))
        self.observer = RaftObserver(tuple(self.node_ids), self._log)
        self.recorder = Recorder(self._traced)
        self.logs = _TraceLogs(self)
        self.processes: dict[int, NodeProcess] = {}
        first = self.node_ids[0]
        for node_id in self.node_ids:
            settings = self._settings(node_id)
            join = None if node_id == first else (f"10.0.0.{first}", 7000 + first)
            self.processes[node_id] = NodeProcess(
                settings,
                driver=self.driver,
                wire=self.wire,
                observer=self.observer,
                trace=self.trace,
                rng=random.Random(self.rng_nodes.getrandbits(64)),
                fsync_s=self._fsync_s,
                join=join,
            )
        self.clients: list[SimClient] = []
        self.client_loop: SimEventLoop | None = None
        self.keys: KeyUniverse | None = None
        self.keyspace: KeyspaceInfo | None = None
        self.partitions = 0
        self.pauses = 0
        self.crashes = 0
        self.phase = "setup"
        self.ops_checked = 0
        self.reads_checked: Counter[str] = Counter()

    @property
    def now_us(self) -> int:
        return self.scheduler.now_us

    def _log(self, fmt: str, *args: object) -> None:
        self.trace.log(self.scheduler.now_us, fmt, *args)

    def _traced(self, op: ClientOp) -> None:
        self.trace.log(self.scheduler.now_us, "c%d   %s", op.client, _Described(op))

    def _settings(self, node_id: int) -> ProcessSettings:
        drift_ppm, skew_s, wall_skew_ms = 0, 0.0, 0
        if self.faults.on("clock"):
            rng, bound = self.rng_faults, self.faults.clock_drift_ppm_max
            drift_ppm = rng.randint(-bound, bound)
            skew_s = rng.uniform(0, 1000.0)
            wall_skew_ms = rng.randint(-500, 500)
        return ProcessSettings(
            node_id,
            self.config.nodes,
            drift_ppm=drift_ppm,
            skew_s=skew_s,
            wall_skew_ms=wall_skew_ms,
            log_compact_entries=self.config.log_compact_entries,
            log_keep_entries=self.config.log_keep_entries,
            meta_founders=(self.node_ids[0],) if self.config.meta_membership_workaround else (),
        )

    def _fsync_s(self) -> float:
        faults, rng = self.faults, self.rng_disk
        if faults.on("slow-disk") and rng.random() < faults.slow_fsync_probability:
            return rng.randint(faults.fsync_us, faults.slow_fsync_us_max) / US
        return faults.fsync_us / US

    # -- running -----------------------------------------------------------------------------

    def _run_until(self, end_us: int, done: Callable[[], bool] | None = None) -> bool:
        """Runs to ``end_us`` or until ``done()``; stops at once on a violated invariant or
        an unexpected exception in a node (the first one is the interesting one)."""
        violations = self.observer.violations
        error_lists = [self.wire.serve_errors, self.logs.errors] + [
            process.loop_errors for process in self.processes.values()
        ]

        def stop() -> bool:
            return bool(violations) or any(error_lists) or (done is not None and done())

        reached = self.driver.run_until(end_us, stop)
        if violations:
            raise SimFailure("invariant", f"invariant violated: {violations[0]}")
        self._check_node_errors()
        return reached and (done is None or done())

    def _node_errors(self) -> list[str]:
        errors = self.wire.serve_errors + self.logs.errors
        for process in self.processes.values():
            errors = errors + process.loop_errors
        return errors

    def run(self) -> None:
        """The whole run; raises SimFailure on the first failed check."""
        with _captured_logs(self.logs):
            try:
                self._run()
            finally:
                self._tear_down()

    def _tear_down(self) -> None:
        """The simulated world ends: every loop is dead, so the coroutines left pending
        in them are dropped quietly whenever they are collected."""
        for process in self.processes.values():
            if process.loop is not None:
                process.loop.kill()
            process.bury()
        if self.client_loop is not None:
            self.client_loop.kill()

    def _run(self) -> None:
        config = self.config
        for process in self.processes.values():
            process.boot()
        if not self._run_until(int(config.setup_s_max * US), self._all_ready):
            raise SimFailure("setup", f"the cluster was not ready after {config.setup_s_max}s")
        self._check_node_errors()
        self.trace.log(self.now_us, "world SETUP done: all nodes ready")
        node = self._any_node()
        self.keyspace = node.catalog.keyspace(DEFAULT_TENANT, DEFAULT_KEYSPACE)
        self.keys = KeyUniverse(self.keyspace, config.registers, config.counters)
        fault_end_us = self.now_us + int(config.fault_phase_s * US)
        quiet_end_us = fault_end_us + int(config.quiet_phase_s * US)
        self._start_clients(quiet_end_us)
        self.phase = "faults"
        self._schedule_fault(fault_end_us)
        self._run_until(fault_end_us)
        self.phase = "quiet"
        self._quiet()
        self._run_until(quiet_end_us)
        self.phase = "settle"
        settle_end_us = quiet_end_us + int(config.settle_s_max * US)
        assert self.client_loop is not None
        client_tasks = list(asyncio.all_tasks(self.client_loop))
        if not self._run_until(settle_end_us, lambda: all(t.done() for t in client_tasks)):
            raise SimFailure("liveness", "clients still waiting at the end of the settle time")
        final = self.clients[0]
        task = self.client_loop.create_task(final.final_reads())
        if not self._run_until(settle_end_us, task.done) or not task.result():
            raise SimFailure("liveness", "the final strong reads did not all succeed")
        if not self._run_until(settle_end_us, self._converged):
            raise SimFailure("liveness", f"groups did not converge: {self._lagging()}")
        self.trace.log(self.now_us, "world CONVERGED")
        self._check_node_errors()
        self._compare_replicas()
        self._check_history()

    def _any_node(self) -> Node:
        for process in self.processes.values():
            if process.node is not None:
                return process.node
        raise AssertionError("no node is up")

    def _all_ready(self) -> bool:
        return all(
            p.node is not None and p.started and p.node.is_ready() for p in self.processes.values()
        )

    def _start_clients(self, stop_us: int) -> None:
        assert self.keys is not None
        loop = self.driver.new_loop("clients")
        loop.set_exception_handler(self._client_loop_exception)
        self.client_loop = loop
        for index in range(self.config.clients):
            endpoint = Endpoint(CLIENT_ADDRESS_BASE + index, loop, 1)
            self.wire.attach(endpoint)
            client = SimClient(
                index,
                wire=self.wire,
                endpoint=endpoint,
                recorder=self.recorder,
                keys=self.keys,
                node_ids=self.node_ids,
                rng=random.Random(self.rng_clients.getrandbits(64)),
                now_us=lambda: self.scheduler.now_us,
                config=self.config.client,
            )
            self.clients.append(client)
            loop.create_task(client.run(stop_us))

    def _client_loop_exception(self, loop: object, context: dict[str, object]) -> None:
        if isinstance(loop, SimEventLoop) and loop.killed:
            return
        message = f"client loop: {context.get('message')}: {context.get('exception')!r}"
        self.trace.log(self.now_us, "LOOP  %s", message)
        self.logs.errors.append(message)

    # -- faults ------------------------------------------------------------------------------

    def _schedule_fault(self, fault_end_us: int) -> None:
        delay_us = int(self.rng_faults.expovariate(1 / self.faults.fault_interval_us))
        if self.now_us + delay_us < fault_end_us:
            self.scheduler.after(delay_us, lambda: self._inject_fault(fault_end_us))

    def _inject_fault(self, fault_end_us: int) -> None:
        if self.phase == "faults":
            choices = [n for n in ("partition", "crash", "pause") if self.faults.on(n)]
            if choices:
                action = self.rng_faults.choice(choices)
                if action == "partition":
                    self._partition()
                elif action == "crash":
                    self._crash_one()
                else:
                    self._pause_one()
            self._schedule_fault(fault_end_us)

    def _partition(self) -> None:
        rng = self.rng_faults
        nodes = list(self.node_ids)
        rng.shuffle(nodes)
        cut = rng.randint(1, len(nodes) - 1)
        side_a, side_b = nodes[:cut], nodes[cut:]
        one_way = rng.random() < 0.4
        self.wire.partition(side_a, side_b, one_way=one_way)
        self.partitions += 1
        self.trace.log(
            self.now_us, "fault PARTITION %s %s %s", side_a, "->|" if one_way else "|", side_b
        )
        duration_us = rng.randint(100_000, self.faults.partition_duration_us_max)
        self.scheduler.after(duration_us, self._heal)

    def _heal(self) -> None:
        if self.wire.cut_links():
            self.wire.heal()
            self.trace.log(self.now_us, "fault HEAL")

    def _victim(self) -> NodeProcess | None:
        up = [p for p in self.processes.values() if p.up]
        if not up:
            return None
        leaders = [p for p in up if p.leads()]
        if leaders and self.rng_faults.random() < self.faults.crash_leader_probability:
            return max(leaders, key=lambda p: len(p.leads()))
        return self.rng_faults.choice(up)

    def _crash_one(self) -> None:
        down = sum(1 for p in self.processes.values() if not p.up)
        if self.faults.crash_minority_only and down + 1 > (len(self.node_ids) - 1) // 2:
            return
        victim = self._victim()
        if victim is None:
            return
        victim.crash()
        self.crashes += 1
        downtime_us = self.rng_faults.randint(10_000, self.faults.crash_downtime_us_max)
        self.scheduler.after(downtime_us, lambda: self._restart(victim))

    def _restart(self, process: NodeProcess) -> None:
        if not process.up:
            process.boot()

    def _pause_one(self) -> None:
        victim = self._victim()
        if victim is None or victim.paused:
            return
        duration_us = self.rng_faults.randint(10_000, self.faults.pause_us_max)
        token = victim.pause()
        self.pauses += 1
        self.trace.log(self.now_us, "fault PAUSE n%d for %dus", victim.node_id, duration_us)
        self.scheduler.after(duration_us, lambda: victim.resume(token))

    def _quiet(self) -> None:
        self.wire.heal()
        self.network.chaos = False
        self.call_network.chaos = False
        for process in self.processes.values():
            if not process.up:
                process.boot()
            else:
                process.resume()
        self.trace.log(self.now_us, "fault QUIET: network healed, every node up")

    # -- checks ------------------------------------------------------------------------------

    def _groups(self) -> dict[int, list[Replica]]:
        groups: dict[int, list[Replica]] = {}
        for process in self.processes.values():
            if process.node is None:
                continue
            for group_id, replica in process.node.host.replicas.items():
                groups.setdefault(group_id, []).append(replica)
        return groups

    def _converged(self) -> bool:
        if not all(p.up and not p.paused for p in self.processes.values()):
            return False
        return not self._lagging()

    def _lagging(self) -> list[str]:
        lagging = []
        for group_id, replicas in sorted(self._groups().items()):
            if len(replicas) != len(self.node_ids):
                lagging.append(f"group {group_id}: {len(replicas)} replicas")
                continue
            leaders = [r for r in replicas if r.is_leader()]
            if len(leaders) != 1:
                lagging.append(f"group {group_id}: {len(leaders)} leaders")
                continue
            commit = leaders[0].raw.status().commit_index
            applied = [r.applied_index for r in replicas]
            if any(index != commit for index in applied):
                lagging.append(f"group {group_id}: commit {commit}, applied {applied}")
        return lagging

    def _check_node_errors(self) -> None:
        errors = self._node_errors()
        if errors:
            raise SimFailure("node-error", "a node raised unexpectedly:\n  " + "\n  ".join(errors))

    def _compare_replicas(self) -> None:
        """Every replica of a shard holds the same records, expiry index and applied index;
        every node holds the same catalog."""
        assert self.keyspace is not None
        nodes = [p.node for p in self.processes.values() if p.node is not None]
        catalogs = {repr(node.catalog) for node in nodes}
        if len(catalogs) != 1:
            raise SimFailure("divergence", "nodes hold different catalogs")
        for info in self.keyspace.shards:
            images: dict[int, object] = {}
            for node in nodes:
                shard = node.shards[info.shard_id]
                state = shard.state
                prefix = state.prefix
                start = prefix + info.start
                end = prefix + info.end if info.end is not None else keyspace_end_key(prefix)
                data = list(node.engine.scan(CF.DATA, start, end))
                ttl = [
                    key
                    for key, _ in node.engine.scan(CF.TTL, prefix, keyspace_end_key(prefix))
                    if info.contains(key[12:])
                ]
                images[node.node_id] = (state.applied_index, data, ttl)
            distinct = {repr(image) for image in images.values()}
            if len(distinct) != 1:
                summary = {
                    node_id: (image[0], len(image[1]), len(image[2]))  # type: ignore[index]
                    for node_id, image in images.items()
                }
                raise SimFailure(
                    "divergence",
                    f"replicas of shard {info.shard_id} differ "
                    f"(node: applied, records, expiries): {summary}",
                )

    def _check_history(self) -> None:
        assert self.keyspace is not None
        data_groups = {info.shard_id for info in self.keyspace.shards}
        self.recorder.resolve_unapplied(self.observer.applied_puts(data_groups))
        events = strong_events(self.recorder.ops)
        verdict = check(events, SpindleKeyModel())
        self.ops_checked = verdict.ops_checked
        if verdict.verdict is Verdict.NOT_LINEARIZABLE:
            window = None
            if verdict.unplaced is not None:
                op = verdict.unplaced
                end = op.return_time if op.return_time is not None else op.call_time
                window = (int(op.call_time) - 500_000, int(end))
            raise SimFailure("linearizability", verdict.explanation, window)
        if verdict.verdict is Verdict.UNKNOWN:
            raise SimFailure("unknown", verdict.explanation)
        drift = self.faults.clock_drift_ppm_max / US if self.faults.on("clock") else 0.0
        report = check_read_promises(self.recorder.ops, clock_drift_ratio=drift)
        self.reads_checked = report.reads_checked
        if report.violations:
            raise SimFailure(
                "promise",
                f"{len(report.violations)} broken read promises; first:\n" + report.violations[0],
            )


# -- results and the command line --------------------------------------------------------------


@dataclasses.dataclass
class NodeSeedResult:
    seed: int
    faults: str
    ok: bool
    failure_kind: str = ""
    failure: str = ""
    trace_tail: str = ""
    ops: int = 0
    ops_ok: int = 0
    strong_ops_checked: int = 0
    weak_reads_checked: int = 0
    committed_entries: int = 0
    crashes: int = 0
    partitions: int = 0
    pauses: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0

    def replay_command(self) -> str:
        return f"python -m spindle.sim.nodes --seed {self.seed} --faults {self.faults} --trace"

    def report(self) -> str:
        if self.ok:
            return (
                f"seed {self.seed}: ok ({self.ops_ok}/{self.ops} ops ok, "
                f"{self.strong_ops_checked} strong key-ops and {self.weak_reads_checked} weak "
                f"reads checked, {self.committed_entries} committed, {self.crashes} crashes, "
                f"{self.partitions} partitions, {self.pauses} pauses, "
                f"{self.sim_s:.1f}s simulated in {self.wall_s:.2f}s)"
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


def run_seed(
    seed: int,
    faults: str | FaultConfig = "all",
    config: NodeSimConfig | None = None,
    *,
    echo_trace: bool = False,
    trace: Trace | None = None,
) -> NodeSeedResult:
    """One deterministic run: the same seed, faults and config give the same result."""
    fault_config = node_faults(faults)
    config = config or NodeSimConfig()
    trace = trace if trace is not None else Trace(echo=echo_trace)
    started = time.perf_counter()
    world = NodeWorld(seed, fault_config, config, trace)
    result = NodeSeedResult(seed=seed, faults=fault_config.describe(), ok=True)
    window: tuple[int, int] | None = None
    try:
        world.run()
    except SimFailure as failure:
        result.ok, result.failure_kind, result.failure = False, failure.kind, str(failure)
        window = failure.window_us
    except Exception:
        result.ok, result.failure_kind = False, "error"
        result.failure = traceback.format_exc()
    ops = world.recorder.ops
    result.ops = len(ops)
    result.ops_ok = sum(1 for op in ops if op.status == "ok")
    result.strong_ops_checked = world.ops_checked
    result.weak_reads_checked = sum(
        n for level, n in world.reads_checked.items() if level != "strong"
    )
    result.committed_entries = world.observer.committed_entries
    result.crashes, result.partitions, result.pauses = world.crashes, world.partitions, world.pauses
    result.sim_s = world.now_us / US
    result.wall_s = time.perf_counter() - started
    if not result.ok:
        if window is not None and not echo_trace:
            result.trace_tail = _replay_window(seed, fault_config, config, window)
        else:
            result.trace_tail = trace.format(last=FAILURE_TRACE_LINES)
    return result


def _replay_window(
    seed: int, faults: FaultConfig, config: NodeSimConfig, window_us: tuple[int, int]
) -> str:
    """Replays the seed with a full trace and returns the lines inside ``window_us``."""
    trace = Trace(lines_max=5_000_000)
    with contextlib.suppress(Exception):
        NodeWorld(seed, faults, config, trace).run()
    start_us, end_us = window_us
    lines = [line for t, line in trace.timed_lines() if start_us <= t <= end_us]
    if len(lines) > FAILURE_TRACE_LINES:
        half = FAILURE_TRACE_LINES // 2
        lines = [*lines[:half], "...", *lines[-half:]]
    return "\n".join([f"(replayed: {start_us / 1000:.3f}ms to {end_us / 1000:.3f}ms)", *lines])


def _run_one(args: tuple[int, str, NodeSimConfig]) -> NodeSeedResult:
    seed, faults, config = args
    return run_seed(seed, faults, config)


def run(
    seeds: int | Iterable[int],
    faults: str = "all",
    config: NodeSimConfig | None = None,
    *,
    first_seed: int = 0,
    jobs: int = 1,
) -> Iterator[NodeSeedResult]:
    """Results of many seeds, in seed order (``jobs`` > 1: in worker processes)."""
    config = config or NodeSimConfig()
    seed_list = list(range(first_seed, first_seed + seeds) if isinstance(seeds, int) else seeds)
    work = [(seed, faults, config) for seed in seed_list]
    if jobs <= 1:
        yield from map(_run_one, work)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(_run_one, work)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit status 0 if every seed passed."""
    parser = argparse.ArgumentParser(
        prog="python -m spindle.sim.nodes",
        description="Deterministic simulation of whole Spindle nodes under faults.",
    )
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="run (replay) exactly this seed")
    parser.add_argument(
        "--faults", default="all", help=f"'all', 'none' or a list of: {','.join(FAULT_NAMES)}"
    )
    parser.add_argument("--clients", type=int, default=NodeSimConfig.clients)
    parser.add_argument("--fault-s", type=float, default=NodeSimConfig.fault_phase_s)
    parser.add_argument("--quiet-s", type=float, default=NodeSimConfig.quiet_phase_s)
    parser.add_argument("--jobs", "-j", type=int, default=1, help="worker processes")
    parser.add_argument("--trace", action="store_true", help="print the whole trace live")
    parser.add_argument("--history", action="store_true", help="print the client history")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per seed")
    args = parser.parse_args(argv)
    config = NodeSimConfig(
        clients=args.clients, fault_phase_s=args.fault_s, quiet_phase_s=args.quiet_s
    )
    FaultConfig.parse(args.faults)  # reject unknown names before running anything
    if args.seed is not None:
        trace = Trace(echo=args.trace, lines_max=10_000_000 if args.trace else 4000)
        result = run_seed(args.seed, args.faults, config, trace=trace)
        print(result.report())
        return 0 if result.ok else 1
    started = time.perf_counter()
    results: list[NodeSeedResult] = []
    for result in run(args.seeds, args.faults, config, first_seed=args.first_seed, jobs=args.jobs):
        results.append(result)
        if args.verbose or not result.ok:
            print(result.report(), flush=True)
    wall_s = time.perf_counter() - started
    failed = [r.seed for r in results if not r.ok]
    print(
        f"faults={node_faults(args.faults).describe()}: {len(results)} seeds, "
        f"{len(results) - len(failed)} passed, {len(failed)} failed {failed}; "
        f"{sum(r.ops for r in results)} client ops ({sum(r.ops_ok for r in results)} ok), "
        f"{sum(r.strong_ops_checked for r in results)} strong key-ops checked for "
        f"linearizability, {sum(r.weak_reads_checked for r in results)} weaker reads checked; "
        f"{sum(r.sim_s for r in results):.0f}s simulated; {wall_s:.1f}s wall"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
