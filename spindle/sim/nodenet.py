"""The network between simulated processes: Raft frames and request/response calls.

Traffic travels over ``SimNetwork``s (spindle/sim/network.py). Raft frames get every fault
it models (loss, delay, reordering, duplication, partitions, one-way partitions): Raft must
survive all of them. Calls (a client's request to a node, a node's request forwarded to a
shard's leader) model a TCP connection instead: they travel on a second network with the
same partitions and delays but no random loss or duplication (TCP retransmits and
delivers a frame once); a frame sent into a partition waits until it heals (TCP keeps
retrying) rather than vanishing. A call to a process that is down fails at once
("connection refused"), a call whose callee crashes fails one network delay later
("connection reset"), and a call that gets no answer fails at the caller's timeout. A
request that reaches a later incarnation of its callee than the one it was sent to is
dropped: the connection it travelled on died with the process.

Payloads are encoded with msgspec at the sender and decoded at the receiver, as the real
transport does, so no object is ever shared between two simulated processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import msgspec

from spindle.kv import protocol as p
from spindle.kv.errors import Internal, SpindleError, Unavailable, error_from_code
from spindle.kv.multiraft import Envelope
from spindle.kv.transport import FORWARD_TIMEOUT_S
from spindle.sim.aioloop import SimEventLoop
from spindle.sim.network import Address, SimNetwork
from spindle.sim.scheduler import Scheduler, Trace

__all__ = ["Endpoint", "SimTransport", "SimWire"]

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(p.AnyRequest)
_raft_decoder = msgspec.msgpack.Decoder(p.RaftMessages)

Serve = Callable[[str, p.Request, bool], Any]
"""Runs a request on a process (tenant, request, forwarded): a result or an awaitable."""


@dataclasses.dataclass(frozen=True, slots=True)
class _RaftFrame:
    body: bytes
    envelopes: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    call_id: int
    caller: Address
    incarnation: int
    tenant: str
    body: bytes
    forwarded: bool
    what: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Reply:
    call_id: int
    body: bytes = b""
    error: tuple[str, str, Any] | None = None


class _Label:
    """Describes a payload in the trace, formatted only if the trace is printed."""

    __slots__ = ("_payload",)

    def __init__(self, payload: object) -> None:
        self._payload = payload

    def __str__(self) -> str:
        payload = self._payload
        if isinstance(payload, _RaftFrame):
            frame = _raft_decoder.decode(payload.body)
            parts = [
                f"g{group}:{m.type.name}/t{m.term}"
                + (f"+{len(m.entries)}e" if m.entries else "")
                + (" REJECT" if m.reject else "")
                for group, m in frame.envelopes[:6]
            ]
            more = f" +{len(frame.envelopes) - 6}" if len(frame.envelopes) > 6 else ""
            return "raft " + " ".join(parts) + more
        if isinstance(payload, _Call):
            kind = "fwd" if payload.forwarded else "call"
            return f"{kind} #{payload.call_id} {payload.what}"
        if isinstance(payload, _Reply):
            status = "ok" if payload.error is None else payload.error[0]
            return f"reply #{payload.call_id} {status}"
        return repr(payload)


class Endpoint:
    """One incarnation of a process on the network: where its frames are handed over.

    ``serve`` runs requests (a node; None for a client), ``on_raft`` takes Raft frames
    (a node), ``on_unreachable`` is told when a peer refused a connection.
    """

    def __init__(
        self,
        address: Address,
        loop: SimEventLoop,
        incarnation: int,
        *,
        serve: Serve | None = None,
        on_raft: Callable[[int, list[Envelope]], None] | None = None,
        on_unreachable: Callable[[int], None] | None = None,
    ) -> None:
        self.address = address
        self.loop = loop
        self.incarnation = incarnation
        self.serve = serve
        self.on_raft = on_raft
        self.on_unreachable = on_unreachable
        self.alive = True
        self.calls: dict[int, tuple[asyncio.Future[Any], Address]] = {}
        self._served: set[int] = set()


class SimWire:
    """Addresses, endpoints and the call protocol on top of a ``SimNetwork``."""

    def __init__(
        self,
        raft_network: SimNetwork,
        call_network: SimNetwork,
        scheduler: Scheduler,
        trace: Trace,
        *,
        delay_us: int,
    ) -> None:
        self.raft_network = raft_network
        self.call_network = call_network
        self._stalled: list[tuple[Address, Address, object]] = []
        """Call frames sent into a partition, resent when it heals."""
        self.delay_us = max(1, delay_us)
        """How long a connection failure takes to reach the caller."""
        self.scheduler = scheduler
        self.trace = trace
        self.endpoints: dict[Address, Endpoint] = {}
        self.addresses: dict[tuple[str, int], Address] = {}
        """Where nodes listen (host, port) -> their network address (the node id)."""
        self._call_ids = itertools.count(1)
        self.calls = 0
        self.raft_frames = 0
        #: Exceptions (not SpindleError) a process raised serving a request: node bugs.
        self.serve_errors: list[str] = []

    # -- endpoints ---------------------------------------------------------------------------

    def attach(self, endpoint: Endpoint) -> None:
        """The endpoint's process (re)started: it receives what is addressed to it."""
        address = endpoint.address
        if address not in self.endpoints:
            for network in (self.raft_network, self.call_network):
                network.register(address, lambda src, payload: self._deliver(address, payload))
        self.endpoints[address] = endpoint

    def detach(self, address: Address) -> None:
        """The process died: calls to it fail once the reset reaches their callers; calls
        it made die with it."""
        endpoint = self.endpoints.get(address)
        if endpoint is None:
            return
        endpoint.alive = False
        endpoint.calls.clear()
        for other in self.endpoints.values():
            if not other.alive:
                continue
            for call_id, (_, dst) in list(other.calls.items()):
                if dst == address:
                    self._fail_later(other, call_id, "connection reset: the node went down")

    def _up(self, address: Address) -> Endpoint | None:
        endpoint = self.endpoints.get(address)
        return endpoint if endpoint is not None and endpoint.alive else None

    def _deliver(self, address: Address, payload: object) -> None:
        endpoint = self._up(address)
        if endpoint is None:
            self.trace.log(self.scheduler.now_us, "net   to down n%d: %s", address, _Label(payload))
            return
        endpoint.loop.call_soon(self._receive, endpoint, payload)

    def _receive(self, endpoint: Endpoint, payload: object) -> None:
        if not endpoint.alive:
            return
        if isinstance(payload, _RaftFrame):
            if endpoint.on_raft is not None:
                frame = _raft_decoder.decode(payload.body)
                endpoint.on_raft(frame.src, frame.envelopes)
        elif isinstance(payload, _Call):
            self._serve(endpoint, payload)
        elif isinstance(payload, _Reply):
            pending = endpoint.calls.pop(payload.call_id, None)
            if pending is not None and not pending[0].done():
                future = pending[0]
                if payload.error is not None:
                    future.set_exception(error_from_code(*payload.error))
                else:
                    future.set_result(payload.body)

    # -- Raft --------------------------------------------------------------------------------

    def send_raft(self, src: Endpoint, dst: Address, envelopes: list[Envelope]) -> None:
        if not src.alive:
            return
        if self._up(dst) is None and src.on_unreachable is not None:
            src.loop.call_soon(src.on_unreachable, dst)  # connection refused
        body = _encoder.encode(p.RaftMessages(id=0, src=src.address, envelopes=envelopes))
        frame = _RaftFrame(body, len(envelopes))
        self.raft_frames += 1
        self.raft_network.send(src.address, dst, frame, _Label(frame))

    # -- partitions --------------------------------------------------------------------------

    def partition(self, side_a: list[Address], side_b: list[Address], *, one_way: bool) -> None:
        self.heal()
        for network in (self.raft_network, self.call_network):
            network.partition(side_a, side_b, one_way=one_way)

    def heal(self) -> None:
        for network in (self.raft_network, self.call_network):
            network.heal()
        stalled, self._stalled = self._stalled, []
        for src, dst, payload in stalled:
            self._send_call_frame(src, dst, payload)

    def cut_links(self) -> list[tuple[Address, Address]]:
        return self.raft_network.cut_links()

    def _send_call_frame(self, src: Address, dst: Address, payload: object) -> None:
        if self.call_network.is_cut(src, dst):
            self._stalled.append((src, dst, payload))
            self.trace.log(
                self.scheduler.now_us, "net   %d->%d stalled: %s", src, dst, _Label(payload)
            )
            return
        self.call_network.send(src, dst, payload, _Label(payload))

    # -- calls -------------------------------------------------------------------------------

    async def call(
        self,
        src: Endpoint,
        dst: Address,
        tenant: str,
        request: p.Request,
        result_type: Any,
        *,
        timeout_s: float,
        forwarded: bool,
    ) -> Any:
        """Runs ``request`` on process ``dst`` and returns its decoded result, or raises
        its SpindleError; Unavailable if the connection fails, TimeoutError on timeout."""
        loop = src.loop
        future: asyncio.Future[bytes] = loop.create_future()
        call_id = next(self._call_ids)
        self.calls += 1
        callee = self._up(dst)
        if callee is None or not src.alive:
            src.calls[call_id] = (future, dst)
            self._fail_later(src, call_id, f"connection refused by node {dst}")
        else:
            src.calls[call_id] = (future, dst)
            what = type(request).__name__
            body = _encoder.encode(request)
            call = _Call(call_id, src.address, callee.incarnation, tenant, body, forwarded, what)
            self._send_call_frame(src.address, dst, call)
        try:
            body = await asyncio.wait_for(future, timeout_s)
        finally:
            src.calls.pop(call_id, None)
        try:
            return msgspec.msgpack.decode(body, type=result_type)
        except msgspec.DecodeError as error:
            raise SpindleError(f"bad result from node {dst}: {error}") from None

    def _fail_later(self, caller: Endpoint, call_id: int, why: str) -> None:
        """The caller learns of a connection failure one network delay later."""

        def fail() -> None:
            pending = caller.calls.pop(call_id, None)
            if pending is not None and not pending[0].done():
                pending[0].set_exception(Unavailable(why))

        def post() -> None:
            if caller.alive:
                caller.loop.call_soon(fail)

        self.scheduler.after(self.delay_us, post)

    def _serve(self, endpoint: Endpoint, call: _Call) -> None:
        if call.incarnation != endpoint.incarnation or call.call_id in endpoint._served:
            return  # sent to an earlier incarnation, or a duplicate: TCP delivers once
        endpoint._served.add(call.call_id)
        serve = endpoint.serve
        if serve is None:
            return

        def reply(message: _Reply) -> None:
            if endpoint.alive:
                self._send_call_frame(endpoint.address, call.caller, message)

        try:
            request = _request_decoder.decode(call.body)
            result = serve(call.tenant, request, call.forwarded)
        except SpindleError as error:
            reply(_Reply(call.call_id, error=_error_tuple(error)))
            return
        except Exception as error:  # a bug in the node: recorded, answered as Internal
            self._serve_error(endpoint, call, error)
            reply(_Reply(call.call_id, error=_error_tuple(Internal(repr(error)))))
            return
        if not asyncio.isfuture(result) and not asyncio.iscoroutine(result):
            reply(_encode_reply(call.call_id, result))
            return
        task = asyncio.ensure_future(result, loop=endpoint.loop)

        def done(finished: asyncio.Future[Any]) -> None:
            if finished.cancelled():
                reply(_Reply(call.call_id, error=_error_tuple(Internal("request cancelled"))))
                return
            error = finished.exception()
            if error is None:
                reply(_encode_reply(call.call_id, finished.result()))
            elif isinstance(error, SpindleError):
                reply(_Reply(call.call_id, error=_error_tuple(error)))
            else:
                self._serve_error(endpoint, call, error)
                reply(_Reply(call.call_id, error=_error_tuple(Internal(repr(error)))))

        task.add_done_callback(done)

    def _serve_error(self, endpoint: Endpoint, call: _Call, error: BaseException) -> None:
        message = f"n{endpoint.address} serving {call.what}: {type(error).__name__}: {error}"
        self.serve_errors.append(message)
        self.trace.log(self.scheduler.now_us, "BUG   %s", message)


def _error_tuple(error: SpindleError) -> tuple[str, str, Any]:
    return (error.code.value, error.message, error.detail)


def _encode_reply(call_id: int, result: Any) -> _Reply:
    try:
        return _Reply(call_id, _encoder.encode(result))
    except (TypeError, msgspec.EncodeError) as error:
        return _Reply(call_id, error=_error_tuple(Internal(f"encode: {error}")))


class SimTransport:
    """A node's ``Transport`` (spindle/kv/transport.py) over the simulated network."""

    def __init__(self, wire: SimWire, endpoint: Endpoint) -> None:
        self.wire = wire
        self.endpoint = endpoint

    def send(self, node_id: int, envelopes: list[Envelope]) -> None:
        self.wire.send_raft(self.endpoint, node_id, envelopes)

    async def forward(
        self, address: tuple[str, int], tenant: str, request: p.Request, result_type: Any
    ) -> Any:
        dst = self.wire.addresses.get(address)
        if dst is None:
            raise Unavailable(f"cannot reach {address[0]}:{address[1]}: unknown address")
        try:
            return await self.wire.call(
                self.endpoint,
                dst,
                tenant,
                request,
                result_type,
                timeout_s=FORWARD_TIMEOUT_S,
                forwarded=True,
            )
        except TimeoutError:
            raise Unavailable(
                f"forwarded request got no answer from {address[0]}:{address[1]}"
            ) from None

    def dropped_frames(self) -> int:
        return 0

    async def close(self) -> None:
        pass
