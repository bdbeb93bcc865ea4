"""The HTTP submit API: a small HTTP/1.1 JSON server on stdlib asyncio, in front of a
`FunctionsClient`, so that programs in any language can submit calls without Spindle's
binary protocol.

    POST /v1/calls                {function, args, idempotency_key?, start_after?,
                                   deadline?, criticality?}        -> {call_id}
    POST /v1/calls:batch          {calls: [...]}                   -> {call_ids}
    GET  /v1/calls/{id}[?wait_s=] status, and the result once succeeded
    POST /v1/calls/{id}:cancel    the cancelled call's status
    GET  /v1/functions            the published function specs
    GET  /healthz                 {ok: true} once the store answers

`start_after` and `deadline` are seconds from now (a number) or an ISO 8601 time with a
zone. Errors are `{"error": {"code", "type", "message"}}` with the store's error codes:
400 for a bad request (InvalidArgument, UnknownFunction, ArgsTooLarge, DeadlineInPast),
404 UnknownCall, 409 Conflict, 413 body too large, 429 Throttled (with Retry-After), 503
Unavailable, 504 Timeout. Bodies need a Content-Length (no chunked uploads), bounded by
`HTTP_SUBMIT_BODY_BYTES_MAX`; connections are kept alive, bounded in number and idle time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import urllib.parse
from typing import Any

import msgspec

from spindle.functions import codec, limits
from spindle.functions.client import CallRequest, FunctionsClient, When
from spindle.functions.errors import UnknownCall, UnknownFunction
from spindle.functions.spec import CallInfo, CallStatus
from spindle.kv.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    SpindleError,
    Throttled,
    Timeout,
    TooLarge,
    Unavailable,
)

log = logging.getLogger("spindle.functions.http")

HTTP_HEADER_BYTES_MAX = 16 * 1024
"""Request line plus headers; a larger head gets 431 and the connection closes."""

HTTP_CONNECTIONS_MAX = 1_024
"""Open client connections; beyond it new ones get 503 and are closed."""

HTTP_IDLE_S_MAX = 60.0
"""A keep-alive connection idle (or sending its request) this long is closed."""

HTTP_WAIT_S_MAX = 30.0
"""Longest `wait_s` a GET /v1/calls/{id} may long-poll for the call to finish."""

RETRY_AFTER_S_DEFAULT = 1
"""Retry-After sent with 429 when the store's Throttled error names no pause."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class SubmitBody(msgspec.Struct, forbid_unknown_fields=True):
    function: str
    args: Any = None
    idempotency_key: str | None = None
    start_after: float | str | None = None
    deadline: float | str | None = None
    criticality: str | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    calls: list[SubmitBody]


class HttpError(Exception):
    """An error answered before the store is asked (malformed request, wrong route)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def status_of(error: SpindleError) -> int:
    """HTTP status for a store error. UnknownFunction is a NotFound in the taxonomy but a
    bad request here: the URL exists, the body names a function that does not."""
    if isinstance(error, UnknownCall):
        return 404
    if isinstance(error, UnknownFunction | InvalidArgument | TooLarge):
        return 400
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, Throttled):
        return 429
    if isinstance(error, Unavailable):
        return 503
    if isinstance(error, Timeout):
        return 504
    return 500


def _when(value: float | str | None, name: str) -> When | None:
    if value is None or isinstance(value, float | int):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be seconds from now or an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise InvalidArgument(f"{name} must carry a time zone")
    return parsed


def _request(body: SubmitBody) -> CallRequest:
    return CallRequest(
        function=body.function,
        args=body.args,
        idempotency_key=body.idempotency_key,
        start_after=_when(body.start_after, "start_after"),
        deadline=_when(body.deadline, "deadline"),
        criticality=body.criticality,
    )


def _call_document(info: CallInfo, result: bytes | None) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(info)
    if result is not None:
        document["result"] = codec.decode_json(result)
    return document


class FunctionsHttpServer:
    """Serves the submit API on `host:port` (port 0 picks a free one; see `port`)."""

    def __init__(self, client: FunctionsClient, host: str = "127.0.0.1", port: int = 0) -> None:
        self.client = client
        self.host = host
        self.requested_port = port
        self.server: asyncio.Server | None = None
        self.connections = 0

    @property
    def port(self) -> int:
        assert self.server is not None, "not started"
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._connection,
            self.host,
            self.requested_port,
            limit=HTTP_HEADER_BYTES_MAX,
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    # -- the connection loop --------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > HTTP_CONNECTIONS_MAX:
                await self._write(
                    writer,
                    503,
                    self._error_body("Unavailable", "Unavailable", "too many connections"),
                    keep_alive=False,
                )
                return
            while True:
                try:
                    request = await asyncio.wait_for(self._read_request(reader), HTTP_IDLE_S_MAX)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                except HttpError as error:
                    body = self._error_body(error.code, error.code, error.message)
                    await self._write(writer, error.status, body, keep_alive=False)
                    return
                if request is None:
                    return
                method, target, body, keep_alive = request
                status, payload, headers = await self._answer(method, target, body)
                await self._write(writer, status, payload, keep_alive=keep_alive, headers=headers)
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, str, bytes, bool] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "TooLarge", "request head too large") from None
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                return None  # the client closed between requests
            raise
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "InvalidArgument", "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "InvalidArgument", "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "InvalidArgument", "send a Content-Length, not chunked")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "InvalidArgument", "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "InvalidArgument", "bad Content-Length")
        if length > limits.HTTP_SUBMIT_BODY_BYTES_MAX:
            raise HttpError(
                413,
                "TooLarge",
                f"body of {length} bytes exceeds HTTP_SUBMIT_BODY_BYTES_MAX "
                f"({limits.HTTP_SUBMIT_BODY_BYTES_MAX})",
            )
        body = await reader.readexactly(length) if length else b""
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return method, target, body, keep_alive

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        *,
        keep_alive: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    @staticmethod
    def _error_body(code: str, error_type: str, message: str) -> bytes:
        return msgspec.json.encode(
            {"error": {"code": code, "type": error_type, "message": message}}
        )

    # -- routing --------------------------------------------------------------------------

    async def _answer(
        self, method: str, target: str, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        try:
            document = await self._route(method, target, body)
            return 200, msgspec.json.encode(document), {}
        except HttpError as error:
            return error.status, self._error_body(error.code, error.code, error.message), {}
        except msgspec.ValidationError as error:
            return 400, self._error_body("InvalidArgument", "InvalidArgument", str(error)), {}
        except msgspec.DecodeError as error:
            message = f"body is not JSON: {error}"
            return 400, self._error_body("InvalidArgument", "InvalidArgument", message), {}
        except SpindleError as error:
            status = status_of(error)
            headers: dict[str, str] = {}
            if status == 429:
                pause = error.detail if isinstance(error.detail, int | float) else None
                headers["Retry-After"] = str(max(1, round(pause or RETRY_AFTER_S_DEFAULT)))
            body_bytes = self._error_body(error.code.value, type(error).__name__, error.message)
            return status, body_bytes, headers
        except Exception:
            log.exception("%s %s failed", method, target)
            return 500, self._error_body("Internal", "Internal", "internal error"), {}

    async def _route(self, method: str, target: str, body: bytes) -> Any:
        url = urllib.parse.urlsplit(target)
        path = url.path
        query = urllib.parse.parse_qs(url.query)
        if path == "/healthz":
            self._method(method, "GET")
            await self.client.kv.ping()
            return {"ok": True}
        if path == "/v1/functions":
            self._method(method, "GET")
            specs = await self.client.queue.specs()
            return {"functions": [msgspec.to_builtins(spec) for spec in specs]}
        if path == "/v1/calls":
            self._method(method, "POST")
            submit = msgspec.json.decode(body, type=SubmitBody)
            request = _request(submit)
            return {"call_id": await self.client.submit_request(request)}
        if path == "/v1/calls:batch":
            self._method(method, "POST")
            batch = msgspec.json.decode(body, type=BatchBody)
            requests = [_request(call) for call in batch.calls]
            return {"call_ids": await self.client.submit_batch(requests)}
        prefix = "/v1/calls/"
        if path.startswith(prefix):
            rest = urllib.parse.unquote(path[len(prefix) :])
            if rest.endswith(":cancel"):
                self._method(method, "POST")
                return msgspec.to_builtins(await self.client.cancel(rest[: -len(":cancel")]))
            self._method(method, "GET")
            wait_s = self._wait_s(query)
            return await self._call(rest, wait_s)
        raise HttpError(404, "NotFound", f"no route {path}")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(405, "InvalidArgument", f"use {allowed}")

    @staticmethod
    def _wait_s(query: dict[str, list[str]]) -> float:
        values = query.get("wait_s")
        if not values:
            return 0.0
        try:
            wait_s = float(values[0])
        except ValueError:
            raise InvalidArgument("wait_s must be a number of seconds") from None
        if not 0 <= wait_s <= HTTP_WAIT_S_MAX:
            raise InvalidArgument(f"wait_s must be in [0, {HTTP_WAIT_S_MAX:.0f}]")
        return wait_s

    async def _call(self, call_id: str, wait_s: float) -> dict[str, Any]:
        give_up = time.monotonic() + wait_s
        while True:
            state = await self.client.queue.state(call_id)
            if state.state.final or time.monotonic() >= give_up:
                result = state.result if state.state == CallStatus.SUCCEEDED else None
                return _call_document(CallInfo.of(state), result)
            await asyncio.sleep(0.05)
