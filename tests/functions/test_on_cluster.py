"""Spindle Functions on the replicated store: a 3-node cluster of real processes, the
client on one node, the worker on another; calls finish even when a node is killed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from spindle.functions import FunctionsClient
from spindle.functions.worker import Worker, WorkerConfig
from spindle.kv.client import AsyncClient
from spindle.localcluster import (
    LocalCluster,
    LocalClusterConfig,
    NodePorts,
    every_node,
    node_reports_ready,
)
from tests.functions.apps import registry
from tests.functions.conftest import FAST

WAIT_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    running = LocalCluster(LocalClusterConfig(root=tmp_path, size=3, ports=NodePorts.free(3)))
    try:
        running.start()
        running.wait_ready(timeout_s=60, ready=every_node(node_reports_ready))
        yield running
    finally:
        running.stop()


async def test_calls_complete_across_a_node_crash(cluster: LocalCluster) -> None:
    async with FunctionsClient(cluster.addresses[1]) as functions:
        await functions.register(registry)
        kv = AsyncClient(cluster.addresses[2])
        await kv.connect()
        stop = asyncio.Event()
        worker = Worker(kv, registry, WorkerConfig(**FAST))
        task = asyncio.create_task(worker.run(stop))
        try:
            first = [await functions.submit("add", {"a": i, "b": 1}) for i in range(20)]
            assert [await functions.result(c, wait_s=WAIT_S) for c in first] == [
                i + 1 for i in range(20)
            ]
            cluster.kill(1)  # the node that bootstrapped the cluster, and leads some shards
            # A request already written to a connection whose node just died has an
            # unknown outcome (Unavailable); give the clients a moment to see it closed.
            await asyncio.sleep(0.5)
            second = [await functions.submit("add", {"a": i, "b": 2}) for i in range(20)]
            assert [await functions.result(c, wait_s=WAIT_S) for c in second] == [
                i + 2 for i in range(20)
            ]
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
            await kv.close()
