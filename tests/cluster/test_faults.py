"""Real-process fault tests: a 3-node cluster of `spindle server` processes under a client
workload while nodes are SIGKILLed and restarted, SIGSTOPped and resumed, and (as root,
with iproute2) partitioned with network namespaces. Checked: the history is linearizable
(per key, decisively), no acknowledged write is lost, the cluster serves reads and writes
while one node of three is out, and after healing every replica converges.

The workload tests run `SPINDLE_FAULT_SECONDS` seconds of faults each (default 8, for
`make test`); a longer run:

    SPINDLE_FAULT_SECONDS=240 .venv/bin/pytest -s tests/cluster/test_faults.py -k workload

or, without pytest, `python -m spindle.faults --seconds 240 [--netns]`. Each run prints
its report (ops, outcomes, faults, check results); a failing run leaves the history
(`history.jsonl`), the report and the node logs under the test's tmp_path.

Faults take out every node, the bootstrap node included. Three bugs these tests found are
fixed and their tests kept: joiners left node 1 out of the metadata group; after a
partition healed, peers waited out TCP's retransmission backoff; a send to a closed peer
connection wedged the Ready loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spindle.faults.convergence import wait_converged
from spindle.faults.history import Recorder, check_history
from spindle.faults.nemesis import ALL_FAULTS, PROCESS_FAULTS, NemesisConfig, group_leaders
from spindle.faults.netns import NetnsNetwork
from spindle.faults.run import (
    FAILED_PASS_LOG,
    FaultReport,
    FaultRunConfig,
    client_credentials,
    run_faults,
)
from spindle.faults.workload import item_text, make_client, recorded, shard_of
from spindle.kv.client import AsyncClient
from spindle.kv.errors import SpindleError
from spindle.localcluster import LocalCluster
from tests.cluster.conftest import fault_seconds

FAILOVER_BOUND_S = 10.0
"""Writes to a shard must resume within this long after its leader is killed: a few
election timeouts (1-2 s each) plus the client's retry backoff; generous for slow CI."""
ELECTION_WAIT_S = 10.0
PAUSE_S = 3.5
"""Longer than the largest election timeout (2 s), so the others elect a new leader."""
WORKLOAD_TIMEOUT_S = 120 + 3 * fault_seconds()


def _judge(cluster: LocalCluster, tmp_path: Path, report: FaultReport) -> None:
    """Fail on any problem, with the report."""
    summary = report.summary()
    print(summary)
    assert report.faults, "the nemesis injected no fault"
    if not report.problems():
        return
    logs = ", ".join(str(cluster.log_path(node_id)) for node_id in cluster.node_ids)
    details = f"{summary}\nhistory and report: {tmp_path}; node logs: {logs}"
    raise AssertionError(details)


@pytest.mark.timeout(WORKLOAD_TIMEOUT_S)
def test_workload_under_process_faults(cluster: LocalCluster, tmp_path: Path) -> None:
    config = FaultRunConfig(
        fault_seconds=fault_seconds(),
        seed=int(time.time()),
        nemesis=NemesisConfig(kinds=PROCESS_FAULTS),
    )
    report = asyncio.run(run_faults(cluster, config, artifacts=tmp_path))
    _judge(cluster, tmp_path, report)


@pytest.mark.timeout(WORKLOAD_TIMEOUT_S)
def test_workload_under_partitions_and_process_faults(
    netns_cluster: tuple[LocalCluster, NetnsNetwork], tmp_path: Path
) -> None:
    cluster, network = netns_cluster
    config = FaultRunConfig(
        fault_seconds=fault_seconds(),
        seed=int(time.time()),
        nemesis=NemesisConfig(kinds=ALL_FAULTS),
    )
    report = asyncio.run(run_faults(cluster, config, network=network, artifacts=tmp_path))
    _judge(cluster, tmp_path, report)


# -- focused scenarios ---------------------------------------------------------------------


def _statuses(cluster: LocalCluster, node_ids: list[int]) -> dict[int, dict[str, Any]]:
    return {node_id: cluster.status(node_id) for node_id in node_ids}


def _group(status: dict[str, Any], group_id: int) -> dict[str, Any]:
    groups = status["cluster"]["groups"]
    return next(group for group in groups if group["group_id"] == group_id)


def _client(cluster: LocalCluster, node_id: int, *, pinned: bool, **options: Any) -> AsyncClient:
    tenant, token = client_credentials(cluster)
    return make_client(
        cluster.address(node_id), pinned=pinned, tenant=tenant, token=token, **options
    )


async def _key_led_by(
    cluster: LocalCluster, leaders_wanted: tuple[int, ...]
) -> tuple[str, int, int]:
    """A key whose shard's leader is one of `leaders_wanted`: (key, shard id, leader)."""
    leaders = group_leaders(await asyncio.to_thread(_statuses, cluster, cluster.node_ids))
    kv = _client(cluster, 1, pinned=False)
    try:
        for index in range(1000):
            key = f"focus{index}"
            shard_id = await shard_of(kv, key.encode())
            if leaders.get(shard_id) in leaders_wanted:
                return key, shard_id, leaders[shard_id]
    finally:
        await kv.close()
    raise AssertionError(f"no shard led by {leaders_wanted}: {leaders}")


async def _wait_for(predicate: Any, timeout_s: float, what: str) -> float:
    """Poll `predicate()` (run in a thread) until true; returns the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def _final_reads(cluster: LocalCluster, recorder: Recorder, key: str) -> None:
    for node_id in cluster.node_ids:
        kv = _client(cluster, node_id, pinned=True, timeout_s=10.0)
        try:
            await recorded(
                recorder, ("final", node_id), "get", key, None,
                kv.get_item(key.encode(), consistency="strong"),
                client=-1, node_id=node_id, read=item_text,
            )  # fmt: skip
        finally:
            await kv.close()


def test_writes_continue_after_the_leader_is_killed(cluster: LocalCluster) -> None:
    """SIGKILL the leader of a shard under a writer and two readers: the survivors elect a
    leader and writes resume within a few election timeouts; the history stays
    linearizable and, after a restart, the replicas converge."""

    async def scenario() -> tuple[float, int, int]:
        key, _, leader = await _key_led_by(cluster, tuple(cluster.node_ids))
        others = [node_id for node_id in cluster.node_ids if node_id != leader]
        recorder = Recorder()
        stop = asyncio.Event()
        acked: list[tuple[float, float]] = []

        async def writer() -> None:
            process, sequence = 0, 0
            kv = _client(cluster, others[0], pinned=False)
            while not stop.is_set():
                sequence += 1
                start_s = recorder.clock()
                outcome, _, _ = await recorded(
                    recorder, ("w", process), "put", key, f"w{sequence}",
                    kv.put(key.encode(), f"w{sequence}".encode()),
                    client=0, node_id=others[0],
                )  # fmt: skip
                if outcome == "ok":
                    acked.append((start_s, recorder.clock()))
                elif outcome == "info":
                    process += 1
                    await kv.close()
                    kv = _client(cluster, others[0], pinned=False)
            await kv.close()

        async def reader(node_id: int) -> None:
            kv = _client(cluster, node_id, pinned=True)
            while not stop.is_set():
                await recorded(
                    recorder, ("r", node_id), "get", key, None,
                    kv.get_item(key.encode(), consistency="strong"),
                    client=node_id, node_id=node_id, read=item_text,
                )  # fmt: skip
                await asyncio.sleep(0.005)
            await kv.close()

        tasks = [asyncio.ensure_future(writer())]
        tasks += [asyncio.ensure_future(reader(node_id)) for node_id in others]
        await _wait_for(lambda: len(acked) >= 20, 10.0, "20 writes before the kill")
        kill_s = recorder.clock()
        await asyncio.to_thread(cluster.kill, leader)
        await _wait_for(
            lambda: any(start >= kill_s for start, _ in acked), 30.0, "a write after the kill"
        )
        resumed_s = min(end for start, end in acked if start >= kill_s) - kill_s
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.to_thread(cluster.restart, leader)
        convergence = await asyncio.to_thread(wait_converged, cluster, 30.0)
        assert convergence.ok, convergence.detail
        await _final_reads(cluster, recorder, key)
        result = check_history(recorder.history.events)
        assert result.ok, result.details()
        after = sum(1 for start, _ in acked if start >= kill_s)
        return resumed_s, len(acked), after

    resumed_s, acked, after = asyncio.run(scenario())
    print(f"writes resumed {resumed_s:.2f} s after the leader was killed")
    print(f"{acked} writes acknowledged, {after} of them invoked after the kill")
    assert resumed_s < FAILOVER_BOUND_S


@pytest.mark.parametrize("fault", ["pause", "isolate"])
def test_deposed_leader_serves_no_stale_strong_read(fault: str, tmp_path: Path) -> None:
    """The leader of a shard is cut off for longer than an election timeout (SIGSTOP, or a
    network partition that still lets clients reach it); the others elect a new leader and
    take a write. Strong reads sent to the old leader — queued while it was out, and sent
    after the new write was acknowledged — must not return the old value: the history
    stays linearizable, and the old leader steps down once it hears of the new term."""
    from spindle.faults.run import fault_cluster
    from tests.cluster.conftest import netns_skip_reason

    if fault == "isolate":
        reason = netns_skip_reason()
        if reason is not None:
            pytest.skip(reason)
    with fault_cluster(tmp_path / "cluster", netns_on=fault == "isolate") as (cluster, network):
        asyncio.run(_deposed_leader(cluster, network, fault))


async def _deposed_leader(cluster: LocalCluster, network: NetnsNetwork | None, fault: str) -> None:
    key, shard_id, leader = await _key_led_by(cluster, tuple(cluster.node_ids))
    others = [node_id for node_id in cluster.node_ids if node_id != leader]
    recorder = Recorder()
    old_term = _group(cluster.status(leader), shard_id)["term"]
    writer = _client(cluster, others[0], pinned=True)
    outcome, _, error = await recorded(
        recorder, "w", "put", key, "before", writer.put(key.encode(), b"before"),
        client=0, node_id=others[0],
    )  # fmt: skip
    assert outcome == "ok", error

    # Strong reads through the old leader, each on its own connection, made (and its shard
    # map fetched) before the fault, so that a read sent during the fault is the request
    # itself, not a connection or map lookup (a pinned client with a timeout longer than
    # the fault: it waits for it to end).
    readers: list[AsyncClient] = []
    for _ in range(6):
        kv = _client(cluster, leader, pinned=True, timeout_s=PAUSE_S + 10.0)
        await kv.get_item(key.encode(), consistency="strong")
        readers.append(kv)
    reads: list[tuple[str, asyncio.Future[Any]]] = []

    def read_through_leader(tag: str) -> None:
        kv = readers[len(reads)]
        read = recorded(
            recorder, (tag, len(reads)), "get", key, None,
            kv.get_item(key.encode(), consistency="strong"),
            client=leader, node_id=leader, read=item_text,
        )  # fmt: skip
        reads.append((tag, asyncio.ensure_future(read)))

    fault_start = time.monotonic()
    if fault == "pause":
        await asyncio.to_thread(cluster.pause, leader)
    else:
        assert network is not None
        await asyncio.to_thread(network.isolate, leader)
    try:
        if fault == "isolate":
            for _ in range(3):
                read_through_leader("during")

        def elected() -> bool:
            statuses = _statuses(cluster, others)
            groups = [_group(status, shard_id) for status in statuses.values()]
            return all(g["leader_id"] not in (0, leader) and g["term"] > old_term for g in groups)

        await _wait_for(elected, ELECTION_WAIT_S, f"a new leader of group {shard_id}")
        outcome, _, error = await recorded(
            recorder, "w", "put", key, "after", writer.put(key.encode(), b"after"),
            client=0, node_id=others[0],
        )  # fmt: skip
        assert outcome == "ok", error
        for _ in range(3):
            read_through_leader("after-ack")
        await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - fault_start)))
    finally:
        if fault == "pause":
            await asyncio.to_thread(cluster.resume, leader)
        else:
            assert network is not None
            await asyncio.to_thread(network.heal)
    results = [(tag, await read) for tag, read in reads]
    for kv in readers:
        await kv.close()
    await writer.close()
    print(f"{fault}: reads through the deposed leader: {[(t, r[0], r[1]) for t, r in results]}")
    after_ack = [item_text(r[1]) for tag, r in results if tag == "after-ack" and r[0] == "ok"]
    assert all(value == "after" for value in after_ack), f"stale strong reads: {after_ack}"

    def knows_new_term() -> bool:
        # Stepped down, or (the shard's preferred leader) took leadership back in a
        # later term: either way it has left the old term and agrees with the others.
        views = [
            _group(status, shard_id) for status in _statuses(cluster, cluster.node_ids).values()
        ]
        old = _group(cluster.status(leader), shard_id)
        return old["term"] > old_term and len({(g["leader_id"], g["term"]) for g in views}) == 1

    await _wait_for(knows_new_term, ELECTION_WAIT_S, f"node{leader} leaves term {old_term}")
    await _final_reads(cluster, recorder, key)
    result = check_history(recorder.history.events)
    assert result.ok, result.details()
    convergence = await asyncio.to_thread(wait_converged, cluster, 30.0)
    assert convergence.ok, convergence.detail


def test_bootstrap_node_rejoins_the_metadata_group(cluster: LocalCluster) -> None:
    """Kill node 1 until nodes 2 and 3 elect a metadata leader, restart it: every group,
    the metadata group included, must converge on all three nodes."""
    cluster.kill(1)
    deadline = time.monotonic() + ELECTION_WAIT_S
    while group_leaders(_statuses(cluster, [2, 3])).get(0) in (None, 1):
        assert time.monotonic() < deadline, "2 and 3 elected no metadata leader"
        time.sleep(0.1)
    cluster.restart(1)
    convergence = wait_converged(cluster, timeout_s=6.0)
    voters = {n: _group(cluster.status(n), 0)["voters"] for n in cluster.node_ids}
    assert convergence.ok, f"{convergence.detail}; metadata voters by node: {voters}"


PARTITION_S = 7.0
"""Long enough for TCP's retransmission backoff on a peer connection to reach ~6 s."""
CATCH_UP_BOUND_S = 3.0
"""A healed node should hear from its peers within a reconnect (<= 1 s) and catch up."""


def test_replicas_catch_up_promptly_after_a_partition_heals(
    netns_cluster: tuple[LocalCluster, NetnsNetwork],
) -> None:
    """Cut node 3 off its peers for a few seconds while writes go on, heal: node 3 must
    catch up within a reconnect and a round of appends, not when TCP retries next."""
    cluster, network = netns_cluster

    async def write_for(seconds: float) -> int:
        kv = _client(cluster, 1, pinned=True)
        acked, end_s = 0, time.monotonic() + seconds
        try:
            while time.monotonic() < end_s:
                with contextlib.suppress(SpindleError, TimeoutError):
                    await asyncio.wait_for(kv.put(f"heal{acked}".encode(), b"v"), 2.0)
                    acked += 1
        finally:
            await kv.close()
        return acked

    network.isolate(3)
    try:
        acked = asyncio.run(write_for(PARTITION_S))
    finally:
        network.heal()
    convergence = wait_converged(cluster, timeout_s=CATCH_UP_BOUND_S)
    if not convergence.ok:
        late = wait_converged(cluster, timeout_s=60.0)
        print(f"{acked} writes during the partition; converged {late.seconds:.1f} s later")
    assert convergence.ok, convergence.detail


KILLS_MAX = 4
WRITERS = 16


def test_killing_a_peer_under_load_does_not_wedge_the_survivors(cluster: LocalCluster) -> None:
    """SIGKILL node 3 again and again while 16 writers go through nodes 1 and 2: their
    Raft loops must keep running (no failed pass) and the cluster must converge."""
    tenant, token = client_credentials(cluster)
    stop = threading.Event()

    async def writers() -> None:
        async def writer(index: int) -> None:
            kv = make_client(
                cluster.address(1 + index % 2), pinned=True, timeout_s=1.0,
                tenant=tenant, token=token,
            )  # fmt: skip
            sequence = 0
            while not stop.is_set():
                sequence += 1
                try:
                    await kv.put(f"load{index}-{sequence}".encode(), b"v")
                except (SpindleError, OSError, TimeoutError):
                    await asyncio.sleep(0.01)
            await kv.close()

        await asyncio.gather(*(writer(index) for index in range(WRITERS)))

    load = threading.Thread(target=asyncio.run, args=(writers(),))
    load.start()
    try:
        for attempt in range(1, KILLS_MAX + 1):
            time.sleep(0.7)
            cluster.kill(3)
            time.sleep(0.5)
            for node_id in (1, 2):
                log = cluster.log_path(node_id).read_text(errors="replace")
                assert FAILED_PASS_LOG not in log, (
                    f"node{node_id} wedged after kill {attempt} of node 3:\n"
                    + cluster.log_tail(node_id, 25)
                )
            cluster.restart(3)
    finally:
        stop.set()
        load.join(30)
    convergence = wait_converged(cluster, timeout_s=15.0)
    assert convergence.ok, convergence.detail
