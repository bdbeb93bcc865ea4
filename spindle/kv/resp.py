"""Redis-protocol (RESP2/RESP3) front end: existing Redis clients and tools talk to Spindle.

A RESP connection is one more front end of the node: it turns each Redis command into one
or more binary-protocol requests (spindle/kv/protocol.py) and submits them to the node
server's fair dispatcher, exactly as a binary-protocol connection does, so tenants are
served fairly across both protocols and quotas, access control and accounting apply the
same way. Same keyspaces, same keys: a key written by one protocol is read by the other.

Unlike the binary protocol, RESP replies must come back in request order: each command
takes a slot in a per-connection queue, and slots are written out in order as their
results complete. See docs/protocol.md, "RESP front end", for the commands and bounds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
import typing
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv import resp_codec as rc
from spindle.kv.errors import (
    Conflict,
    ErrorCode,
    Internal,
    NotFound,
    SpindleError,
)
from spindle.kv.node import is_pending
from spindle.kv.resp_codec import (
    NULL_RESP2,
    NULL_RESP3,
    OK,
    ONE,
    PONG,
    ZERO,
    RespProtocolError,
    Simple,
    Verbatim,
    bulk,
    error,
    integer,
)
from spindle.kv.server import (
    SHUTDOWN_GRACE_S,
    WRITE_BUFFER_HIGH_BYTES,
    WRITE_BUFFER_LOW_BYTES,
    NodeServer,
)
from spindle.kv.shardmap import DEFAULT_KEYSPACE, DEFAULT_TENANT

log = logging.getLogger("spindle.resp")

DEFAULT_RESP_PORT = 6380
"""Redis's port plus one, so a local redis-server and Spindle can run side by side."""
PIPELINE_DEPTH_MAX = limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX
"""Commands one connection may have parsed but not yet answered; beyond it the server
stops reading the socket until replies drain (back-pressure, no error)."""
SCAN_CURSORS_MAX = 16_384
"""SCAN cursors remembered per RESP server (least recently used evicted; an evicted cursor
answers `-ERR invalid cursor`). Shared by all connections so that a client whose pool
hands the next SCAN call to another connection still continues; each cursor is bound to
its tenant and keyspace. Worst case about 64 MiB (4 KiB keys)."""
SCAN_COUNT_DEFAULT = 10
"""SCAN's COUNT when none is given, as in Redis."""
FULL_SCAN_KEYS_MAX = 1_000_000
"""Most keys DBSIZE and KEYS walk; beyond it they answer an error instead of blocking a
connection (and the node's read quota) for long."""
FLUSH_BYTES = 256 * 1024
"""Replies gathered before a socket write within one batch of commands."""
REDIS_VERSION = "7.2.0"
"""The Redis version Spindle reports (HELLO, INFO): the command set it follows."""
CONSISTENCY_LEVELS = p.CONSISTENCY_LEVELS
"""Levels `SPINDLE.CONSISTENCY <level> [max-staleness-ms]` accepts (docs/protocol.md);
a connection starts at strong, as Redis users expect."""
DEFAULT_MAX_STALENESS_MS = 1000
"""The bound `SPINDLE.CONSISTENCY bounded` uses when none is given."""

Done = Callable[[Any, SpindleError | None], None]
"""Continuation of one node request: (result, None) or (None, error)."""
Handler = Callable[["RespConnection", list[bytes], "_Slot"], None]


class _Slot:
    """One command's place in the reply order."""

    __slots__ = ("close", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False


class _Gather:
    """Results of several node requests in order; `finish` runs once all are in, with the
    first error seen (if any)."""

    __slots__ = ("error", "finish", "left", "results")

    def __init__(self, count: int, finish: Callable[[list[Any], SpindleError | None], None]):
        self.results: list[Any] = [None] * count
        self.left = count
        self.error: SpindleError | None = None
        self.finish = finish

    def part(self, index: int) -> Done:
        def done(result: Any, failure: SpindleError | None) -> None:
            if failure is not None and self.error is None:
                self.error = failure
            self.results[index] = result
            self.left -= 1
            if self.left == 0:
                self.finish(self.results, self.error)

        return done


@dataclass(frozen=True)
class _Cursor:
    tenant: str
    keyspace: str
    position: bytes


class CursorTable:
    """SCAN's integer cursors mapped to Spindle's byte cursors (bounded, LRU). Ids are
    random 63-bit integers: unguessable, and they fit clients that parse cursors as
    unsigned 64-bit integers."""

    def __init__(self, capacity: int = SCAN_CURSORS_MAX) -> None:
        self.capacity = capacity
        self._cursors: OrderedDict[int, _Cursor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cursors)

    def add(self, cursor: _Cursor) -> int:
        cursor_id = secrets.randbits(63) or 1
        self._cursors[cursor_id] = cursor
        while len(self._cursors) > self.capacity:
            self._cursors.popitem(last=False)
        return cursor_id

    def get(self, cursor_id: int, tenant: str, keyspace: str) -> bytes | None:
        cursor = self._cursors.get(cursor_id)
        if cursor is None or cursor.tenant != tenant or cursor.keyspace != keyspace:
            return None
        self._cursors.move_to_end(cursor_id)
        return cursor.position


class RespStats:
    def __init__(self) -> None:
        self.connections_total = 0
        self.commands = 0
        self.protocol_errors = 0
        self.rejected_connections = 0


class RespConnection(asyncio.Protocol):
    """One Redis client connection: pipelined commands, replies in request order."""

    def __init__(self, resp: RespServer) -> None:
        self.resp = resp
        self.node_server = resp.node_server
        self.node = resp.node_server.node
        self.client_id = resp.new_client_id()
        self.tenant: str | None = None
        """Who this connection acts as; None until it authenticates."""
        self.keyspace = DEFAULT_KEYSPACE
        self.consistency = CONSISTENCY_LEVELS[0]
        self.max_staleness_ms = DEFAULT_MAX_STALENESS_MS
        self._written: dict[tuple[str, int], int] = {}
        """(keyspace, shard id) -> version of this connection's latest write there, for
        read-your-writes."""
        self.resp3 = False
        self.name = b""
        self.lib_name = b""
        self.lib_version = b""
        self.peer = ""
        self.local = ""
        self.last_command = b""
        self.last_active_s = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanner = rc.CommandScanner()
        self._reader = hiredis.Reader()
        self._slots: deque[_Slot] = deque()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._calls: dict[int, tuple[str, Done]] = {}
        self._next_request_id = 0
        self._inflight = 0
        self._deferred: list[p.Request] = []
        self._paused = False
        self._write_paused = False
        self._closing = False
        self._flush_scheduled = False
        self._process_scheduled = False
        self._eof = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        self.resp.stats.connections_total += 1
        if self.node_server.open_connections() >= limits.CONNECTIONS_PER_NODE_MAX:
            self.resp.stats.rejected_connections += 1
            self.transport.write(error("ERR max number of clients reached"))
            self._closing = True
            self.transport.close()
            return
        self.resp.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = _address(peer)
        self.local = _address(transport.get_extra_info("sockname"))
        self.tenant = self.node_server.default_tenant_for(peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resp.connections.discard(self)
        self._closing = True
        self._buffer.clear()
        self._slots.clear()
        self._out.clear()

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop taking its commands."""
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        deferred, self._deferred = self._deferred, []
        for request in deferred:
            tenant = self._calls[request.id][0]
            self.node_server.dispatcher.submit(tenant, self, request)
        self._process()

    def data_received(self, data: bytes) -> None:
        self.last_active_s = time.monotonic()
        if self._closing:
            return
        self._buffer += data
        self._process()

    def eof_received(self) -> bool:
        """The client finished sending (`printf 'SET a b\r\n' | nc ...`): answer what it
        sent, then close."""
        self._eof = True
        self._process()
        return bool(self._slots)

    # -- parsing --------------------------------------------------------------------------

    def _can_take_commands(self) -> bool:
        return (
            not self._write_paused
            and not self._closing
            and len(self._slots) < PIPELINE_DEPTH_MAX
            and self._inflight < limits.INFLIGHT_REQUESTS_PER_CONNECTION_MAX
        )

    def _process(self) -> None:
        """Run the complete commands buffered while the bounds allow; the rest waits in
        the buffer (at most one read chunk plus one partial command, whose declared size
        the scanner has checked) with socket reading paused."""
        self._process_scheduled = False
        buffer = self._buffer
        scanner = self._scanner
        reader = self._reader
        start = 0
        try:
            while self._can_take_commands():
                end = scanner.scan(buffer, start)
                if end < 0:
                    break
                kind = scanner.kind
                if kind == rc.MULTIBULK:
                    reader.feed(typing.cast(bytes, buffer), start, end - start)
                    args = reader.gets()
                    assert isinstance(args, list), args
                    self._command(args)
                elif kind == rc.INLINE:
                    args = rc.split_inline(bytes(buffer[start:end]))
                    if args:
                        self._command(args)
                start = end
                if self._out_bytes >= FLUSH_BYTES:
                    self._flush()
        except RespProtocolError as failure:
            self._protocol_error(str(failure))
            return
        if start:
            del buffer[:start]
            scanner.shift(start)
        self._flush()
        self._set_reading()

    def _set_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        pause = not self._can_take_commands()
        if pause and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        elif not pause and self._paused:
            self.transport.resume_reading()
            self._paused = False

    def _protocol_error(self, message: str) -> None:
        """Answer after the replies already owed, then close, as Redis does."""
        self.resp.stats.protocol_errors += 1
        self._buffer.clear()
        slot = _Slot()
        slot.close = True
        self._slots.append(slot)
        self._closing = True
        self._answer(slot, error(f"ERR Protocol error: {message}"))
        self._flush()

    def _command(self, args: list[bytes]) -> None:
        self.resp.stats.commands += 1
        slot = _Slot()
        self._slots.append(slot)
        name = args[0].lower()
        spec = COMMANDS.get(name)
        if spec is None:
            self._answer(slot, _unknown_command(args))
            return
        self.last_command = name
        arity = spec.arity
        if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            self._answer(slot, _wrong_arity(spec.name))
            return
        if self.tenant is None and not spec.no_auth:
            self._answer(slot, NOAUTH)
            return
        spec.handler(self, args, slot)

    # -- replies --------------------------------------------------------------------------

    def _answer(self, slot: _Slot, data: bytes) -> None:
        slot.data = data
        slots = self._slots
        if not slots or slots[0] is not slot:
            return
        out = self._out
        while slots and slots[0].data is not None:
            done = slots.popleft()
            assert done.data is not None
            out.append(done.data)
            self._out_bytes += len(done.data)
            if done.close:
                self._flush()
                self._closing = True
                slots.clear()
                if self.transport is not None:
                    self.transport.close()
                return
        if self._paused and not self._process_scheduled and self._can_take_commands():
            self._process_scheduled = True
            asyncio.get_running_loop().call_soon(self._process)
        elif self._eof and not slots and self.transport is not None:
            self._flush()
            self.transport.close()

    def _encode(self, value: Any) -> bytes:
        return rc.encode(value, self.resp3)

    @property
    def _null(self) -> bytes:
        return NULL_RESP3 if self.resp3 else NULL_RESP2

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()
        self._out_bytes = 0

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    # -- node requests through the fair dispatcher ----------------------------------------

    def _call(self, request: p.Request, done: Done) -> None:
        """Submit one request for this connection's tenant; `done` gets its outcome."""
        tenant = self.tenant
        assert tenant is not None, "commands that reach the node need a tenant"
        if isinstance(request, p.ReadRequest):
            request.consistency = self.consistency
            if self.consistency == "bounded":
                request.max_staleness_ms = self.max_staleness_ms
            elif self.consistency == "read_your_writes":
                shard_id = self._shard_of(request)
                request.min_version = self._written.get((request.keyspace, shard_id), 0)
        elif isinstance(request, p.KeyspaceRequest) and self.consistency == "read_your_writes":
            done = self._noting_version(request, done)
        self._next_request_id += 1
        request.id = self._next_request_id
        self._calls[request.id] = (tenant, done)
        self._inflight += 1
        self.node_server.dispatcher.submit(tenant, self, request)

    def _shard_of(self, request: p.KeyspaceRequest) -> int:
        """The shard of the request's (first) key; 0 if it has none or is unroutable."""
        key = getattr(request, "key", None)
        if key is None:
            keys = getattr(request, "keys", None) or [op.key for op in getattr(request, "ops", [])]
            key = keys[0] if keys else None
        if key is None or self.tenant is None:
            return 0
        keyspace = self.node.catalog.keyspaces.get(f"{self.tenant}/{request.keyspace}")
        if keyspace is None:
            return 0
        return keyspace.shard_for(keyspace.internal_key(key)).shard_id

    def _noting_version(self, request: p.KeyspaceRequest, done: Done) -> Done:
        key = (request.keyspace, self._shard_of(request))

        def noted(result: Any, failure: SpindleError | None) -> None:
            version = getattr(result, "version", None)
            if isinstance(version, int) and version > self._written.get(key, 0):
                self._written[key] = version
            done(result, failure)

        return noted

    def execute(self, request: p.Request) -> None:
        """Run one request the dispatcher picked. While the client is not draining its
        replies, requests wait here instead (bounded by the pipeline depth)."""
        if self._write_paused:
            self._deferred.append(request)
            return
        tenant, done = self._calls.pop(request.id)
        try:
            result = self.node.execute(tenant, request)
        except SpindleError as failure:
            self._inflight -= 1
            done(None, failure)
            return
        except Exception as failure:  # a bug: report it, keep serving
            self._inflight -= 1
            log.exception("request %r failed", type(request).__name__)
            done(None, Internal(f"{type(failure).__name__}: {failure}"))
            return
        if not is_pending(result):
            self._inflight -= 1
            done(result, None)
        elif isinstance(result, asyncio.Future):
            result.add_done_callback(functools.partial(self._completed, done))
        else:
            future = asyncio.ensure_future(result)
            future.add_done_callback(functools.partial(self._completed, done))

    def after_dispatch(self) -> None:
        """Called once per dispatcher turn for connections that ran requests."""
        self._flush()
        if self._paused and not self._write_paused and not self._closing:
            self._process()

    def _completed(self, done: Done, future: asyncio.Future[Any]) -> None:
        self._inflight -= 1
        if future.cancelled():
            done(None, Internal("request cancelled (server shutting down)"))
        else:
            failure = future.exception()
            if failure is None:
                done(future.result(), None)
            elif isinstance(failure, SpindleError):
                done(None, failure)
            else:
                log.error("request failed", exc_info=failure)
                done(None, Internal(f"{type(failure).__name__}: {failure}"))
        if self._inflight == 0:
            self._flush()  # nothing else to wait for: one write, no extra loop turn
        else:
            self._schedule_flush()

    def _reply_with(self, slot: _Slot, render: Callable[[Any], bytes]) -> Done:
        """A continuation that answers `slot` with `render(result)`, or the error."""

        def done(result: Any, failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, render(result))

        return done

    def _error(self, failure: SpindleError) -> bytes:
        self.node_server.stats.errors[failure.code.value] += 1
        return spindle_error(failure)

    @property
    def inflight(self) -> int:
        return self._inflight

    def stop_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        self._closing = True

    # -- connection commands --------------------------------------------------------------

    def _ping(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) > 2:
            self._answer(slot, _wrong_arity("ping"))
        else:
            self._answer(slot, PONG if len(args) == 1 else bulk(args[1]))

    def _echo(self, args: list[bytes], slot: _Slot) -> None:
        self._answer(slot, bulk(args[1]))

    def _quit(self, args: list[bytes], slot: _Slot) -> None:
        slot.close = True
        self._answer(slot, OK)

    def _auth(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) > 3:
            self._answer(slot, error("ERR syntax error"))
            return
        user = args[1] if len(args) == 3 else DEFAULT_TENANT.encode()
        self._answer(slot, OK if self._authenticate(user, args[-1]) else WRONGPASS)

    def _authenticate(self, user: bytes, token: bytes) -> bool:
        """A failed AUTH leaves the connection as it was, as in Redis."""
        try:
            tenant, secret = user.decode(), token.decode()
        except UnicodeDecodeError:
            return False
        if not self.node.tenants.authenticate(tenant, secret):
            return False
        self.tenant = tenant
        return True

    def _hello(self, args: list[bytes], slot: _Slot) -> None:
        protocol = 3 if self.resp3 else 2
        if len(args) >= 2:
            version = _parse_int(args[1])
            if version is None:
                self._answer(slot, error("ERR Protocol version is not an integer or out of range"))
                return
            if version not in (2, 3):
                self._answer(slot, error("NOPROTO unsupported protocol version"))
                return
            protocol = version
        index = 2
        auth: tuple[bytes, bytes] | None = None
        name: bytes | None = None
        while index < len(args):
            option = args[index].upper()
            if option == b"AUTH" and index + 2 < len(args):
                auth = (args[index + 1], args[index + 2])
                index += 3
            elif option == b"SETNAME" and index + 1 < len(args):
                name = args[index + 1]
                index += 2
            else:
                self._answer(slot, error(f"ERR Syntax error in HELLO option '{_show(option)}'"))
                return
        if auth is not None and not self._authenticate(*auth):
            self._answer(slot, WRONGPASS)
            return
        if self.tenant is None:
            self._answer(slot, NOAUTH_HELLO)
            return
        if name is not None:
            if not _valid_name(name):
                self._answer(slot, BAD_CLIENT_NAME)
                return
            self.name = name
        self.resp3 = protocol == 3
        self._answer(
            slot,
            self._encode(
                {
                    "server": "spindle",
                    "version": REDIS_VERSION,
                    "proto": protocol,
                    "id": self.client_id,
                    "mode": "standalone",
                    "role": "master",
                    "modules": [],
                }
            ),
        )

    def _reset(self, args: list[bytes], slot: _Slot) -> None:
        self.resp3 = False
        self.name = b""
        self.keyspace = DEFAULT_KEYSPACE
        self.consistency = CONSISTENCY_LEVELS[0]
        self.max_staleness_ms = DEFAULT_MAX_STALENESS_MS
        self._written.clear()
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.tenant = self.node_server.default_tenant_for(peer)
        self._answer(slot, b"+RESET\r\n")

    def _select(self, args: list[bytes], slot: _Slot) -> None:
        index = _parse_int(args[1])
        if index is None:
            self._answer(slot, NOT_INTEGER)
        elif index == 0:
            self.keyspace = DEFAULT_KEYSPACE
            self._answer(slot, OK)
        elif index < 0:
            self._answer(slot, error("ERR DB index is out of range"))
        else:
            self._use_keyspace(f"db{index}", slot, error("ERR DB index is out of range"))

    def _keyspace(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) == 1:
            self._answer(slot, bulk(self.keyspace.encode()))
            return
        try:
            name = args[1].decode()
        except UnicodeDecodeError:
            self._answer(slot, error("ERR a keyspace name is UTF-8"))
            return
        self._use_keyspace(name, slot, error(f"ERR keyspace '{name}' does not exist"))

    def _use_keyspace(self, name: str, slot: _Slot, missing: bytes) -> None:
        def done(result: Any, failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            elif any(summary.name == name for summary in result):
                self.keyspace = name
                self._answer(slot, OK)
            else:
                self._answer(slot, missing)

        self._call(p.ListKeyspaces(id=0), done)

    def _consistency(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) == 1:
            self._answer(slot, bulk(self.consistency.encode()))
            return
        level = args[1].decode(errors="replace").lower()
        if level not in CONSISTENCY_LEVELS or len(args) > 3:
            supported = ", ".join(CONSISTENCY_LEVELS)
            self._answer(
                slot,
                error(
                    f"ERR unsupported consistency level '{level}'; supported: {supported} "
                    "(bounded takes a max staleness in ms)"
                ),
            )
            return
        staleness_ms = DEFAULT_MAX_STALENESS_MS
        if len(args) == 3:
            if level != "bounded" or not args[2].isdigit() or int(args[2]) <= 0:
                self._answer(slot, error("ERR only bounded takes a max staleness (ms > 0)"))
                return
            staleness_ms = int(args[2])
        self.consistency = level
        self.max_staleness_ms = staleness_ms
        self._answer(slot, OK)

    def _client(self, args: list[bytes], slot: _Slot) -> None:
        sub = args[1].upper()
        if sub == b"SETNAME" and len(args) == 3:
            if not _valid_name(args[2]):
                self._answer(slot, BAD_CLIENT_NAME)
                return
            self.name = args[2]
            self._answer(slot, OK)
        elif sub == b"GETNAME" and len(args) == 2:
            self._answer(slot, bulk(self.name) if self.name else self._null)
        elif sub == b"ID" and len(args) == 2:
            self._answer(slot, integer(self.client_id))
        elif sub == b"INFO" and len(args) == 2:
            self._answer(slot, self._encode(Verbatim(self.describe() + "\n")))
        elif sub == b"LIST":
            lines = [c.describe() for c in self.resp.connections if c.tenant == self.tenant]
            self._answer(slot, self._encode(Verbatim("".join(f"{line}\n" for line in lines))))
        elif sub == b"SETINFO" and len(args) == 4:
            attribute = args[2].upper()
            if attribute == b"LIB-NAME":
                self.lib_name = args[3]
            elif attribute == b"LIB-VER":
                self.lib_version = args[3]
            else:
                self._answer(slot, error(f"ERR Unrecognized option '{_show(args[2])}'"))
                return
            self._answer(slot, OK)
        elif sub in (b"NO-EVICT", b"NO-TOUCH") and len(args) == 3:
            self._answer(slot, OK)
        elif sub == b"HELP":
            lines = [
                "CLIENT <subcommand>. Spindle supports:",
                "SETNAME <name>, GETNAME, ID, INFO, LIST, SETINFO <LIB-NAME|LIB-VER> <value>",
            ]
            self._answer(slot, self._encode([Simple(line) for line in lines]))
        else:
            self._answer(slot, _unknown_subcommand(args))

    def describe(self) -> str:
        """This connection as one CLIENT LIST line."""
        return (
            f"id={self.client_id} addr={self.peer} laddr={self.local} "
            f"name={_show(self.name)} db=0 keyspace={self.keyspace} "
            f"user={self.tenant or ''} resp={3 if self.resp3 else 2} "
            f"cmd={_show(self.last_command)} lib-name={_show(self.lib_name)} "
            f"lib-ver={_show(self.lib_version)}"
        )

    def _command_info(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) == 1:
            self._answer(slot, self._encode([spec.info() for spec in COMMAND_LIST]))
            return
        sub = args[1].upper()
        if sub == b"COUNT" and len(args) == 2:
            self._answer(slot, integer(len(COMMAND_LIST)))
        elif sub == b"INFO":
            names = [a.lower() for a in args[2:]]
            specs = [COMMANDS.get(n) for n in names] if names else list(COMMAND_LIST)
            self._answer(slot, self._encode([s.info() if s else None for s in specs]))
        elif sub == b"DOCS":
            names = [a.lower() for a in args[2:]] or [s.name.encode() for s in COMMAND_LIST]
            docs = {s.name: s.docs() for n in names if (s := COMMANDS.get(n)) is not None}
            self._answer(slot, self._encode(docs))
        elif sub == b"LIST" and len(args) == 2:
            self._answer(slot, self._encode([spec.name for spec in COMMAND_LIST]))
        else:
            self._answer(slot, _unknown_subcommand(args))

    def _config(self, args: list[bytes], slot: _Slot) -> None:
        """CONFIG GET answers the few settings tools ask for (redis-benchmark reads `save`
        and `appendonly`); nothing can be set."""
        sub = args[1].upper()
        if sub == b"GET" and len(args) >= 3:
            found: dict[str, str] = {}
            for pattern in args[2:]:
                try:
                    matches = rc.compile_glob(pattern.lower())
                except ValueError as failure:
                    self._answer(slot, error(f"ERR {failure}"))
                    return
                for key, value in CONFIG.items():
                    if matches(key.encode()):
                        found[key] = value
            self._answer(slot, self._encode(found))
        elif sub == b"RESETSTAT" and len(args) == 2:
            self._answer(slot, OK)
        else:
            self._answer(
                slot,
                error(
                    "ERR CONFIG SET is not supported: "
                    "Spindle's settings are flags of `spindle server`"
                ),
            )

    def _time(self, args: list[bytes], slot: _Slot) -> None:
        now_us = time.time_ns() // 1000
        self._answer(slot, self._encode([str(now_us // 1_000_000), str(now_us % 1_000_000)]))

    def _info(self, args: list[bytes], slot: _Slot) -> None:
        wanted = {a.decode(errors="replace").lower() for a in args[1:]}
        if not wanted or wanted & {"all", "everything", "default"}:
            wanted = {"server", "clients", "stats", "keyspace", "spindle"}
        resp = self.resp
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "redis_version": REDIS_VERSION,
                "spindle_version": _version(),
                "redis_mode": "standalone",
                "process_id": os.getpid(),
                "tcp_port": resp.port,
                "uptime_in_seconds": int(time.monotonic() - resp.started_at_s),
            },
            "clients": {
                "connected_clients": len(resp.connections),
                "maxclients": limits.CONNECTIONS_PER_NODE_MAX,
            },
            "stats": {
                "total_connections_received": resp.stats.connections_total,
                "total_commands_processed": resp.stats.commands,
                "rejected_connections": resp.stats.rejected_connections,
                "protocol_errors": resp.stats.protocol_errors,
            },
            "spindle": {
                "tenant": self.tenant,
                "keyspace": self.keyspace,
                "consistency": self.consistency,
                "node_id": self.node.node_id,
            },
        }

        def render(keyspaces: list[p.KeyspaceSummary]) -> bytes:
            sections["keyspace"] = {
                ks.name: f"shards={ks.shards},partitioning={ks.partitioning},epoch={ks.epoch}"
                for ks in keyspaces
            }
            text = "\r\n".join(
                f"# {name.capitalize()}\r\n"
                + "".join(f"{key}:{value}\r\n" for key, value in fields.items())
                for name, fields in sections.items()
                if name in wanted
            )
            return self._encode(Verbatim(text))

        if "keyspace" in wanted:
            self._call(p.ListKeyspaces(id=0), self._reply_with(slot, render))
        else:
            self._answer(slot, render([]))

    # -- string commands ------------------------------------------------------------------

    def _get(self, args: list[bytes], slot: _Slot) -> None:
        null = self._null

        def done(result: Any, failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, null if result is None else bulk(result.value))

        self._call(p.Get(id=0, keyspace=self.keyspace, key=args[1]), done)

    def _set(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) == 3:
            self._put(args[1], args[2], _PLAIN_SET, slot)
            return
        options = _parse_set_options(args, 3, self.node.clock_ms())
        if isinstance(options, bytes):
            self._answer(slot, options)
            return
        self._put(args[1], args[2], options, slot)

    def _put(self, key: bytes, value: bytes, options: _SetOptions, slot: _Slot) -> None:
        null = self._null
        request = p.Put(
            id=0,
            keyspace=self.keyspace,
            key=key,
            value=value,
            ttl_ms=options.ttl_ms,
            keep_ttl=options.keep_ttl,
            if_absent=options.if_absent,
            if_present=options.if_present,
            return_previous=options.get,
        )

        def done(result: Any, failure: SpindleError | None) -> None:
            if failure is None:
                if not options.get:
                    self._answer(slot, OK)
                else:
                    previous = result.previous
                    self._answer(slot, null if previous is None else bulk(previous.value))
            elif not isinstance(failure, Conflict):
                self._answer(slot, self._error(failure))
            elif options.get and options.if_absent:
                # SET NX GET on an existing key answers its value (read after the refusal).
                self._call(p.Get(id=0, keyspace=self.keyspace, key=key), self._get_reply(slot))
            else:
                self._answer(slot, null)

        self._call(request, done)

    def _get_reply(self, slot: _Slot) -> Done:
        null = self._null
        return self._reply_with(slot, lambda stored: null if stored is None else bulk(stored.value))

    def _setnx(self, args: list[bytes], slot: _Slot) -> None:
        def done(result: Any, failure: SpindleError | None) -> None:
            if isinstance(failure, Conflict):
                self._answer(slot, ZERO)
            elif failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, ONE)

        request = p.Put(id=0, keyspace=self.keyspace, key=args[1], value=args[2], if_absent=True)
        self._call(request, done)

    def _setex(self, args: list[bytes], slot: _Slot) -> None:
        """SETEX key seconds value / PSETEX key milliseconds value."""
        amount = _parse_int(args[2])
        if amount is None:
            self._answer(slot, NOT_INTEGER)
            return
        millis = amount if args[0].lower() == b"psetex" else amount * 1000
        if amount <= 0:
            self._answer(
                slot, error(f"ERR invalid expire time in '{_show(args[0].lower())}' command")
            )
            return
        self._put(args[1], args[3], _SetOptions(ttl_ms=millis), slot)

    def _getset(self, args: list[bytes], slot: _Slot) -> None:
        self._put(args[1], args[2], _SetOptions(get=True), slot)

    def _getdel(self, args: list[bytes], slot: _Slot) -> None:
        null = self._null
        request = p.Delete(id=0, keyspace=self.keyspace, key=args[1], return_previous=True)
        self._call(
            request,
            self._reply_with(
                slot, lambda r: null if r.previous is None else bulk(r.previous.value)
            ),
        )

    def _del(self, args: list[bytes], slot: _Slot) -> None:
        keys = args[1:]

        def finish(results: list[Any], failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, integer(sum(1 for r in results if r.deleted)))

        gather = _Gather(len(keys), finish)
        for index, key in enumerate(keys):
            self._call(p.Delete(id=0, keyspace=self.keyspace, key=key), gather.part(index))

    def _multi_get(
        self, keys: list[bytes], slot: _Slot, render: Callable[[list[Any]], bytes]
    ) -> None:
        """MultiGet in chunks of `limits.BATCH_OPS_MAX` keys."""
        chunks = [
            keys[at : at + limits.BATCH_OPS_MAX] for at in range(0, len(keys), limits.BATCH_OPS_MAX)
        ]

        def finish(results: list[Any], failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, render([item for chunk in results for item in chunk]))

        gather = _Gather(len(chunks), finish)
        for index, chunk in enumerate(chunks):
            request = p.MultiGet(id=0, keyspace=self.keyspace, keys=chunk)
            self._call(request, gather.part(index))

    def _mget(self, args: list[bytes], slot: _Slot) -> None:
        null = self._null

        def render(found: list[Any]) -> bytes:
            parts = [b"*%d\r\n" % len(found)]
            parts.extend(null if item is None else bulk(item.value) for item in found)
            return b"".join(parts)

        self._multi_get(args[1:], slot, render)

    def _exists(self, args: list[bytes], slot: _Slot) -> None:
        self._multi_get(
            args[1:], slot, lambda found: integer(sum(1 for item in found if item is not None))
        )

    def _type(self, args: list[bytes], slot: _Slot) -> None:
        self._call(
            p.Get(id=0, keyspace=self.keyspace, key=args[1]),
            self._reply_with(slot, lambda r: b"+none\r\n" if r is None else b"+string\r\n"),
        )

    def _shard_groups(self, keys: list[bytes]) -> list[list[int]] | bytes:
        """Positions of `keys` grouped by shard (each group at most BATCH_OPS_MAX), or an
        error reply."""
        assert self.tenant is not None
        try:
            keyspace = self.node.keyspace(self.tenant, self.keyspace)
        except SpindleError as failure:
            return self._error(failure)
        groups: dict[int, list[int]] = {}
        for position, key in enumerate(keys):
            shard = keyspace.shard_for(keyspace.internal_key(key))
            groups.setdefault(shard.shard_id, []).append(position)
        return [
            group[at : at + limits.BATCH_OPS_MAX]
            for group in groups.values()
            for at in range(0, len(group), limits.BATCH_OPS_MAX)
        ]

    def _mset(self, args: list[bytes], slot: _Slot) -> None:
        if len(args) % 2 == 0:
            self._answer(slot, _wrong_arity(args[0].lower().decode(errors="replace")))
            return
        keys, values = args[1::2], args[2::2]
        groups = self._shard_groups(keys)
        if isinstance(groups, bytes):
            self._answer(slot, groups)
            return

        def finish(results: list[Any], failure: SpindleError | None) -> None:
            self._answer(slot, OK if failure is None else self._error(failure))

        gather = _Gather(len(groups), finish)
        for index, group in enumerate(groups):
            ops: list[p.BatchOp] = [p.BatchPut(key=keys[i], value=values[i]) for i in group]
            self._call(p.WriteBatch(id=0, keyspace=self.keyspace, ops=ops), gather.part(index))

    def _msetnx(self, args: list[bytes], slot: _Slot) -> None:
        """Atomic when all keys are in one shard (one if-absent batch). Across shards:
        check that no key exists, then one if-absent batch per shard; see docs."""
        if len(args) % 2 == 0:
            self._answer(slot, _wrong_arity("msetnx"))
            return
        keys, values = args[1::2], args[2::2]
        groups = self._shard_groups(keys)
        if isinstance(groups, bytes):
            self._answer(slot, groups)
            return

        def finish(results: list[Any], failure: SpindleError | None) -> None:
            if isinstance(failure, Conflict):
                self._answer(slot, ZERO)
            elif failure is not None:
                self._answer(slot, self._error(failure))
            else:
                self._answer(slot, ONE)

        def write() -> None:
            gather = _Gather(len(groups), finish)
            for index, group in enumerate(groups):
                ops: list[p.BatchOp] = [
                    p.BatchPut(key=keys[i], value=values[i], if_absent=True) for i in group
                ]
                request = p.WriteBatch(id=0, keyspace=self.keyspace, ops=ops)
                self._call(request, gather.part(index))

        if len(groups) == 1:
            write()
            return

        def checked(found: list[Any]) -> bytes:
            return ZERO if any(item is not None for item in found) else b""

        def after_check(reply: bytes) -> None:
            if reply:
                self._answer(slot, reply)
            else:
                write()

        self._multi_get_then(keys, checked, after_check, slot)

    def _multi_get_then(
        self,
        keys: list[bytes],
        render: Callable[[list[Any]], bytes],
        then: Callable[[bytes], None],
        slot: _Slot,
    ) -> None:
        """Like `_multi_get`, but hands the rendered reply to `then` (errors answer)."""

        def finish(results: list[Any], failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            else:
                then(render([item for chunk in results for item in chunk]))

        chunks = [
            keys[at : at + limits.BATCH_OPS_MAX] for at in range(0, len(keys), limits.BATCH_OPS_MAX)
        ]
        gather = _Gather(len(chunks), finish)
        for index, chunk in enumerate(chunks):
            request = p.MultiGet(id=0, keyspace=self.keyspace, keys=chunk)
            self._call(request, gather.part(index))

    def _incr(self, args: list[bytes], slot: _Slot) -> None:
        name = args[0].lower()
        if name in (b"incr", b"decr"):
            delta = 1
        else:
            parsed = _parse_int(args[2])
            if parsed is None:
                self._answer(slot, NOT_INTEGER)
                return
            delta = parsed
        if name in (b"decr", b"decrby"):
            if delta == _INT64_MIN:
                self._answer(slot, error("ERR decrement would overflow"))
                return
            delta = -delta
        request = p.Incr(id=0, keyspace=self.keyspace, key=args[1], delta=delta)
        self._call(request, self._reply_with(slot, lambda r: integer(r.value)))

    # -- expiry ---------------------------------------------------------------------------

    def _expire(self, args: list[bytes], slot: _Slot) -> None:
        """EXPIRE/PEXPIRE key amount, EXPIREAT/PEXPIREAT key timestamp."""
        name = args[0].lower()
        if len(args) > 3:
            self._answer(slot, error("ERR EXPIRE options NX, XX, GT and LT are not supported"))
            return
        amount = _parse_int(args[2])
        if amount is None:
            self._answer(slot, NOT_INTEGER)
            return
        scale = 1 if name.startswith(b"p") else 1000
        if abs(amount) > limits.TTL_MS_MAX * 1000:
            self._answer(slot, error(f"ERR invalid expire time in '{_show(name)}' command"))
            return
        ttl_ms = amount * scale
        if name.endswith(b"at"):
            ttl_ms -= self.node.clock_ms()
        if ttl_ms <= 0:  # Redis deletes a key whose new expiry is not in the future
            request: p.Request = p.Delete(id=0, keyspace=self.keyspace, key=args[1])
            self._call(request, self._reply_with(slot, lambda r: ONE if r.deleted else ZERO))
            return
        if ttl_ms > limits.TTL_MS_MAX:
            self._answer(slot, error(f"ERR invalid expire time in '{_show(name)}' command"))
            return
        request = p.Expire(id=0, keyspace=self.keyspace, key=args[1], ttl_ms=ttl_ms)
        self._call(request, self._reply_with(slot, lambda existed: ONE if existed else ZERO))

    def _ttl(self, args: list[bytes], slot: _Slot) -> None:
        in_ms = args[0].lower() == b"pttl"
        clock_ms = self.node.clock_ms

        def render(stored: Any) -> bytes:
            if stored is None:
                return integer(-2)
            if not stored.expire_at_ms:
                return integer(-1)
            left_ms = max(0, stored.expire_at_ms - clock_ms())
            return integer(left_ms if in_ms else (left_ms + 500) // 1000)

        self._call(p.Get(id=0, keyspace=self.keyspace, key=args[1]), self._reply_with(slot, render))

    def _persist(self, args: list[bytes], slot: _Slot) -> None:
        """0 when the key is missing or has no expiry (from a read just before), else
        removes the expiry."""
        key = args[1]

        def read(stored: Any, failure: SpindleError | None) -> None:
            if failure is not None:
                self._answer(slot, self._error(failure))
            elif stored is None or not stored.expire_at_ms:
                self._answer(slot, ZERO)
            else:
                request = p.Expire(id=0, keyspace=self.keyspace, key=key, ttl_ms=None)
                self._call(
                    request, self._reply_with(slot, lambda existed: ONE if existed else ZERO)
                )

        self._call(p.Get(id=0, keyspace=self.keyspace, key=key), read)

    # -- iteration ------------------------------------------------------------------------

    def _scan(self, args: list[bytes], slot: _Slot) -> None:
        tenant = self.tenant
        assert tenant is not None
        cursor_id = _parse_int(args[1])
        if cursor_id is None or cursor_id < 0:
            self._answer(slot, INVALID_CURSOR)
            return
        position: bytes | None = None
        if cursor_id:
            position = self.resp.cursors.get(cursor_id, tenant, self.keyspace)
            if position is None:
                self._answer(slot, INVALID_CURSOR)
                return
        count = SCAN_COUNT_DEFAULT
        pattern: bytes | None = None
        only_strings = True
        index = 2
        while index < len(args):
            option = args[index].upper()
            if index + 1 >= len(args):
                self._answer(slot, SYNTAX_ERROR)
                return
            value = args[index + 1]
            if option == b"COUNT":
                parsed = _parse_int(value)
                if parsed is None:
                    self._answer(slot, NOT_INTEGER)
                    return
                if parsed < 1:
                    self._answer(slot, SYNTAX_ERROR)
                    return
                count = min(parsed, limits.SCAN_LIMIT_MAX)
            elif option == b"MATCH":
                pattern = value
            elif option == b"TYPE":
                only_strings = value.lower() == b"string"
            else:
                self._answer(slot, SYNTAX_ERROR)
                return
            index += 2
        matcher = self._matcher(pattern, slot)
        if matcher is False:
            return
        keyspace = self.keyspace
        prefix = rc.literal_prefix(pattern) if pattern else b""

        def render(page: p.ScanPage) -> bytes:
            keys = [item.key for item in page.items if only_strings]
            if matcher is not None:
                keys = [key for key in keys if matcher(key)]
            next_id = 0
            if page.cursor is not None:
                next_id = self.resp.cursors.add(_Cursor(tenant, keyspace, page.cursor))
            return self._encode([str(next_id).encode(), keys])

        request = p.Scan(
            id=0, keyspace=keyspace, limit=count, cursor=position, prefix=prefix or None
        )
        self._call(request, self._reply_with(slot, render))

    def _matcher(
        self, pattern: bytes | None, slot: _Slot
    ) -> rc.Matcher | typing.Literal[False] | None:
        """The MATCH filter (None: everything), or False after answering an error."""
        if pattern is None or pattern == b"*":
            return None
        try:
            return rc.compile_glob(pattern)
        except ValueError as failure:
            self._answer(slot, error(f"ERR {failure}"))
            return False

    def _scan_all(
        self, pattern: bytes | None, slot: _Slot, render: Callable[[list[bytes], int], bytes]
    ) -> None:
        """Walk the whole keyspace in pages (DBSIZE, KEYS), at most FULL_SCAN_KEYS_MAX keys;
        each page is one request through the fair dispatcher."""
        matcher = self._matcher(pattern, slot)
        if matcher is False:
            return
        prefix = (rc.literal_prefix(pattern) if pattern else b"") or None
        keyspace = self.keyspace
        collect = pattern is not None
        found: list[bytes] = []
        seen = 0

        def page_done(page: Any, failure: SpindleError | None) -> None:
            nonlocal seen
            if failure is not None:
                self._answer(slot, self._error(failure))
                return
            seen += len(page.items)
            if collect:
                keys = [item.key for item in page.items]
                found.extend(keys if matcher is None else filter(matcher, keys))
            if seen > FULL_SCAN_KEYS_MAX:
                self._answer(
                    slot,
                    error(
                        f"ERR the keyspace holds more than {FULL_SCAN_KEYS_MAX} keys; "
                        "use SCAN to iterate it"
                    ),
                )
            elif page.cursor is None or self._closing:
                self._answer(slot, render(found, seen))
            else:
                next_page(page.cursor)

        def next_page(cursor: bytes | None) -> None:
            request = p.Scan(
                id=0, keyspace=keyspace, limit=limits.SCAN_LIMIT_MAX, cursor=cursor, prefix=prefix
            )
            self._call(request, page_done)

        next_page(None)

    def _dbsize(self, args: list[bytes], slot: _Slot) -> None:
        self._scan_all(None, slot, lambda keys, seen: integer(seen))

    def _keys(self, args: list[bytes], slot: _Slot) -> None:
        self._scan_all(args[1], slot, lambda keys, seen: self._encode(keys))

    def _flushdb(self, args: list[bytes], slot: _Slot) -> None:
        """Deletes every key of the current keyspace (FLUSHALL is not offered: it would
        have to mean every keyspace of the tenant)."""
        if len(args) == 2 and args[1].upper() not in (b"SYNC", b"ASYNC"):
            self._answer(slot, SYNTAX_ERROR)
            return
        request = p.DeleteRangeReq(id=0, keyspace=self.keyspace, start=b"")
        self._call(request, self._reply_with(slot, lambda result: OK))


# -- errors --------------------------------------------------------------------------------

NOAUTH = error("NOAUTH Authentication required.")
NOAUTH_HELLO = error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    "select the RESP protocol version at the same time"
)
WRONGPASS = error("WRONGPASS invalid username-password pair or user is disabled.")
NOT_INTEGER = error("ERR value is not an integer or out of range")
SYNTAX_ERROR = error("ERR syntax error")
INVALID_CURSOR = error("ERR invalid cursor")
BAD_CLIENT_NAME = error("ERR Client names cannot contain spaces, newlines or special characters.")

_ERROR_PREFIXES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "ERR",
    ErrorCode.NOT_FOUND: "ERR",
    ErrorCode.TOO_LARGE: "ERR",
    ErrorCode.UNKNOWN_OPERATION: "ERR",
    ErrorCode.MALFORMED_FRAME: "ERR",
    ErrorCode.PERMISSION_DENIED: "NOPERM",
    ErrorCode.QUOTA_EXCEEDED: "QUOTA",
    ErrorCode.INTERNAL: "ERR internal error:",
}


def spindle_error(failure: SpindleError) -> bytes:
    """A Spindle error in Redis's form: `-CODE message`. Codes Redis clients know where
    they fit (ERR, NOAUTH, NOPERM), otherwise the Spindle code in capitals (THROTTLED,
    UNAVAILABLE, TIMEOUT, CONFLICT, WRONGSHARD, NOTLEADER)."""
    code = failure.code
    if code is ErrorCode.THROTTLED:
        detail = failure.detail if isinstance(failure.detail, dict) else {}
        retry_after_ms = detail.get("retry_after_ms", 1)
        return error(f"THROTTLED retry after {retry_after_ms} ms")
    if code is ErrorCode.UNAUTHENTICATED:
        return NOAUTH
    if isinstance(failure, NotFound) and "keyspace" in failure.message:
        return error(f"ERR {failure.message} (choose one with KEYSPACE <name>)")
    prefix = _ERROR_PREFIXES.get(code, code.value.upper())
    return error(f"{prefix} {failure.message}")


def _unknown_command(args: list[bytes]) -> bytes:
    """Redis's exact form, trailing space included."""
    shown = "".join(f"'{_show(arg)}' " for arg in args[1:])
    return error(f"ERR unknown command '{_show(args[0])}', with args beginning with: {shown}")


def _unknown_subcommand(args: list[bytes]) -> bytes:
    return error(f"ERR unknown subcommand '{_show(args[1])}'. Try {_show(args[0]).upper()} HELP.")


def _wrong_arity(name: str) -> bytes:
    return error(f"ERR wrong number of arguments for '{name}' command")


def _show(raw: bytes, limit: int = 128) -> str:
    """Redis shows at most 128 bytes of an argument in error messages."""
    return raw[:limit].decode(errors="replace")


def _valid_name(name: bytes) -> bool:
    return all(0x21 <= char <= 0x7E for char in name)


def _address(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{sockname[0]}:{sockname[1]}"
    return str(sockname or "")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("spindle")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _parse_int(raw: bytes) -> int | None:
    """Redis's strict integer: optional '-', digits, no leading zeros, int64."""
    body = raw[1:] if raw[:1] == b"-" else raw
    if not body.isdigit() or len(raw) > 20 or (len(body) > 1 and body[:1] == b"0"):
        return None
    value = int(raw)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


@dataclass
class _SetOptions:
    ttl_ms: int | None = None
    keep_ttl: bool = False
    if_absent: bool = False
    if_present: bool = False
    get: bool = False


_PLAIN_SET = _SetOptions()
"""SET without options (never mutated)."""


def _parse_set_options(args: list[bytes], start: int, now_ms: int) -> _SetOptions | bytes:
    """SET's options, or the error reply."""
    options = _SetOptions()
    expiry = False
    index = start
    while index < len(args):
        option = args[index].upper()
        if option == b"NX" and not options.if_present:
            options.if_absent = True
        elif option == b"XX" and not options.if_absent:
            options.if_present = True
        elif option == b"GET":
            options.get = True
        elif option == b"KEEPTTL" and not expiry:
            options.keep_ttl = True
        elif (
            option in (b"EX", b"PX", b"EXAT", b"PXAT")
            and not options.keep_ttl
            and not expiry
            and index + 1 < len(args)
        ):
            amount = _parse_int(args[index + 1])
            if amount is None:
                return NOT_INTEGER
            if amount <= 0 or amount > limits.TTL_MS_MAX * 1000:
                return error("ERR invalid expire time in 'set' command")
            millis = amount * 1000 if option in (b"EX", b"EXAT") else amount
            if option in (b"EXAT", b"PXAT"):
                millis = max(1, millis - now_ms)
            if millis > limits.TTL_MS_MAX:
                return error("ERR invalid expire time in 'set' command")
            options.ttl_ms = millis
            expiry = True
            index += 1
        else:
            return SYNTAX_ERROR
        index += 1
    return options


CONFIG: dict[str, str] = {
    "save": "",
    "appendonly": "yes",
    "appendfsync": "always",
    "databases": "1",
    "maxmemory": "0",
    "timeout": str(int(limits.IDLE_TIMEOUT_S)),
    "maxclients": str(limits.CONNECTIONS_PER_NODE_MAX),
    "proto-max-bulk-len": str(rc.BULK_BYTES_MAX),
}
"""What CONFIG GET reports: Spindle's durability (every write fsynced) in Redis's terms."""


# -- the command table ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """One command: handler, Redis-style arity (n: exactly n arguments with the name;
    -n: at least n), and what COMMAND and COMMAND DOCS report."""

    name: str
    handler: Handler
    arity: int
    flags: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    group: str
    summary: str
    no_auth: bool = False

    def info(self) -> list[Any]:
        return [
            self.name,
            self.arity,
            [Simple(flag) for flag in self.flags],
            self.first_key,
            self.last_key,
            self.step,
            [Simple(f"@{self.group}")],
            [],
            [],
            [],
        ]

    def docs(self) -> dict[str, Any]:
        return {"summary": self.summary, "since": "1.0.0", "group": self.group}


def _spec(
    name: str,
    handler: Callable[[RespConnection, list[bytes], _Slot], None],
    arity: int,
    flags: str,
    keys: tuple[int, int, int],
    group: str,
    summary: str,
) -> CommandSpec:
    return CommandSpec(
        name,
        handler,
        arity,
        tuple(flags.split()),
        *keys,
        group,
        summary,
        no_auth="no-auth" in flags.split(),
    )


C = RespConnection
NO_KEYS = (0, 0, 0)
ONE_KEY = (1, 1, 1)
ALL_KEYS = (1, -1, 1)
PAIRS = (1, -1, 2)
# fmt: off
COMMAND_LIST: tuple[CommandSpec, ...] = (
    _spec("ping", C._ping, -1, "fast", NO_KEYS, "connection", "Returns PONG or the message."),
    _spec("echo", C._echo, 2, "fast", NO_KEYS, "connection", "Returns the given string."),
    _spec("quit", C._quit, -1, "no-auth fast", NO_KEYS, "connection", "Closes the connection."),
    _spec("auth", C._auth, -2, "no-auth fast", NO_KEYS, "connection", "AUTH [tenant] token."),
    _spec("hello", C._hello, -1, "no-auth fast", NO_KEYS, "connection",
          "Handshake; HELLO 3 switches to RESP3."),
    _spec("reset", C._reset, 1, "no-auth fast", NO_KEYS, "connection",
          "Resets the connection state."),
    _spec("select", C._select, 2, "fast", NO_KEYS, "connection",
          "SELECT 0: keyspace 'default'; SELECT n: keyspace 'db<n>'."),
    _spec("keyspace", C._keyspace, -1, "fast", NO_KEYS, "connection",
          "KEYSPACE [name]: shows or chooses the keyspace."),
    _spec("spindle.consistency", C._consistency, -1, "fast", NO_KEYS, "connection",
          "Shows or sets the read consistency level: strong, bounded [ms], "
          "read_your_writes, eventual."),
    _spec("client", C._client, -2, "fast", NO_KEYS, "connection",
          "SETNAME, GETNAME, ID, INFO, LIST, SETINFO."),
    _spec("command", C._command_info, -1, "", NO_KEYS, "server",
          "COMMAND, COMMAND COUNT/INFO/DOCS/LIST."),
    _spec("config", C._config, -2, "", NO_KEYS, "server", "CONFIG GET of a few settings."),
    _spec("info", C._info, -1, "", NO_KEYS, "server",
          "Server, clients, stats and keyspace information."),
    _spec("time", C._time, 1, "fast", NO_KEYS, "server", "The server time."),
    _spec("dbsize", C._dbsize, 1, "readonly", NO_KEYS, "server",
          "Counts the keys of the keyspace (bounded walk)."),
    _spec("flushdb", C._flushdb, -1, "write", NO_KEYS, "server",
          "Deletes every key of the keyspace."),
    _spec("get", C._get, 2, "readonly fast", ONE_KEY, "string", "Returns the value of a key."),
    _spec("set", C._set, -3, "write", ONE_KEY, "string",
          "SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT n|KEEPTTL]."),
    _spec("setnx", C._setnx, 3, "write fast", ONE_KEY, "string",
          "Sets a key only if it does not exist."),
    _spec("setex", C._setex, 4, "write", ONE_KEY, "string",
          "Sets a value with a time to live in seconds."),
    _spec("psetex", C._setex, 4, "write", ONE_KEY, "string",
          "Sets a value with a time to live in milliseconds."),
    _spec("getset", C._getset, 3, "write fast", ONE_KEY, "string",
          "Sets a value, returns the previous one."),
    _spec("getdel", C._getdel, 2, "write fast", ONE_KEY, "string",
          "Returns the value and deletes the key."),
    _spec("del", C._del, -2, "write", ALL_KEYS, "keyspace",
          "Deletes keys; returns how many existed."),
    _spec("unlink", C._del, -2, "write fast", ALL_KEYS, "keyspace", "As DEL."),
    _spec("exists", C._exists, -2, "readonly fast", ALL_KEYS, "keyspace",
          "Counts the given keys that exist."),
    _spec("type", C._type, 2, "readonly fast", ONE_KEY, "keyspace", "'string' or 'none'."),
    _spec("mget", C._mget, -2, "readonly fast", ALL_KEYS, "string", "Values of several keys."),
    _spec("mset", C._mset, -3, "write", PAIRS, "string", "Sets several keys (atomic per shard)."),
    _spec("msetnx", C._msetnx, -3, "write", PAIRS, "string",
          "Sets several keys if none exists."),
    _spec("incr", C._incr, 2, "write fast", ONE_KEY, "string", "Adds 1 to an integer value."),
    _spec("decr", C._incr, 2, "write fast", ONE_KEY, "string",
          "Subtracts 1 from an integer value."),
    _spec("incrby", C._incr, 3, "write fast", ONE_KEY, "string", "Adds n to an integer value."),
    _spec("decrby", C._incr, 3, "write fast", ONE_KEY, "string",
          "Subtracts n from an integer value."),
    _spec("expire", C._expire, -3, "write fast", ONE_KEY, "keyspace",
          "Sets a time to live in seconds."),
    _spec("pexpire", C._expire, -3, "write fast", ONE_KEY, "keyspace",
          "Sets a time to live in milliseconds."),
    _spec("expireat", C._expire, -3, "write fast", ONE_KEY, "keyspace",
          "Sets an expiry as a Unix time in seconds."),
    _spec("pexpireat", C._expire, -3, "write fast", ONE_KEY, "keyspace",
          "Sets an expiry as a Unix time in milliseconds."),
    _spec("ttl", C._ttl, 2, "readonly fast", ONE_KEY, "keyspace",
          "Seconds to live; -1 no expiry, -2 missing."),
    _spec("pttl", C._ttl, 2, "readonly fast", ONE_KEY, "keyspace",
          "Milliseconds to live; -1 no expiry, -2 missing."),
    _spec("persist", C._persist, 2, "write fast", ONE_KEY, "keyspace",
          "Removes the expiry of a key."),
    _spec("scan", C._scan, -2, "readonly", NO_KEYS, "keyspace",
          "SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]."),
    _spec("keys", C._keys, 2, "readonly", NO_KEYS, "keyspace",
          "Keys matching a pattern (bounded walk)."),
)
# fmt: on
del C
COMMANDS: dict[bytes, CommandSpec] = {spec.name.encode(): spec for spec in COMMAND_LIST}


# -- the server ----------------------------------------------------------------------------


class RespServer:
    """Serves the Redis protocol for a node server, on its own port, through the node
    server's dispatcher (fair across tenants and both protocols) and connection bound."""

    def __init__(
        self,
        node_server: NodeServer,
        host: str,
        port: int = DEFAULT_RESP_PORT,
        *,
        idle_timeout_s: float = limits.IDLE_TIMEOUT_S,
    ) -> None:
        self.node_server = node_server
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self.connections: set[RespConnection] = set()
        self.cursors = CursorTable()
        self.stats = RespStats()
        self.started_at_s = time.monotonic()
        self._next_client_id = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._previous_extra: Callable[[], int] | None = None

    def new_client_id(self) -> int:
        self._next_client_id += 1
        return self._next_client_id

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RespConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        previous = self._previous_extra = self.node_server.extra_connections
        self.node_server.extra_connections = lambda: len(self.connections) + previous()
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout_s / 4)
            cutoff = time.monotonic() - self.idle_timeout_s
            for connection in list(self.connections):
                idle = connection.inflight == 0 and connection.last_active_s < cutoff
                if idle and connection.transport is not None:
                    connection.transport.close()

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting and reading, let commands in flight finish, close. Call before
        the node server's stop (which closes the node)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.stop_reading()
        deadline = time.monotonic() + grace_s
        while any(c.inflight for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection._flush()
            if connection.transport is not None:
                connection.transport.close()
        if self._previous_extra is not None:
            self.node_server.extra_connections = self._previous_extra
            self._previous_extra = None

    def status(self) -> dict[str, Any]:
        return {
            "address": f"{self.host}:{self.port}",
            "connections_open": len(self.connections),
            "connections_total": self.stats.connections_total,
            "commands": self.stats.commands,
            "protocol_errors": self.stats.protocol_errors,
            "scan_cursors": len(self.cursors),
        }


__all__ = ["DEFAULT_RESP_PORT", "RespConnection", "RespServer"]
