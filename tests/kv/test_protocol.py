"""Bad input on the binary protocol gets a clear error; the server keeps serving."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgspec
import pytest

from spindle.kv import limits
from tests.conftest import ThreadServer


class RawConn:
    """A bare socket speaking frames, to send what a well-behaved client never would."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        self.send_raw(struct.pack(">I", len(body)) + body)

    def send(self, message: Any) -> None:
        self.send_body(msgspec.msgpack.encode(message))

    def recv(self) -> dict[str, Any]:
        header = self._exact(4)
        (length,) = struct.unpack(">I", header)
        decoded = msgspec.msgpack.decode(self._exact(length))
        assert isinstance(decoded, dict)
        return decoded

    def _exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server: ThreadServer) -> Any:
    c = RawConn(server.address)
    yield c
    c.close()


def test_roundtrip(conn: RawConn) -> None:
    conn.send({"op": "put", "id": 7, "key": b"k", "value": b"v"})
    reply = conn.recv()
    assert reply["id"] == 7 and reply["result"]["version"] >= 1
    conn.send({"op": "get", "id": 8, "key": b"k"})
    assert conn.recv()["result"][0] == b"v"


@pytest.mark.parametrize(
    ("message", "code", "fragment"),
    [
        ({"op": "fly", "id": 1}, "UnknownOperation", "unknown operation 'fly'"),
        ({"id": 2}, "UnknownOperation", "unknown operation None"),
        ({"op": "get", "id": 3, "key": "a string"}, "InvalidArgument", "$.key"),
        ({"op": "get", "id": 4}, "InvalidArgument", "key"),
        ({"op": "put", "id": 5, "key": b"k", "value": 12}, "InvalidArgument", "$.value"),
        ({"op": "incr", "id": 6, "key": b"k", "delta": "one"}, "InvalidArgument", "delta"),
        ({"op": "scan", "id": 7, "limit": -1}, "InvalidArgument", "limit"),
        ({"op": "get", "id": 8, "key": b"x" * 5000}, "TooLarge", "key is 5000 bytes"),
    ],
)
def test_bad_requests_get_clear_errors(
    conn: RawConn, message: dict[str, Any], code: str, fragment: str
) -> None:
    conn.send(message)
    reply = conn.recv()
    assert reply["id"] == message["id"]
    assert reply["error"]["code"] == code
    assert fragment in reply["error"]["message"]
    conn.send({"op": "ping", "id": 99})
    assert conn.recv()["id"] == 99, "the connection keeps serving"


def test_not_msgpack_and_not_a_map(conn: RawConn) -> None:
    conn.send_body(b"\xc1\xc1 definitely not msgpack")
    reply = conn.recv()
    assert reply["error"]["code"] == "MalformedFrame"
    conn.send([1, 2, 3])
    assert conn.recv()["error"]["code"] == "InvalidArgument"
    conn.send_body(b"")
    assert conn.recv()["error"]["code"] == "MalformedFrame"
    conn.send({"op": "ping", "id": 1})
    assert conn.recv()["id"] == 1


def test_absurd_frame_length_closes_connection_without_allocating(
    server: ThreadServer, conn: RawConn
) -> None:
    conn.send_raw(struct.pack(">I", 0xFFFFFFFF))
    reply = conn.recv()
    assert reply["error"]["code"] == "TooLarge"
    assert str(limits.FRAME_BYTES_MAX) in reply["error"]["message"]
    assert conn.closed()
    other = RawConn(server.address)
    other.send({"op": "ping", "id": 1})
    assert other.recv()["id"] == 1, "the server keeps serving others"
    other.close()


def test_frames_split_across_packets_and_coalesced(conn: RawConn) -> None:
    bodies = [msgspec.msgpack.encode({"op": "ping", "id": i}) for i in range(1, 51)]
    stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    for i in range(0, len(stream), 7):
        conn.send_raw(stream[i : i + 7])
    ids = sorted(conn.recv()["id"] for _ in bodies)
    assert ids == list(range(1, 51))


def test_truncated_frame_then_disconnect_is_harmless(server: ThreadServer) -> None:
    c = RawConn(server.address)
    c.send_raw(struct.pack(">I", 100) + b"abc")
    c.close()
    d = RawConn(server.address)
    d.send({"op": "ping", "id": 5})
    assert d.recv()["id"] == 5
    d.close()


def test_client_that_does_not_read_is_paused_not_buffered(server: ThreadServer) -> None:
    from spindle.kv.server import WRITE_BUFFER_HIGH_BYTES

    value_bytes = 512 * 1024
    c = RawConn(server.address)
    c.send({"op": "put", "id": 1, "key": b"big", "value": b"v" * value_bytes})
    assert "error" not in c.recv()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    requests = 200  # 100 MiB of responses if the server buffered them all
    body = msgspec.msgpack.encode({"op": "get", "id": 2, "key": b"big"})
    c.sock.sendall((struct.pack(">I", len(body)) + body) * requests)
    import time

    deadline = time.monotonic() + 10
    (connection,) = list(server.server.connections)
    while not connection._paused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connection._paused, "reading from a client that does not read must pause"
    assert connection.transport is not None
    buffered = connection.transport.get_write_buffer_size()
    assert buffered <= WRITE_BUFFER_HIGH_BYTES + 2 * value_bytes, buffered
    received = [c.recv()["id"] for _ in range(requests)]
    assert received == [2] * requests, "every response arrives once the client reads"
    c.close()
