"""Back-pressure end to end: a real local HTTP service that fails (503) any request above
N in flight, offered 10x that load through the platform, sees the worker's AIMD window
settle within 20% of N, with under 5% failed attempts and no failed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spindle.functions import FunctionsClient, Registry, RetryPolicy
from spindle.functions.client import CallRequest

CAPACITY = 10
"""N: the service's concurrency."""
CALLS = 500
SERVICE_S = 0.08


class Service:
    """HTTP/1.1 on asyncio: 503 above CAPACITY in flight, else 200 after SERVICE_S."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.accepted = 0
        self.rejected = 0
        self.samples: list[tuple[float, int, float]] = []
        self.window: Any = None
        self.last_accept_s = 0.0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        await reader.readline()
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if self.in_flight >= CAPACITY:
            self.rejected += 1
            writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            self.in_flight += 1
            self.accepted += 1
            self.last_accept_s = time.monotonic()
            try:
                await asyncio.sleep(SERVICE_S)
            finally:
                self.in_flight -= 1
            body = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        await writer.drain()
        writer.close()

    async def sample(self) -> None:
        while True:
            window = self.window() if self.window is not None else 0.0
            self.samples.append((time.monotonic(), self.in_flight, window))
            await asyncio.sleep(0.005)


@pytest.fixture
async def service() -> AsyncIterator[tuple[Service, int]]:
    svc = Service()
    svc.server = await asyncio.start_server(svc.handle, "127.0.0.1", 0)
    port = svc.server.sockets[0].getsockname()[1]
    sampler = asyncio.create_task(svc.sample())
    yield svc, port
    sampler.cancel()
    svc.server.close()


async def test_aimd_settles_near_downstream_capacity(
    fx: FunctionsClient, start_worker: Any, service: tuple[Service, int]
) -> None:
    svc, port = service
    registry = Registry()
    registry.http(
        "call_service",
        f"http://127.0.0.1:{port}/work",
        downstream="svc",
        timeout_s=10,
        retry=RetryPolicy(max_attempts=30, backoff_initial_s=0.02, backoff_max_s=0.2),
    )
    await fx.register(registry)
    ids: list[str] = []
    for start in range(0, CALLS, 250):
        ids += await fx.submit_batch(
            [CallRequest("call_service", {"n": i}) for i in range(start, start + 250)]
        )
    began = time.monotonic()
    worker = await start_worker(Registry(), slots=10 * CAPACITY, aimd={"initial": 2.0})
    svc.window = lambda: worker.worker.window("svc").window
    for call_id in ids:
        assert await fx.result(call_id, wait_s=60) == {"ok": True}  # no failed call
    attempts = svc.accepted + svc.rejected
    assert svc.accepted == CALLS
    assert svc.rejected / attempts < 0.05, (svc.rejected, attempts)
    # Settled: the second half of the run while calls were still queued.
    half = began + (svc.last_accept_s - began) / 2
    settled = [(n, w) for t, n, w in svc.samples if half <= t <= svc.last_accept_s]
    at_service = sum(n for n, _ in settled) / len(settled)
    window = sum(w for _, w in settled) / len(settled)
    print(f"mean window {window:.2f}, mean in flight at the service {at_service:.2f}")
    assert 0.8 * CAPACITY <= window <= 1.2 * CAPACITY, window
    assert 0.8 * CAPACITY <= at_service <= 1.2 * CAPACITY, at_service
