"""The HTTP submit API over real loopback sockets: every route, its errors and its bounds."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spindle.functions import FunctionsClient, limits
from spindle.functions.http_api import HTTP_HEADER_BYTES_MAX, FunctionsHttpServer
from spindle.kv.errors import Throttled, Unavailable
from tests.conftest import ThreadServer

REPO = Path(__file__).resolve().parents[2]


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, str]:
        found: dict[str, str] = self.json()["error"]
        return found


async def send(port: int, raw: bytes) -> Reply:
    """One raw request on its own connection; reads the reply until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split(" ")[1]), headers, body)


async def call(port: int, method: str, path: str, document: Any = None) -> Reply:
    body = b"" if document is None else json.dumps(document).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return await send(port, head.encode() + body)


@pytest.fixture
async def api(fx: FunctionsClient) -> AsyncIterator[FunctionsHttpServer]:
    server = FunctionsHttpServer(fx)
    await server.start()
    yield server
    await server.close()


async def test_submit_status_result_and_cancel(api: FunctionsHttpServer, start_worker: Any) -> None:
    await start_worker()
    reply = await call(api.port, "POST", "/v1/calls", {"function": "add", "args": {"a": 2, "b": 5}})
    assert reply.status == 200, reply.body
    call_id = reply.json()["call_id"]
    done = await call(api.port, "GET", f"/v1/calls/{call_id}?wait_s=20")
    assert done.status == 200
    assert done.json()["state"] == "succeeded" and done.json()["result"] == 7

    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    reply = await call(
        api.port,
        "POST",
        "/v1/calls",
        {
            "function": "add",
            "args": [1, 1],
            "start_after": later.isoformat(),
            "deadline": 3600,
            "criticality": "critical",
            "idempotency_key": "k1",
        },
    )
    delayed_id = reply.json()["call_id"]
    again = await call(
        api.port, "POST", "/v1/calls", {"function": "add", "args": [], "idempotency_key": "k1"}
    )
    assert again.json()["call_id"] == delayed_id
    queued = (await call(api.port, "GET", f"/v1/calls/{delayed_id}")).json()
    assert queued["state"] == "queued" and queued["criticality"] == "critical"
    assert "result" not in queued
    cancelled = await call(api.port, "POST", f"/v1/calls/{delayed_id}:cancel")
    assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"
    finished = await call(api.port, "POST", f"/v1/calls/{call_id}:cancel")
    assert finished.status == 409 and finished.error["code"] == "Conflict"


async def test_batch_functions_and_health(api: FunctionsHttpServer, start_worker: Any) -> None:
    await start_worker()
    calls = [{"function": "add", "args": {"a": i, "b": 1}} for i in range(20)]
    reply = await call(api.port, "POST", "/v1/calls:batch", {"calls": calls})
    assert reply.status == 200
    ids = reply.json()["call_ids"]
    assert len(set(ids)) == 20
    results = [
        (await call(api.port, "GET", f"/v1/calls/{i}?wait_s=20")).json()["result"] for i in ids
    ]
    assert results == [i + 1 for i in range(20)]
    names = {
        spec["name"] for spec in (await call(api.port, "GET", "/v1/functions")).json()["functions"]
    }
    assert {"add", "multiply", "sleepy"} <= names
    assert (await call(api.port, "GET", "/healthz")).json() == {"ok": True}
    too_many = [{"function": "add", "args": [1, 1]}] * (limits.BATCH_SUBMIT_MAX + 1)
    reply = await call(api.port, "POST", "/v1/calls:batch", {"calls": too_many})
    assert reply.status == 400 and reply.error["code"] == "InvalidArgument"


@pytest.mark.parametrize(
    ("document", "error_type"),
    [
        ({"function": "nope", "args": {}}, "UnknownFunction"),
        ({"function": "add", "args": {"a": "x" * (limits.ARGS_BYTES_MAX + 1)}}, "ArgsTooLarge"),
        ({"function": "add", "args": [1, 2], "deadline": -1}, "DeadlineInPast"),
        (
            {"function": "add", "args": [1, 2], "deadline": "2001-01-01T00:00:00+00:00"},
            "DeadlineInPast",
        ),
        ({"function": "add", "args": [1, 2], "deadline": "2031-01-01T00:00:00"}, "InvalidArgument"),
        ({"function": "add", "criticality": "urgent"}, "InvalidArgument"),
        ({"function": "add", "surprise": 1}, "InvalidArgument"),
        ({"args": [1]}, "InvalidArgument"),
        ({"function": 7}, "InvalidArgument"),
    ],
)
async def test_submit_errors_are_400_with_codes(
    api: FunctionsHttpServer, document: dict[str, Any], error_type: str
) -> None:
    reply = await call(api.port, "POST", "/v1/calls", document)
    assert reply.status == 400, reply.body
    assert reply.error["type"] == error_type
    assert reply.error["message"]


async def test_request_errors(api: FunctionsHttpServer) -> None:
    port = api.port
    unknown = await call(port, "GET", "/v1/calls/" + "0000" + "0" * 20)
    assert unknown.status == 404 and unknown.error["type"] == "UnknownCall"
    malformed = await call(port, "GET", "/v1/calls/not-an-id")
    assert malformed.status == 400 and malformed.error["code"] == "InvalidArgument"
    assert (await call(port, "GET", "/v1/nowhere")).status == 404
    assert (await call(port, "GET", "/v1/calls")).status == 405
    assert (await call(port, "GET", "/v1/calls/x?wait_s=999")).status == 400
    not_json = await send(
        port, b"POST /v1/calls HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}"
    )
    assert not_json.status == 400 and not_json.error["code"] == "InvalidArgument"
    # A declared body over the bound is refused before it is read.
    huge = limits.HTTP_SUBMIT_BODY_BYTES_MAX + 1
    too_large = await send(
        port, f"POST /v1/calls HTTP/1.1\r\nContent-Length: {huge}\r\n\r\n".encode()
    )
    assert too_large.status == 413 and too_large.error["code"] == "TooLarge"
    big_head = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * HTTP_HEADER_BYTES_MAX + b"\r\n\r\n"
    assert (await send(port, big_head)).status == 431
    chunked = await send(port, b"POST /v1/calls HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.status == 411
    assert (await send(port, b"garbage\r\n\r\n")).status == 400


async def test_store_overload_maps_to_429_and_503(
    api: FunctionsHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def throttled(request: Any) -> str:
        raise Throttled("tenant over its ops quota", detail=3)

    monkeypatch.setattr(api.client, "submit_request", throttled)
    reply = await call(api.port, "POST", "/v1/calls", {"function": "add"})
    assert reply.status == 429 and reply.headers["retry-after"] == "3"
    assert reply.error["code"] == "Throttled"

    async def unavailable(request: Any) -> str:
        raise Unavailable("no leader")

    monkeypatch.setattr(api.client, "submit_request", unavailable)
    reply = await call(api.port, "POST", "/v1/calls", {"function": "add"})
    assert reply.status == 503 and reply.error["code"] == "Unavailable"


async def test_keep_alive_serves_many_requests_on_one_connection(api: FunctionsHttpServer) -> None:
    def session() -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        statuses = []
        for _ in range(5):
            connection.request(
                "POST",
                "/v1/calls",
                body=json.dumps({"function": "add", "args": [1, 2]}),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            json.loads(response.read())
            statuses.append(response.status)
        connection.close()
        return statuses

    assert await asyncio.to_thread(session) == [200] * 5


async def test_cli_http_command(server: ThreadServer, fx: FunctionsClient) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spindle.functions.cli",
            "http",
            "--addr",
            server.address,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        assert b"http api on" in line, line
        port = int(line.decode().rsplit(":", 1)[1])
        reply = await call(port, "POST", "/v1/calls", {"function": "add", "args": [1, 2]})
        assert reply.status == 200 and len(reply.json()["call_id"]) == 24
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 10) == 0
