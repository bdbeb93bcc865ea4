"""The node's network shell: the binary protocol on asyncio (uvloop), plus a small HTTP
endpoint for health, status and Prometheus metrics.

Nothing clever happens here: frames are cut, decoded and handed to `Node.execute`; results
(or their futures) are encoded and written back. Responses produced in one event-loop turn
share one socket write.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import typing
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.errors import (
    ErrorCode,
    Internal,
    InvalidArgument,
    MalformedFrame,
    SpindleError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnknownOperation,
)
from spindle.kv.node import Node
from spindle.kv.shardmap import DEFAULT_TENANT
from spindle.kv.tenancy import FairQueue

log = logging.getLogger("spindle.server")

HTTP_REQUEST_BYTES_MAX = 8 * 1024
"""Largest HTTP request head the status endpoint reads."""
WRITE_BUFFER_HIGH_BYTES = 4 * 1024 * 1024
"""Responses queued for a client that does not read them: beyond this the server stops
reading that client's requests until the buffer drains below the low mark."""
WRITE_BUFFER_LOW_BYTES = 1024 * 1024
FLUSH_BYTES = 256 * 1024
"""Responses gathered before a socket write within one batch of requests."""
SHUTDOWN_GRACE_S = 10.0
"""How long a graceful shutdown waits for in-flight requests."""

_request_decoder = msgspec.msgpack.Decoder(p.AnyRequest)
_generic_decoder = msgspec.msgpack.Decoder()
_encoder = msgspec.msgpack.Encoder()
_HEADER = p.FRAME_HEADER


class ServerStats:
    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started_at = time.time()


class NodeProtocol(asyncio.Protocol):
    """One client connection: pipelined requests, responses in completion order."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self.node = server.node
        self.stats = server.stats
        self.tenant: str | None = None
        self.peer_node_id = 0
        """Set once a peer node authenticated this connection (PeerHello)."""
        """Who this connection acts as; None until it authenticates (see `auth`)."""
        self.last_active_s = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._deferred: list[p.Request] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._queued = 0
        """Requests decoded and waiting in the fair queue (part of `_inflight`)."""
        self._paused = False
        self._write_paused = False
        self._closing = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        self.stats.connections_open += 1
        self.stats.connections_total += 1
        if self.server.open_connections() >= limits.CONNECTIONS_PER_NODE_MAX:
            self._reply_error(0, Unavailable("too many connections; try another node or later"))
            self._flush()
            self._closing = True
            self.transport.close()
            return
        self.server.connections.add(self)
        self.tenant = self.server.default_tenant_for(transport.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.connections_open -= 1
        self.server.connections.discard(self)
        self._closing = True

    def pause_writing(self) -> None:
        """The client is not reading its responses: stop taking its requests."""
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        deferred, self._deferred = self._deferred, []
        for request in deferred:  # still counted in _queued
            self.server.dispatcher.submit(self.tenant or DEFAULT_TENANT, self, request)
        self._process()

    def data_received(self, data: bytes) -> None:
        self.last_active_s = time.monotonic()
        self._buffer += data
        self._process()

    def _can_take_requests(self) -> bool:
        return (
            not self._write_paused
            and not self._closing
            and self._inflight < limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX
            and self._queued < limits.QUEUED_PER_CONNECTION_MAX
        )

    def _process(self) -> None:
        """Handle the complete frames buffered, while responses drain and requests in
        flight stay under the bound. What is left waits in the buffer (at most one read
        chunk plus one partial frame) with socket reading paused: this is what bounds a
        connection's memory."""
        buffer = self._buffer
        offset = 0
        size = len(buffer)
        while size - offset >= 4 and self._can_take_requests():
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length > limits.FRAME_BYTES_MAX:
                self._fail_framing(length)
                return
            end = offset + 4 + length
            if end > size:
                break
            self._handle(bytes(buffer[offset + 4 : end]))
            offset = end
            if self._out_bytes >= FLUSH_BYTES:
                self._flush()  # may call pause_writing, which ends the loop
        if offset:
            del buffer[:offset]
        self._flush()
        self._set_reading()

    def _set_reading(self) -> None:
        if self.transport is None or self._closing:
            return
        pause = not self._can_take_requests()
        if pause and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        elif not pause and self._paused:
            self.transport.resume_reading()
            self._paused = False

    # -- requests -------------------------------------------------------------------------

    def _handle(self, body: bytes) -> None:
        try:
            request = _request_decoder.decode(body)
        except Exception as error:  # msgspec errors, and UnicodeDecodeError on bad UTF-8
            self._reply_bad_request(body, error)
            return
        op = type(request).__struct_config__.tag
        self.stats.requests[str(op)] += 1
        if isinstance(request, p.Auth):
            self._authenticate(request)
            return
        if isinstance(request, p.RaftMessages):
            if self.peer_node_id:  # one-way: no reply
                self.node.host.receive(self.peer_node_id, request.envelopes)
            return
        if isinstance(request, p.PeerHello):
            if self.node.peer_hello(request):
                self.peer_node_id = request.node_id
                self._reply(request.id, {"node_id": self.node.node_id})
            else:
                self._reply_error(request.id, Unauthenticated("wrong cluster secret"))
            return
        if isinstance(request, p.Forwarded):
            self._forwarded(request)
            return
        if self.tenant is None and not isinstance(request, p.Ping):
            self._reply_error(
                request.id,
                Unauthenticated("authenticate first: {op: auth, tenant: ..., token: ...}"),
            )
            return
        self._inflight += 1
        self._queued += 1
        self.server.dispatcher.submit(self.tenant or DEFAULT_TENANT, self, request)

    def _forwarded(self, request: p.Forwarded) -> None:
        """A peer relays a client's request: run it as that tenant, outside the fair
        queue (the first node already admitted it), and never forward it again."""
        if not self.peer_node_id:
            self._reply_error(request.id, Unauthenticated("forwarding is for cluster peers"))
            return
        try:
            inner = _request_decoder.decode(request.body)
            result = self.node.execute(request.tenant, inner, forwarded=True)
        except SpindleError as error:
            self._reply_error(request.id, error)
            return
        except Exception as error:
            self._reply_bad_request(request.body, error)
            return
        if isinstance(result, Coroutine):
            result = asyncio.ensure_future(result)
        if isinstance(result, asyncio.Future):
            self._inflight += 1
            request_id = request.id
            result.add_done_callback(lambda done: self._completed(request_id, done))
        else:
            self._reply(request.id, result)

    def _authenticate(self, request: p.Auth) -> None:
        if self.node.tenants.authenticate(request.tenant, request.token):
            self.tenant = request.tenant
            self._reply(request.id, {"tenant": request.tenant})
        else:
            self.tenant = None
            self._reply_error(request.id, Unauthenticated("wrong tenant or token"))

    def execute(self, request: p.Request) -> None:
        """Run one request the dispatcher picked (it was counted in flight on arrival).
        While the client is not draining its responses, requests wait here instead."""
        if self._write_paused:
            self._deferred.append(request)
            return
        self._queued -= 1
        try:
            result = self.node.execute(self.tenant or DEFAULT_TENANT, request)
        except SpindleError as error:
            self._inflight -= 1
            self._reply_error(request.id, error)
            return
        except Exception as error:  # a bug: report it, keep serving
            self._inflight -= 1
            log.exception("request %r failed", type(request).__name__)
            self._reply_error(request.id, Internal(f"{type(error).__name__}: {error}"))
            return
        if isinstance(result, Coroutine):
            result = asyncio.ensure_future(result)
        if isinstance(result, asyncio.Future):
            request_id = request.id
            result.add_done_callback(lambda done: self._completed(request_id, done))
        else:
            self._inflight -= 1
            self._reply(request.id, result)
            if self._out_bytes >= FLUSH_BYTES:
                self._flush()  # may call pause_writing

    def after_dispatch(self) -> None:
        """Called once per dispatcher turn for connections that ran requests."""
        self._flush()
        if self._buffer and self._can_take_requests():
            self._process()  # decode more of this connection's pipeline
        elif self._paused and not self._write_paused:
            self._process()
        if self._inflight == 0:
            self.server.idle.set()

    def _completed(self, request_id: int, done: asyncio.Future[Any]) -> None:
        self._inflight -= 1
        if done.cancelled():
            self._reply_error(request_id, Internal("request cancelled (server shutting down)"))
        else:
            error = done.exception()
            if error is None:
                self._reply(request_id, done.result())
            elif isinstance(error, SpindleError):
                self._reply_error(request_id, error)
            else:
                log.error("request %d failed", request_id, exc_info=error)
                self._reply_error(request_id, Internal(f"{type(error).__name__}: {error}"))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if (
            self._paused
            and self._inflight < limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX // 2
            and not self._write_paused
        ):
            self._process()
        if self._inflight == 0:
            self.server.idle.set()

    def _reply(self, request_id: int, result: Any) -> None:
        try:
            body = _encoder.encode(p.Response(request_id, result))
        except (TypeError, msgspec.EncodeError) as error:
            body = _encoder.encode(_error_response(request_id, Internal(f"encode: {error}")))
        if len(body) > limits.FRAME_BYTES_MAX:
            # The client would refuse the frame and drop the connection (and every other
            # request on it): answer this request alone with a clear error instead.
            self._reply_error(
                request_id,
                TooLarge(
                    f"the response would be {len(body)} bytes, over the frame limit of "
                    f"{limits.FRAME_BYTES_MAX}; ask for fewer keys at a time"
                ),
            )
            return
        self._out.append(_HEADER.pack(len(body)) + body)
        self._out_bytes += len(body)

    def _reply_error(self, request_id: int, error: SpindleError) -> None:
        self.stats.errors[error.code.value] += 1
        body = _encoder.encode(_error_response(request_id, error))
        self._out.append(_HEADER.pack(len(body)) + body)
        self._out_bytes += len(body)

    def _reply_bad_request(self, body: bytes, error: Exception) -> None:
        """The frame was intact but its body was not a valid request: answer with the
        request id when one can be found, so the client can match the error."""
        try:
            generic = _generic_decoder.decode(body)
        except Exception:  # not msgpack, or a str that is not UTF-8
            self._reply_error(0, MalformedFrame(f"frame body is not msgpack: {error}"))
            return
        request_id = 0
        if isinstance(generic, dict):
            raw_id = generic.get("id")
            if isinstance(raw_id, int) and not isinstance(raw_id, bool):
                request_id = raw_id
            op = generic.get("op")
            if not isinstance(op, str) or op not in p.OPERATIONS:
                known = ", ".join(sorted(p.OPERATIONS))
                self._reply_error(
                    request_id, UnknownOperation(f"unknown operation {op!r}; known: {known}")
                )
                return
        else:
            self._reply_error(0, InvalidArgument("a request is a msgpack map"))
            return
        self._reply_error(request_id, InvalidArgument(f"invalid request: {error}"))

    def _fail_framing(self, length: int) -> None:
        """A declared length beyond the limit: the stream cannot be trusted any more."""
        self._reply_error(
            0,
            TooLarge(
                f"frame of {length} bytes exceeds the limit of {limits.FRAME_BYTES_MAX}; "
                "closing the connection"
            ),
        )
        self._flush()
        self._buffer.clear()
        assert self.transport is not None
        self.transport.close()
        self._closing = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()
        self._out_bytes = 0

    def stop_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True
            self._closing = True

    @property
    def inflight(self) -> int:
        return self._inflight


def _error_response(request_id: int, error: SpindleError) -> p.Response:
    return p.Response(request_id, None, p.ErrorBody(error.code.value, error.message, error.detail))


class Dispatcher:
    """Runs requests in weighted-fair order across tenants (deficit round robin).

    Front ends decode requests and submit them here instead of running them inline; each
    event-loop turn runs at most `limits.DISPATCH_BATCH_MAX` of them and then lets I/O in.
    So a tenant flooding the node queues behind its own requests, while another tenant's
    request waits at most about one round. Bounded: every queued request counts against
    its connection's in-flight limit.
    """

    def __init__(self, node: Node) -> None:
        self.queue: FairQueue[tuple[Any, p.Request]] = FairQueue(node.quotas.weight)
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, tenant: str, connection: Any, request: p.Request) -> None:
        self.queue.push(tenant, (connection, request))
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        queue = self.queue
        touched: set[Any] = set()
        for _ in range(min(len(queue), limits.DISPATCH_BATCH_MAX)):
            connection, request = queue.pop()
            connection.execute(request)
            touched.add(connection)
        for connection in touched:
            connection.after_dispatch()
        if queue:
            assert self._loop is not None
            self._loop.call_soon(self._run)
        else:
            self._scheduled = False


class NodeServer:
    """Serves one node on a binary-protocol port and an HTTP port."""

    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        http_port: int | None,
        *,
        loopback_default_tenant: bool = True,
    ) -> None:
        self.node = node
        self.loopback_default_tenant = loopback_default_tenant
        """Like Redis's protected mode: unauthenticated loopback clients act as the default
        tenant; everyone else must authenticate."""
        self.dispatcher = Dispatcher(node)
        self.extra_connections: Callable[[], int] = lambda: 0
        """Connections of other front ends (RESP) counted against the node's bound."""
        self.host = host
        self.port = port
        self.http_port = http_port
        self.stats = ServerStats()
        self.connections: set[NodeProtocol] = set()
        self.idle = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._http: asyncio.Server | None = None
        self._purger: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.resp: Any = None
        """The RESP front end serving this node, if any (for status)."""

    def open_connections(self) -> int:
        return len(self.connections) + self.extra_connections()

    def default_tenant_for(self, peer: Any) -> str | None:
        if not self.loopback_default_tenant or not isinstance(peer, tuple):
            return None
        try:
            return DEFAULT_TENANT if ipaddress.ip_address(peer[0]).is_loopback else None
        except ValueError:
            return None

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(limits.IDLE_TIMEOUT_S / 4)
            cutoff = time.monotonic() - limits.IDLE_TIMEOUT_S
            for connection in list(self.connections):
                idle = connection.inflight == 0 and connection.last_active_s < cutoff
                if idle and connection.transport is not None:
                    connection.transport.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: NodeProtocol(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.http_port is not None:
            self._http = await asyncio.start_server(
                self._serve_http, self.host, self.http_port, reuse_address=True
            )
            self.http_port = self._http.sockets[0].getsockname()[1]
        self.node.set_address(self.host, self.port, self.http_port)
        self._purger = asyncio.create_task(self._purge_loop())
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def _purge_loop(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.node.purge_expired()
            except Exception:
                log.exception("TTL purge pass failed")

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, let in-flight requests finish, make everything durable."""
        for task in (self._purger, self._sweeper):
            if task is not None:
                task.cancel()
        for server in (self._server, self._http):
            if server is not None:
                server.close()
        for connection in list(self.connections):
            connection.stop_reading()
        deadline = time.monotonic() + grace_s
        while any(c.inflight for c in self.connections) and time.monotonic() < deadline:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
        for connection in list(self.connections):
            connection._flush()
            if connection.transport is not None:
                connection.transport.close()
        await self.node.close()

    # -- HTTP -----------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            if len(head) > HTTP_REQUEST_BYTES_MAX:
                raise ValueError("request head too large")
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            method, path = parts[0].decode(), parts[1].decode().split("?", 1)[0]
            status, content_type, body = self._http_route(method, path)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            writer.close()
            return
        except (ValueError, IndexError, UnicodeDecodeError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    def _http_route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        if path == "/health":
            failure = self.node.host.failure
            if failure is not None:
                body = json.dumps({"status": "failed", "error": repr(failure)}) + "\n"
                return 503, "application/json", body.encode()
            return 200, "application/json", b'{"status": "ok"}\n'
        if path == "/status":
            return 200, "application/json", json.dumps(self.status(), indent=2).encode()
        if path == "/metrics":
            from spindle.kv.metrics import render_metrics

            return 200, "text/plain; version=0.0.4", render_metrics(self)
        return 404, "text/plain", b"not found: try /health, /status, /metrics\n"

    def status(self) -> dict[str, Any]:
        status = self.node.status()
        status["addresses"] = {
            "binary": f"{self.host}:{self.port}",
            "http": f"{self.host}:{self.http_port}" if self.http_port is not None else None,
            "resp": self.resp.status()["address"] if self.resp is not None else None,
        }
        if self.resp is not None:
            status["resp"] = self.resp.status()
        status["connections_open"] = self.stats.connections_open
        status["requests"] = dict(self.stats.requests)
        status["errors"] = dict(self.stats.errors)
        return status


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}

__all__ = ["ErrorCode", "NodeProtocol", "NodeServer"]
