"""Fuzz the binary protocol: random bytes, malformed and truncated frames, absurd declared
lengths, wrong types, slow senders. The node must keep serving other clients, never lose
acknowledged data and never allocate for a declared length.

CI runs a bounded number of examples; for a longer run:
    SPINDLE_FUZZ_EXAMPLES=20000 .venv/bin/pytest -q tests/kv/test_fuzz_binary.py
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spindle.kv import limits
from tests.conftest import ThreadServer
from tests.kv.test_protocol import RawConn

EXAMPLES = int(os.environ.get("SPINDLE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.binary(max_size=64),
    st.text(max_size=32),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
ops = st.sampled_from(
    [
        "get",
        "put",
        "delete",
        "multi_get",
        "batch",
        "txn",
        "scan",
        "incr",
        "expire",
        "delete_range",
        "create_keyspace",
        "auth",
        "nope",
        "",
    ]
)
requests = st.fixed_dictionaries(
    {"op": ops, "id": st.integers(0, 2**31)},
    optional={
        "key": values,
        "value": values,
        "keys": values,
        "ops": values,
        "keyspace": values,
        "limit": values,
        "ttl_ms": values,
        "cursor": values,
        "reads": values,
    },
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = ThreadServer(tmp_path_factory.mktemp("fuzz"))
    srv.start()
    witness = RawConn(srv.address)
    witness.send({"op": "put", "id": 1, "key": b"witness", "value": b"acknowledged"})
    assert "error" not in witness.recv()
    witness.close()
    yield srv
    srv.stop()


def healthy(server: ThreadServer) -> None:
    """Another client is served and the acknowledged witness is intact."""
    conn = RawConn(server.address)
    conn.send({"op": "get", "id": 42, "key": b"witness"})
    reply = conn.recv()
    assert reply["id"] == 42 and reply["result"][0] == b"acknowledged", reply
    conn.close()


@FUZZ
@given(request=requests)
def test_random_requests_get_an_answer(fuzz_server: ThreadServer, request: dict[str, Any]) -> None:
    conn = RawConn(fuzz_server.address)
    try:
        conn.send(request)
        reply = conn.recv()
        assert set(reply) <= {"id", "result", "error"}
        if "error" in reply:
            assert reply["error"]["code"] and reply["error"]["message"]
        conn.send({"op": "ping", "id": 7})
        assert conn.recv()["id"] == 7, "the connection survives any well-framed body"
    finally:
        conn.close()


@FUZZ
@given(body=st.binary(max_size=512))
def test_random_bodies_in_valid_frames(fuzz_server: ThreadServer, body: bytes) -> None:
    conn = RawConn(fuzz_server.address)
    try:
        conn.send_body(body)
        reply = conn.recv()
        assert "error" in reply or "result" in reply
    finally:
        conn.close()


@FUZZ
@given(stream=st.binary(min_size=1, max_size=2048))
def test_random_byte_streams(fuzz_server: ThreadServer, stream: bytes) -> None:
    conn = RawConn(fuzz_server.address)
    conn.sock.settimeout(0.02)
    try:
        conn.send_raw(stream)
        try:
            while conn.sock.recv(65536):
                pass
        except (TimeoutError, ConnectionError):
            pass
    finally:
        conn.close()
    healthy(fuzz_server)


@FUZZ
@given(length=st.integers(limits.FRAME_BYTES_MAX + 1, 2**32 - 1), tail=st.binary(max_size=64))
def test_absurd_declared_lengths_close_without_allocating(
    fuzz_server: ThreadServer, length: int, tail: bytes
) -> None:
    conn = RawConn(fuzz_server.address)
    try:
        conn.send_raw(struct.pack(">I", length) + tail)
        assert conn.recv()["error"]["code"] == "TooLarge"
        assert conn.closed()
    finally:
        conn.close()
    healthy(fuzz_server)


@FUZZ
@given(request=requests, cut=st.integers(0, 200))
def test_truncated_frames_then_hang_up(
    fuzz_server: ThreadServer, request: dict[str, Any], cut: int
) -> None:
    body = msgspec.msgpack.encode(request)
    frame = struct.pack(">I", len(body)) + body
    conn = RawConn(fuzz_server.address)
    conn.send_raw(frame[: min(cut, len(frame) - 1)])
    conn.close()
    healthy(fuzz_server)


def test_slow_sender_does_not_block_others(fuzz_server: ThreadServer) -> None:
    body = msgspec.msgpack.encode({"op": "put", "id": 3, "key": b"slow", "value": b"x" * 1000})
    frame = struct.pack(">I", len(body)) + body
    slow = RawConn(fuzz_server.address)
    for i in range(0, len(frame), 100):
        slow.send_raw(frame[i : i + 100])
        healthy(fuzz_server)
        time.sleep(0.01)
    assert slow.recv()["id"] == 3
    slow.close()


def test_many_half_open_connections(fuzz_server: ThreadServer) -> None:
    host, port = fuzz_server.address.rsplit(":", 1)
    sockets = []
    for _ in range(200):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(struct.pack(">I", 1000) + b"partial")
        sockets.append(sock)
    healthy(fuzz_server)
    for sock in sockets:
        sock.close()
    healthy(fuzz_server)
