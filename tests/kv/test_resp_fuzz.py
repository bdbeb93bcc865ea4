"""Bad input on the RESP port: random bytes, truncated and malformed commands, absurd
declared lengths, wrong types, slow senders. The server never crashes, other clients keep
being served, acknowledged data stays, and a huge declared length never allocates.

Bounded for CI (SPINDLE_FUZZ_EXAMPLES, default 200 examples per property). A longer run:
    SPINDLE_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/kv/test_resp_fuzz.py
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spindle.kv.resp import RespServer
from spindle.kv.resp_codec import BULK_BYTES_MAX, COMMAND_ARGS_MAX, INLINE_BYTES_MAX
from tests.conftest import ThreadServer
from tests.kv.test_resp import on_loop, start_resp

FUZZ_EXAMPLES = int(os.environ.get("SPINDLE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
READ_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadServer, RespServer]]:
    """One server for every example: what one bad client does must not touch the next."""
    server = ThreadServer(tmp_path_factory.mktemp("fuzz") / "node")
    server.start()
    resp = start_resp(server)
    witness = redis.Redis(port=resp.port)
    witness.set("acknowledged", "yes")
    try:
        yield server, resp
    finally:
        on_loop(server, resp.stop(grace_s=2))
        server.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, and read until the server closes (or a timeout: an
    incomplete command legitimately waits for more bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            return b""
        return b"".join(chunks)


def still_serving(port: int) -> None:
    client = redis.Redis(port=port, socket_timeout=5)
    assert client.ping() is True
    assert client.get("acknowledged") == b"yes"
    client.close()


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


# -- properties ---------------------------------------------------------------------------

names = st.sampled_from(
    [b"GET", b"SET", b"DEL", b"MGET", b"MSET", b"INCR", b"SCAN", b"EXPIRE", b"TTL", b"PING",
     b"HELLO", b"AUTH", b"CLIENT", b"COMMAND", b"INFO", b"SELECT", b"KEYSPACE", b"NOPE"]
)  # fmt: skip
words = st.binary(max_size=40) | st.sampled_from(
    [b"0", b"-1", b"3", b"NX", b"XX", b"EX", b"PX", b"GET", b"KEEPTTL", b"MATCH", b"COUNT",
     b"99999999999999999999", b"*", b"[", b"\\", b"fuzz:key"]
)  # fmt: skip
commands = st.builds(lambda name, args: command(name, *args), names, st.lists(words, max_size=6))


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """Valid commands, then cut, with bytes flipped, or with a header replaced."""
    data = bytearray(b"".join(draw(st.lists(commands, min_size=1, max_size=5))))
    mutation = draw(st.sampled_from(["truncate", "flip", "header", "insert"]))
    position = draw(st.integers(0, max(0, len(data) - 1)))
    if mutation == "truncate":
        del data[position:]
    elif mutation == "flip":
        data[position] = draw(st.integers(0, 255))
    elif mutation == "header":
        data[position:position] = draw(
            st.sampled_from([b"*99999999\r\n", b"$999999999999\r\n", b"*-5\r\n", b"$-7\r\n",
                             b":12\r\n", b"+OK\r\n", b"*1\r\n*1\r\n", b"$abc\r\n", b"*\r\n"])
        )  # fmt: skip
    else:
        data[position:position] = draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(shared: tuple[ThreadServer, RespServer], data: bytes) -> None:
    _, resp = shared
    exchange(resp.port, data)
    still_serving(resp.port)


@FUZZ
@given(data=malformed())
def test_malformed_commands(shared: tuple[ThreadServer, RespServer], data: bytes) -> None:
    _, resp = shared
    reply = exchange(resp.port, data)
    assert not reply or reply[:1] in b"+-:$*_%#,=~"
    still_serving(resp.port)


@FUZZ
@given(batch=st.lists(commands, min_size=1, max_size=20))
def test_well_formed_commands_get_one_reply_each(
    shared: tuple[ThreadServer, RespServer], batch: list[bytes]
) -> None:
    """Any well-formed command, however wrong its arguments, gets exactly one reply (in
    RESP2 a reply is one parseable value) and the connection stays usable."""
    import hiredis

    _, resp = shared
    reply = exchange(resp.port, b"".join(batch) + command(b"ECHO", b"end-marker"))
    reader = hiredis.Reader(replyError=lambda message: message)
    reader.feed(reply)
    replies = []
    while (value := reader.gets()) is not False:
        replies.append(value)
    hello_switches = any(c.startswith(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3") for c in batch)
    if not hello_switches:  # hiredis reads RESP2 only
        assert replies[-1] == b"end-marker", replies
        assert len(replies) == len(batch) + 1
    still_serving(resp.port)


# -- absurd declared lengths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*99999999\r\n", b"invalid multibulk length"),
        (b"*%d\r\n" % (COMMAND_ARGS_MAX + 1), b"invalid multibulk length"),
        (b"*2\r\n$999999999999\r\n", b"invalid bulk length"),
        (b"*1\r\n$%d\r\n" % (BULK_BYTES_MAX + 1), b"invalid bulk length"),
        (b"*1\r\n$-5\r\n", b"invalid bulk length"),
        (b"*1\r\n$abc\r\n", b"invalid bulk length"),
        (b"*12345678901234567890123456789012345", b"invalid multibulk length"),
        (b"*1\r\n:5\r\n", b"expected '$', got ':'"),
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", b"expected '$', got '*'"),
        (b"*1\r\n$4\r\nPINGxx", b"bulk string not terminated by CRLF"),
        (b"x" * (INLINE_BYTES_MAX + 1), b"too big inline request"),
    ],
)
def test_absurd_lengths_close_the_connection(
    shared: tuple[ThreadServer, RespServer], data: bytes, message: bytes
) -> None:
    _, resp = shared
    reply = exchange(resp.port, b"*1\r\n$4\r\nPING\r\n" + data)
    assert reply == b"+PONG\r\n-ERR Protocol error: " + message + b"\r\n"
    still_serving(resp.port)


def test_command_larger_than_its_bound(shared: tuple[ThreadServer, RespServer]) -> None:
    """Many bulks, each under the bulk bound, declaring more than 16 MiB in total."""
    _, resp = shared
    header = b"*40\r\n$4\r\nMSET\r\n"
    part = b"$%d\r\n" % (BULK_BYTES_MAX - 10)
    with socket.create_connection(("127.0.0.1", resp.port), timeout=10) as sock:
        sock.sendall(header)
        reply = b""
        try:
            for _ in range(39):
                sock.sendall(part + b"x" * (BULK_BYTES_MAX - 10) + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert b"Protocol error: command too large" in reply or reply == b""
    still_serving(resp.port)


def test_huge_declared_lengths_never_allocate(shared: tuple[ThreadServer, RespServer]) -> None:
    _, resp = shared
    before = rss_bytes()
    for _ in range(200):
        exchange(resp.port, b"*2147483647\r\n")
        exchange(resp.port, b"*2\r\n$3\r\nGET\r\n$9223372036854775807\r\n")
        exchange(resp.port, b"*1\r\n$%d\r\n" % BULK_BYTES_MAX)  # valid header, no payload
    assert rss_bytes() - before < 64 * 1024 * 1024
    still_serving(resp.port)


def test_slow_sender_byte_by_byte(shared: tuple[ThreadServer, RespServer]) -> None:
    _, resp = shared
    data = command(b"SET", b"slow", b"value") + command(b"GET", b"slow")
    with socket.create_connection(("127.0.0.1", resp.port), timeout=5) as sock:
        for index in range(len(data)):
            sock.sendall(data[index : index + 1])
            if index % 7 == 0:
                still_serving(resp.port)  # others are served while this one trickles
                time.sleep(0.001)
        reply = b""
        while not reply.endswith(b"value\r\n"):
            reply += sock.recv(100)
    assert reply == b"+OK\r\n$5\r\nvalue\r\n"


def test_partial_command_then_disconnect(shared: tuple[ThreadServer, RespServer]) -> None:
    _, resp = shared
    for cut in range(1, 30):
        data = command(b"SET", b"cut", b"x" * 10)[:cut]
        with socket.create_connection(("127.0.0.1", resp.port), timeout=5) as sock:
            sock.sendall(data)
    still_serving(resp.port)
    assert redis.Redis(port=resp.port).get("cut") in (None, b"x" * 10)
