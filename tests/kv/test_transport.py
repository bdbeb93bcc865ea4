"""The peer transport's bounds: a pass's messages cut into frames the receiver accepts,
and the queue to a peer bounded in frames and in bytes."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from spindle.kv import limits
from spindle.kv import protocol as p
from spindle.kv.multiraft import Envelope
from spindle.kv.raft import Entry, Message, MessageType
from spindle.kv.raft.config import MAX_PROPOSAL_BYTES, SNAPSHOT_CHUNK_BYTES
from spindle.kv.transport import (
    PEER_FRAME_BYTES_TARGET,
    PEER_QUEUE_BYTES_MAX,
    PEER_QUEUE_FRAMES_MAX,
    PeerTransport,
    _encoder,
    _Peer,
    frames_of,
    message_bytes,
)


def _append(group_id: int, *sizes: int) -> Envelope:
    entries = tuple(Entry(term=1, index=i + 1, data=b"x" * size) for i, size in enumerate(sizes))
    return group_id, Message(type=MessageType.APP, src=1, dst=2, term=1, entries=entries)


def _encoded_bytes(envelopes: list[Envelope]) -> int:
    return len(_encoder.encode(p.RaftMessages(id=0, src=1, envelopes=envelopes)))


@given(st.lists(st.lists(st.integers(0, 3 << 20), max_size=4), max_size=30))
def test_frames_keep_every_message_in_order_under_the_target(sizes: list[list[int]]) -> None:
    envelopes = [_append(group_id, *entry_sizes) for group_id, entry_sizes in enumerate(sizes)]
    runs = frames_of(envelopes, PEER_FRAME_BYTES_TARGET)
    assert [envelope for run in runs for envelope in run] == envelopes
    for run in runs:
        assert run
        # over the target only as a message of its own
        assert len(run) == 1 or sum(message_bytes(m) for _, m in run) <= PEER_FRAME_BYTES_TARGET
        # the estimate is an upper bound of the encoded size
        assert _encoded_bytes(run) <= sum(message_bytes(m) for _, m in run)


def test_the_largest_single_messages_fit_a_frame() -> None:
    proposal = _append(1, MAX_PROPOSAL_BYTES)
    chunk = (
        1,
        Message(type=MessageType.SNAP, src=1, dst=2, snapshot_chunk=b"s" * SNAPSHOT_CHUNK_BYTES),
    )
    for envelope in (proposal, chunk):
        assert _encoded_bytes([envelope]) <= message_bytes(envelope[1]) < limits.FRAME_BYTES_MAX


async def test_the_queue_to_a_peer_is_bounded_in_frames_and_bytes() -> None:
    transport = PeerTransport(1, "secret", lambda _: None, lambda: ("127.0.0.1", 0))
    peer = _Peer(transport, 2)  # no address: never connects, so every frame queues
    try:
        for _ in range(PEER_QUEUE_FRAMES_MAX + 10):
            peer.push(b"f")
        assert len(peer.queue) == PEER_QUEUE_FRAMES_MAX
        big = b"b" * (8 << 20)
        for _ in range(PEER_QUEUE_BYTES_MAX // len(big) + 3):
            peer.push(big)
        assert peer.queue_bytes == sum(len(frame) for frame in peer.queue)
        assert peer.queue_bytes <= PEER_QUEUE_BYTES_MAX
        assert peer.queue[-1] is big
        assert peer.dropped_frames >= PEER_QUEUE_FRAMES_MAX + 3
    finally:
        transport.closed = True
        peer.task.cancel()
        await asyncio.gather(peer.task, return_exceptions=True)
