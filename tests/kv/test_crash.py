"""Real processes: SIGKILL during a write load loses no acknowledged write; SIGTERM stops
the node cleanly."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from spindle.kv.client import AsyncClient
from spindle.kv.errors import SpindleError
from tests.conftest import ProcessServer

WRITERS = 32


async def write_until_killed(
    server: ProcessServer, round_no: int, acked: dict[bytes, bytes], kill_after_s: float
) -> None:
    async with AsyncClient(server.address, timeout_s=5) as kv:
        stop = asyncio.Event()

        async def writer(worker: int) -> None:
            seq = 0
            while not stop.is_set():
                key = b"r%d-w%d-%d" % (round_no, worker, seq)
                value = b"value-" + key
                try:
                    await kv.put(key, value, keyspace="default")
                except SpindleError:
                    return  # the node died: this write was never acknowledged
                acked[key] = value
                seq += 1

        tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
        await asyncio.sleep(kill_after_s)
        server.kill()
        stop.set()
        await asyncio.gather(*tasks)


async def test_sigkill_loses_no_acknowledged_write(process_server: ProcessServer) -> None:
    acked: dict[bytes, bytes] = {}
    for round_no in range(3):
        process_server.start()
        await write_until_killed(process_server, round_no, acked, kill_after_s=0.8 + 0.3 * round_no)
    assert len(acked) > 100, f"the load wrote too little to mean anything: {len(acked)}"
    process_server.start()
    async with AsyncClient(process_server.address, timeout_s=10) as kv:
        keys = list(acked)
        missing = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for key, value in zip(chunk, await kv.multi_get(chunk), strict=True):
                if value != acked[key]:
                    missing.append(key)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost: {missing[:5]}"


async def test_sigterm_is_graceful_and_data_survives(process_server: ProcessServer) -> None:
    process_server.start()
    async with AsyncClient(process_server.address) as kv:
        await kv.put(b"before-term", b"kept")
    with urllib.request.urlopen(f"http://127.0.0.1:{process_server.http_port}/status") as r:
        assert json.load(r)["node_id"] == 1
    assert process_server.terminate() == 0
    assert "stopped cleanly" in process_server.output()
    process_server.start()
    async with AsyncClient(process_server.address) as kv:
        assert await kv.get(b"before-term") == b"kept"
