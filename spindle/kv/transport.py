"""Node-to-node connections: one outbound connection per peer carries every group's Raft
messages, and requests a node forwards to a shard's leader.

Raft frames are one-way (`RaftMessages`, no reply) on the peer's binary port after a
`PeerHello` with the cluster secret. The queue to a peer is bounded; when a peer is slow
or down the oldest frames are dropped, which Raft tolerates (it retransmits), and the
host is told the peer is unreachable so leaders probe instead of streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from spindle.kv import protocol as p
from spindle.kv.client import NotSent, _Connection
from spindle.kv.errors import SpindleError, Unavailable, error_from_code
from spindle.kv.multiraft import Envelope
from spindle.kv.raft import Message

log = logging.getLogger("spindle.transport")

PEER_QUEUE_FRAMES_MAX = 256
"""Frames waiting for one peer; beyond it the oldest is dropped (Raft resends)."""
PEER_QUEUE_BYTES_MAX = 64 << 20
"""Bytes of the frames waiting for one peer; beyond it the oldest are dropped too."""
PEER_FRAME_BYTES_TARGET = 4 << 20
"""A pass's messages to one peer are cut into frames of about this many bytes. A follower
catching up is sent many 1 MiB appends in one pass (tens of MB in all), and the receiving
node refuses frames over `limits.FRAME_BYTES_MAX`: one frame per pass would never get
through. A single message gets a frame of its own (at most one proposal, 8 MiB, or one
snapshot chunk, plus headers)."""
MESSAGE_OVERHEAD_BYTES = 1024
"""Upper estimate of a Raft message's encoded size without its payload (~300 bytes at
most, field names included; the rest covers snapshot metadata and the frame's header) ..."""
ENTRY_OVERHEAD_BYTES = 64
"""... and of one log entry's, without its data (~50 bytes at most)."""
PEER_WRITE_BUFFER_BYTES_MAX = 4 << 20
"""Unsent bytes to one peer above which frames queue (and then drop) instead."""
PEER_CONNECT_TIMEOUT_S = 1.0
PEER_USER_TIMEOUT_S = 3.0
"""A peer connection whose sent data is unacknowledged this long is dropped (and redialed):
leaders heartbeat every 100 ms, so a silent peer is a gone peer."""
PEER_BACKOFF_S_MIN = 0.05
PEER_BACKOFF_S_MAX = 1.0
"""Reconnection backoff to a peer that is down: doubles from the min up to the max."""
FORWARD_TIMEOUT_S = 15.0
"""How long a forwarded request may take at the leader (above PROPOSAL_TIMEOUT_S)."""

_encoder = msgspec.msgpack.Encoder()


def message_bytes(message: Message) -> int:
    """An upper estimate of `message`'s encoded size (its payloads plus fixed overheads)."""
    size = MESSAGE_OVERHEAD_BYTES + len(message.snapshot_chunk) + len(message.context)
    for entry in message.entries:
        size += ENTRY_OVERHEAD_BYTES + len(entry.data)
    return size


def frames_of(envelopes: list[Envelope], target_bytes: int) -> list[list[Envelope]]:
    """Cut one pass's envelopes to a peer into runs of about `target_bytes` each, in order
    (a message larger than the target is a run of its own)."""
    runs: list[list[Envelope]] = []
    run: list[Envelope] = []
    run_bytes = 0
    for envelope in envelopes:
        size = message_bytes(envelope[1])
        if run and run_bytes + size > target_bytes:
            runs.append(run)
            run, run_bytes = [], 0
        run.append(envelope)
        run_bytes += size
    if run:
        runs.append(run)
    return runs


AddressOf = Callable[[int], tuple[str, int] | None]


class Transport(Protocol):
    """What a node needs from the network between nodes (the simulator has its own)."""

    def send(self, node_id: int, envelopes: list[Envelope]) -> None:
        """Hand one pass's Raft messages for `node_id` over; never blocks, may drop."""
        ...

    async def forward(
        self, address: tuple[str, int], tenant: str, request: p.Request, result_type: Any
    ) -> Any:
        """Run `request` as `tenant` on the node at `address` (never forwarded again)."""
        ...

    def dropped_frames(self) -> int: ...

    async def close(self) -> None: ...


class _Peer:
    """The outbound connection to one peer. While it is connected and keeping up, a frame
    is written at once (no task hop); otherwise frames wait in a bounded queue."""

    def __init__(self, transport: PeerTransport, node_id: int) -> None:
        self.transport = transport
        self.node_id = node_id
        self.queue: deque[bytes] = deque()
        self.queue_bytes = 0
        self.dropped_frames = 0
        self.writer: asyncio.StreamWriter | None = None
        self.event = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    def push(self, frame: bytes) -> None:
        writer = self.writer
        if (
            writer is not None
            and not self.queue
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() < PEER_WRITE_BUFFER_BYTES_MAX
        ):
            try:
                writer.write(frame)
                return
            except (RuntimeError, OSError):  # closed under us: queue, the task reconnects
                self.writer = None
        while self.queue and (
            len(self.queue) >= PEER_QUEUE_FRAMES_MAX
            or self.queue_bytes + len(frame) > PEER_QUEUE_BYTES_MAX
        ):
            self.queue_bytes -= len(self.queue.popleft())
            self.dropped_frames += 1
        self.queue.append(frame)
        self.queue_bytes += len(frame)
        self.event.set()

    def _clear_queue(self) -> list[bytes]:
        frames = list(self.queue)
        self.queue.clear()
        self.queue_bytes = 0
        return frames

    async def _run(self) -> None:
        transport = self.transport
        backoff_s = PEER_BACKOFF_S_MIN
        while not transport.closed:
            try:
                await self._serve_connection()
                backoff_s = PEER_BACKOFF_S_MIN
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ConnectionError) as error:
                log.debug("peer %d: %s", self.node_id, error)
            if transport.closed:
                return
            self.dropped_frames += len(self._clear_queue())
            transport.on_unreachable(self.node_id)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, PEER_BACKOFF_S_MAX)

    async def _serve_connection(self) -> None:
        transport = self.transport
        address = transport.address_of(self.node_id)
        if address is None:
            raise OSError(f"no address known for node {self.node_id}")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address), PEER_CONNECT_TIMEOUT_S
        )
        set_user_timeout(writer)
        closed = asyncio.ensure_future(_discard(reader))
        try:
            writer.write(p.frame(transport.hello()))
            self.writer = writer
            while not transport.closed and not closed.done():
                if self.queue:
                    writer.write(b"".join(self._clear_queue()))
                    await writer.drain()
                    continue
                self.event.clear()
                waiter = asyncio.ensure_future(self.event.wait())
                try:
                    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            if closed.done() and not closed.cancelled() and closed.exception() is not None:
                raise ConnectionError(f"connection to node {self.node_id} failed")
        finally:
            self.writer = None
            closed.cancel()
            writer.close()


def set_user_timeout(writer: asyncio.StreamWriter) -> None:
    """Fail the connection when sent data stays unacknowledged for PEER_USER_TIMEOUT_S
    (Linux TCP_USER_TIMEOUT): after a partition the node reconnects within its backoff
    instead of waiting out TCP's retransmission backoff (minutes)."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int(PEER_USER_TIMEOUT_S * 1000))


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read (and ignore) what the peer sends back: the hello's answer. Ends at EOF."""
    while await reader.read(65536):
        pass


class PeerTransport:
    """Outbound side: Raft frames to peers, and forwarded requests."""

    def __init__(
        self,
        node_id: int,
        secret: str,
        address_of: AddressOf,
        listen: Callable[[], tuple[str, int]],
        on_unreachable: Callable[[int], None] = lambda node_id: None,
    ) -> None:
        self.node_id = node_id
        self.secret = secret
        self.listen = listen
        self.address_of = address_of
        self.on_unreachable = on_unreachable
        self.closed = False
        self._peers: dict[int, _Peer] = {}
        self._forward_connections: dict[tuple[str, int], _Connection] = {}

    def hello(self) -> bytes:
        return _encoder.encode(self._hello())

    def _hello(self) -> p.PeerHello:
        host, port = self.listen()
        return p.PeerHello(id=0, node_id=self.node_id, secret=self.secret, host=host, port=port)

    def send(self, node_id: int, envelopes: list[Envelope]) -> None:
        if self.closed:
            return
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(self, node_id)
        body = _encoder.encode(p.RaftMessages(id=0, src=self.node_id, envelopes=envelopes))
        if len(body) <= PEER_FRAME_BYTES_TARGET or len(envelopes) == 1:
            peer.push(p.frame(body))  # the common case: one frame, encoded once
            return
        for run in frames_of(envelopes, PEER_FRAME_BYTES_TARGET):
            body = _encoder.encode(p.RaftMessages(id=0, src=self.node_id, envelopes=run))
            peer.push(p.frame(body))

    def dropped_frames(self) -> int:
        return sum(peer.dropped_frames for peer in self._peers.values())

    async def _forward_connection(self, address: tuple[str, int]) -> _Connection:
        connection = self._forward_connections.get(address)
        if connection is not None and not connection.closed.is_set():
            return connection
        loop = asyncio.get_running_loop()
        try:
            _, opened = await asyncio.wait_for(
                loop.create_connection(_Connection, *address), PEER_CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as error:
            raise NotSent(f"cannot reach {address[0]}:{address[1]}: {error}") from None
        sock = opened.transport.get_extra_info("socket") if opened.transport else None
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if sock is not None and option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, int(PEER_USER_TIMEOUT_S * 1000))
        hello = await opened.send(self._hello())
        if hello.error is not None:
            raise error_from_code(hello.error.code, hello.error.message, hello.error.detail)
        self._forward_connections[address] = opened
        return opened

    async def forward(
        self, address: tuple[str, int], tenant: str, request: p.Request, result_type: Any
    ) -> Any:
        """Run `request` as `tenant` on the node at `address`; its result, decoded, or
        its error raised (a forwarded request is never forwarded again)."""
        connection = await self._forward_connection(address)
        body = _encoder.encode(request)
        async with connection.slots:
            future = connection.send(p.Forwarded(id=0, tenant=tenant, body=body))
            try:
                response = await asyncio.wait_for(future, FORWARD_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable(
                    f"forwarded request got no answer from {address[0]}:{address[1]}"
                ) from None
        if response.error is not None:
            raise error_from_code(
                response.error.code, response.error.message, response.error.detail
            )
        try:
            return msgspec.msgpack.decode(response.result, type=result_type)
        except msgspec.DecodeError as error:
            raise SpindleError(f"bad forwarded result: {error}") from None

    async def close(self) -> None:
        self.closed = True
        for peer in self._peers.values():
            peer.task.cancel()
        for peer in self._peers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(peer.task, 2.0)
        for connection in self._forward_connections.values():
            if connection.transport is not None:
                connection.transport.close()
