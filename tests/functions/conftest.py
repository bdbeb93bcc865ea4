"""Fixtures: a functions client and in-process workers on the real store server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from spindle.functions import FunctionsClient, Registry
from spindle.functions.worker import Worker, WorkerConfig
from spindle.kv.client import AsyncClient
from tests.conftest import ThreadServer
from tests.functions.apps import registry as test_registry

FAST = {"lease_s": 2.0, "heartbeat_s": 0.3, "sweep_s": 0.1, "stats_s": 0.5, "drain_s": 5.0}


@pytest.fixture
async def fx(server: ThreadServer) -> AsyncIterator[FunctionsClient]:
    async with FunctionsClient(server.address) as client:
        await client.register(test_registry)
        yield client


class RunningWorker:
    def __init__(self, worker: Worker, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.worker = worker
        self.stop = stop
        self.task = task


@pytest.fixture
async def start_worker(
    server: ThreadServer,
) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[RunningWorker, AsyncClient]] = []

    async def start(registry: Registry = test_registry, **options: Any) -> RunningWorker:
        kv = AsyncClient(server.address)
        await kv.connect()
        config = WorkerConfig(**{**FAST, **options})
        worker = Worker(kv, registry, config)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        running = RunningWorker(worker, stop, task)
        started.append((running, kv))
        return running

    yield start
    for running, kv in started:
        running.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running.task, 15)
        await kv.close()
