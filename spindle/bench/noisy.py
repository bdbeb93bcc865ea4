"""`spindle bench noisy`: does a tenant flooding a node raise another tenant's latency?

A node runs as a subprocess. A quiet tenant issues gets one at a time (closed loop, 2 ms
apart) and records each latency: first alone, then while a noisy tenant floods the node
from another process with many pipelined gets. For contrast, the same quiet load also runs
*as the noisy tenant* during the flood: what the quiet client would suffer without per-
tenant fair queuing. Target (issue "The store, part 2"): the flood raises the quiet
tenant's p99 by at most 2x.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

from spindle.kv.client import AsyncClient

FLOOD_DEPTH = 256
"""Requests the noisy tenant keeps in flight per connection."""
FLOOD_CONNECTIONS = 4
FLOOD_NICE = 19
"""The flood's load generator runs at the lowest CPU priority: on a 2-core machine that
hosts client, flood and node alike, the OS would otherwise charge the flood client's CPU
use to the quiet client's latency, which no server-side policy can help. On a real
deployment the flood comes from other machines."""
KEYS = 1000
QUIET_PAUSE_S = 0.002
"""Think time of the quiet client between its requests."""

_FLOOD_SCRIPT = """
# A lean pipelining flood: raw frames, a callback per response, no futures, so that a
# little client CPU saturates the node.
import asyncio, struct, sys, time, uvloop, msgspec
address, token, seconds, depth, connections = sys.argv[1:6]
host, port = address.rsplit(":", 1)
HEADER = struct.Struct(">I")

def frame(message):
    body = msgspec.msgpack.encode(message)
    return HEADER.pack(len(body)) + body

GETS = [frame({"op": "get", "id": i + 1, "key": b"key-%d" % (i % 1000)}) for i in range(1000)]

class Flood(asyncio.Protocol):
    def __init__(self, stop):
        self.stop, self.buffer, self.sent = stop, bytearray(), 0
    def connection_made(self, transport):
        self.transport = transport
        transport.write(frame({"op": "auth", "id": 0, "tenant": "noisy", "token": token}))
        transport.write(b"".join(GETS[i % 1000] for i in range(int(depth))))
    def data_received(self, data):
        self.buffer += data
        done = 0
        offset = 0
        while len(self.buffer) - offset >= 4:
            (length,) = HEADER.unpack_from(self.buffer, offset)
            if len(self.buffer) - offset - 4 < length:
                break
            offset += 4 + length
            done += 1
        del self.buffer[:offset]
        if time.monotonic() < self.stop:
            self.sent += done
            self.transport.write(b"".join(GETS[(self.sent + i) % 1000] for i in range(done)))

async def main():
    loop = asyncio.get_running_loop()
    stop = time.monotonic() + float(seconds)
    for _ in range(int(connections)):
        await loop.create_connection(lambda: Flood(stop), host, int(port))
    await asyncio.sleep(float(seconds) + 0.5)

uvloop.run(main())
"""


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def _quiet(address: str, tenant: str, token: str, seconds: float) -> dict[str, float]:
    latencies_ms: list[float] = []
    async with AsyncClient(address, tenant=tenant, token=token) as kv:
        stop = time.monotonic() + seconds
        i = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            await kv.get(b"key-%d" % (i % KEYS))
            latencies_ms.append((time.perf_counter() - start) * 1000)
            i += 1
            await asyncio.sleep(QUIET_PAUSE_S)
    latencies_ms.sort()
    return {
        "requests": len(latencies_ms),
        "p50_ms": _percentile(latencies_ms, 0.50),
        "p99_ms": _percentile(latencies_ms, 0.99),
    }


async def _prepare(address: str, admin_token: str) -> dict[str, str]:
    tokens = {}
    async with AsyncClient(address, tenant="admin", token=admin_token) as admin:
        for name in ("quiet", "noisy"):
            tokens[name] = (await admin.create_tenant(name)).token
    for name, token in tokens.items():
        async with AsyncClient(address, tenant=name, token=token) as kv:
            await asyncio.gather(*(kv.put(b"key-%d" % i, b"v" * 100) for i in range(KEYS)))
    return tokens


async def _run(root: Path, seconds: float) -> dict[str, Any]:
    from spindle.bench.kv import running_server

    results: dict[str, Any] = {}
    with running_server(root, "noisy-node") as server:
        await server.wait_ready()
        credentials = json.loads((server.data_dir / "credentials.json").read_text())
        tokens = await _prepare(server.address, credentials["admin"])
        results["alone"] = await _quiet(server.address, "quiet", tokens["quiet"], seconds)
        for label, tenant in (("flood, other tenant", "quiet"), ("flood, same tenant", "noisy")):
            flood = subprocess.Popen(
                [
                    "nice",
                    "-n",
                    str(FLOOD_NICE),
                    sys.executable,
                    "-c",
                    _FLOOD_SCRIPT,
                    server.address,
                    tokens["noisy"],
                    str(seconds + 1.5),
                    str(FLOOD_DEPTH),
                    str(FLOOD_CONNECTIONS),
                ],
            )
            try:
                await asyncio.sleep(1.0)  # let the flood build up
                cpu_before_s = server.cpu_s()
                started = time.monotonic()
                results[label] = await _quiet(server.address, tenant, tokens[tenant], seconds)
                busy = (server.cpu_s() - cpu_before_s) / (time.monotonic() - started)
                results[label]["node_cpu_cores"] = busy
            finally:
                flood.wait(30)
    return results


def main(seconds: float = 4.0, output: str = "bench-results/noisy.json") -> dict[str, Any]:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="spindle-noisy-") as root:
        results = uvloop.run(_run(Path(root), seconds))
    base_p99 = results["alone"]["p99_ms"]
    table = Table("quiet client", "requests", "p50 ms", "p99 ms", "p99 / alone", "node CPU")
    for label, cell in results.items():
        cell["p99_ratio"] = cell["p99_ms"] / base_p99
        table.add_row(
            label,
            str(cell["requests"]),
            f"{cell['p50_ms']:.2f}",
            f"{cell['p99_ms']:.2f}",
            f"{cell['p99_ratio']:.2f}x",
            f"{cell.get('node_cpu_cores', 0):.2f} cores",
        )
    console.print(table)
    verdict = results["flood, other tenant"]["p99_ratio"]
    console.print(f"target: a flood raises another tenant's p99 by <= 2x: {verdict:.2f}x")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(results, indent=2))
    return results
