"""The RESP front end against real Redis clients: redis-py (sync and asyncio, RESP2 and
RESP3) and redis-cli, on a real node served from a thread (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from spindle.kv import limits
from spindle.kv.client import Client
from spindle.kv.resp import RespServer
from tests.conftest import ThreadServer


def on_loop(server: ThreadServer, coroutine: Any, timeout_s: float = 10.0) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, server.loop).result(timeout_s)


def start_resp(server: ThreadServer, **options: Any) -> RespServer:
    resp = RespServer(server.server, "127.0.0.1", 0, **options)
    on_loop(server, resp.start())
    return resp


@pytest.fixture
def resp(server: ThreadServer) -> Iterator[RespServer]:
    resp = start_resp(server)
    try:
        yield resp
    finally:
        on_loop(server, resp.stop(grace_s=2))


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def r(request: pytest.FixtureRequest, resp: RespServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=resp.port, protocol=request.param, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


def connect(port: int, **options: Any) -> redis.Redis:
    """A redis-py client that fails at once instead of retrying (auth tests)."""
    return redis.Redis(port=port, retry=Retry(NoBackoff(), 0), **options)


def raw(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send `data`, half-close, read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def tokens(server: ThreadServer) -> dict[str, str]:
    """The admin's and the default tenant's tokens."""
    return server.credentials


def new_tenant(server: ThreadServer, admin_token: str, name: str) -> str:
    """Create tenant `name` with a default keyspace; returns its token."""
    with Client(server.address, tenant="admin", token=admin_token) as admin:
        token = admin.create_tenant(name).token
    with Client(server.address, tenant=name, token=token) as tenant:
        assert "default" in [keyspace.name for keyspace in tenant.list_keyspaces()]
    return token


# -- strings -------------------------------------------------------------------------------


def test_ping_echo_get_set(r: redis.Redis) -> None:
    assert r.ping() is True
    assert r.echo(b"hi") == b"hi"
    assert r.get("missing") is None
    assert r.set("a", "1") is True
    assert r.get("a") == b"1"
    assert r.set("bin", b"\x00\xff\r\n") is True
    assert r.get("bin") == b"\x00\xff\r\n"
    assert r.type("a") == b"string"
    assert r.type("missing") == b"none"


def test_set_options(r: redis.Redis) -> None:
    assert r.set("k", "v", nx=True) is True
    assert r.set("k", "w", nx=True) is None  # NX on an existing key: nil, not an error
    assert r.get("k") == b"v"
    assert r.set("absent", "x", xx=True) is None
    assert r.get("absent") is None
    assert r.set("k", "w", xx=True) is True
    assert r.set("k", "z", get=True) == b"w"
    assert r.set("new", "z", get=True) is None
    assert r.set("k", "q", nx=True, get=True) == b"z"  # Redis 7: NX GET answers the value
    assert r.set("k", "v2", ex=100) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.set("k", "v3", keepttl=True) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.set("k", "v4") is True
    assert r.ttl("k") == -1
    assert r.set("k", "v5", px=100_000) is True
    assert 99_000 <= r.pttl("k") <= 100_000
    assert r.set("k", "v6", exat=int(time.time()) + 50) is True
    assert 40 <= r.ttl("k") <= 50
    assert r.set("k", "v7", pxat=int(time.time() * 1000) + 50_000) is True
    assert 40 <= r.ttl("k") <= 50
    assert r.setnx("k", "x") is False
    assert r.setnx("fresh", "x") is True
    assert r.execute_command("SETEX", "sx", 100, "v") in (True, b"OK")
    assert 99 <= r.ttl("sx") <= 100
    assert r.psetex("psx", 100_000, "v") is True
    assert r.getset("k", "g") == b"v7"
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "EX", "10", "KEEPTTL")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "k", "v", "BOGUS")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.execute_command("SET", "k", "v", "EX", "0")
    with pytest.raises(redis.ResponseError, match="not an integer or out of range"):
        r.execute_command("SET", "k", "v", "EX", "ten")


def test_delete_exists_multi_key(r: redis.Redis) -> None:
    assert r.mset({"m1": "a", "m2": "b", "m3": "c"}) is True
    assert r.mget("m1", "nope", "m3") == [b"a", None, b"c"]
    assert r.exists("m1", "m1", "nope") == 2  # counted per argument, as Redis does
    assert r.delete("m1", "m2", "nope") == 2
    assert r.exists("m1", "m2") == 0
    assert r.unlink("m3") == 1
    assert r.getdel("m3") is None
    r.set("gd", "v")
    assert r.getdel("gd") == b"v"
    assert r.get("gd") is None
    keys = {f"many{i}": str(i) for i in range(2_500)}  # more than one batch and shard
    assert r.mset(keys) is True
    assert r.mget(list(keys)) == [value.encode() for value in keys.values()]
    assert r.delete(*keys) == len(keys)


def test_msetnx(r: redis.Redis) -> None:
    assert r.msetnx({"n1": "a", "n2": "b", "n3": "c"}) is True
    assert r.msetnx({"n4": "d", "n1": "x"}) is False
    assert r.get("n4") is None
    assert r.get("n1") == b"a"
    assert r.msetnx({"n5": "e"}) is True
    assert r.msetnx({"n5": "x"}) is False


def test_counters(r: redis.Redis) -> None:
    assert r.incr("c") == 1
    assert r.incrby("c", 10) == 11
    assert r.decr("c") == 10
    assert r.decrby("c", 20) == -10
    assert r.get("c") == b"-10"
    r.set("text", "abc")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incr("text")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incrby("c", "x")  # type: ignore[arg-type]
    r.set("big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="overflow"):
        r.incr("big")


def test_expiry(r: redis.Redis) -> None:
    r.set("e", "v")
    assert r.ttl("e") == -1
    assert r.ttl("nope") == -2
    assert r.pttl("nope") == -2
    assert r.expire("e", 100) is True
    assert 99 <= r.ttl("e") <= 100
    assert r.pexpire("e", 200_000) is True
    assert 199_000 <= r.pttl("e") <= 200_000
    assert r.persist("e") is True
    assert r.persist("e") is False  # no expiry to remove
    assert r.persist("nope") is False
    assert r.ttl("e") == -1
    assert r.expire("nope", 10) is False
    assert r.expireat("e", int(time.time()) + 100) is True
    assert 90 <= r.ttl("e") <= 100
    assert r.pexpireat("e", int(time.time() * 1000) + 100_000) is True
    assert r.expire("e", -1) is True  # a past expiry deletes the key, as in Redis
    assert r.exists("e") == 0
    r.set("short", "v", px=50)
    time.sleep(0.3)
    assert r.get("short") is None
    assert r.ttl("short") == -2
    r.set("short2", "v")
    assert r.pexpire("short2", 50) is True
    time.sleep(0.3)
    assert r.get("short2") is None
    with pytest.raises(redis.ResponseError, match="not supported"):
        r.execute_command("EXPIRE", "e", "10", "NX")


def test_pipeline_replies_in_order(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"p{i}", i)
        pipe.get(f"p{i}")
        pipe.incr("pc")
        pipe.ping()
    results = pipe.execute()
    assert results[0::4] == [True] * 300
    assert results[1::4] == [str(i).encode() for i in range(300)]
    assert results[2::4] == list(range(1, 301))
    assert results[3::4] == [True] * 300


def test_pipeline_errors_in_place(r: redis.Redis) -> None:
    r.set("txt", "abc")
    pipe = r.pipeline(transaction=False)
    pipe.set("x", "1")
    pipe.incr("txt")
    pipe.get("x")
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True
    assert isinstance(results[1], redis.ResponseError)
    assert results[2] == b"1"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_client(resp: RespServer, protocol: int) -> None:
    pool = aioredis.BlockingConnectionPool(port=resp.port, protocol=protocol, max_connections=16)
    client = aioredis.Redis(connection_pool=pool)
    try:
        assert await client.ping() is True
        await asyncio.gather(*(client.set(f"a{i}", i) for i in range(200)))
        values = await asyncio.gather(*(client.get(f"a{i}") for i in range(200)))
        assert values == [str(i).encode() for i in range(200)]
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.incr("ac")
        assert await pipe.execute() == list(range(1, 101))
        found = {key async for key in client.scan_iter(match="a1*", count=7)}
        assert found == {f"a{i}".encode() for i in range(200) if str(i).startswith("1")}
        assert await client.set("ae", "v", px=50) is True
        await asyncio.sleep(0.3)
        assert await client.get("ae") is None
    finally:
        await client.aclose()


# -- iteration -----------------------------------------------------------------------------


def test_scan_across_shards(r: redis.Redis) -> None:
    keys = {f"user:{i}".encode() for i in range(300)} | {f"post:{i}".encode() for i in range(50)}
    r.mset({key: b"v" for key in keys})
    assert set(r.scan_iter()) == keys
    assert set(r.scan_iter(count=1000)) == keys
    assert set(r.scan_iter(match="user:*", count=13)) == {k for k in keys if k.startswith(b"user")}
    assert set(r.scan_iter(match="*:1?")) == {b"user:1" + bytes([c]) for c in b"0123456789"} | {
        b"post:1" + bytes([c]) for c in b"0123456789"
    }
    assert set(r.scan_iter(match="post:[1-2]")) == {b"post:1", b"post:2"}
    assert set(r.scan_iter(match="nothing*")) == set()
    assert list(r.scan_iter(_type="hash")) == []
    # A full iteration by hand: every key exactly once, cursor 0 at the end.
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, page = r.scan(cursor=cursor, count=40)
        seen.extend(page)
        if cursor == 0:
            break
    assert sorted(seen) == sorted(keys)
    assert r.dbsize() == len(keys)
    assert set(r.keys("post:*")) == {k for k in keys if k.startswith(b"post")}
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan(cursor=12345)
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "abc")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SCAN", "0", "COUNT", "0")
    assert r.flushdb() is True
    assert r.dbsize() == 0


def test_scan_cursor_works_on_another_connection(resp: RespServer) -> None:
    one = redis.Redis(port=resp.port)
    two = redis.Redis(port=resp.port)
    one.mset({f"c{i}": i for i in range(30)})
    cursor, first = one.scan(cursor=0, count=10)
    assert cursor != 0
    rest = []
    while cursor:
        cursor, page = two.scan(cursor=cursor, count=10)
        rest.extend(page)
    assert sorted(first + rest) == sorted(f"c{i}".encode() for i in range(30))


# -- errors --------------------------------------------------------------------------------


def test_error_forms(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("FOO", "bar", "baz")
    assert str(info.value) == "unknown command 'FOO', with args beginning with: 'bar' 'baz' "
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("GET")
    assert str(info.value) == "wrong number of arguments for 'get' command"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", "a", "1", "b")
    with pytest.raises(redis.ResponseError, match=r"value is .* bytes, the limit is"):
        r.set("huge", b"x" * (limits.VALUE_BYTES_MAX + 1))
    assert r.ping() is True  # a value over the limit does not cost the connection
    with pytest.raises(redis.ResponseError, match=r"key is .* bytes"):
        r.get(b"k" * (limits.KEY_BYTES_MAX + 1))
    with pytest.raises(redis.ResponseError, match="keyspace 'nope' does not exist"):
        r.execute_command("KEYSPACE", "nope")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.select(3)


def test_inline_commands(resp: RespServer) -> None:
    assert raw(resp.port, b"PING\r\nSET il v\r\nGET il\nECHO  two   \r\n") == (
        b"+PONG\r\n+OK\r\n$1\r\nv\r\n$3\r\ntwo\r\n"
    )


def test_quit_closes_after_earlier_replies(resp: RespServer) -> None:
    assert raw(resp.port, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n") == (
        b"+PONG\r\n+OK\r\n"
    )


# -- connection state ----------------------------------------------------------------------


def test_connection_commands(r: redis.Redis, resp: RespServer) -> None:
    assert r.client_setname("worker-1") is True
    assert r.client_getname() in ("worker-1", b"worker-1")
    client_id = r.client_id()
    assert isinstance(client_id, int)
    assert r.client_info()["name"] == "worker-1"
    assert any("worker-1" in str(entry) for entry in r.client_list())
    with pytest.raises(redis.ResponseError, match="Client names cannot contain spaces"):
        r.client_setname("has space")
    hello = r.execute_command("HELLO")
    hello = {(k.decode() if isinstance(k, bytes) else k): v for k, v in dict_of(hello).items()}
    assert hello["proto"] in (2, 3)
    assert hello["server"] in (b"spindle", "spindle")
    info = r.info()
    assert info["redis_version"] == "7.2.0"
    assert info["tcp_port"] == resp.port
    assert "default" in r.info("keyspace")
    assert r.command_count() > 30
    assert r.command()["get"]["arity"] == 2
    docs = raw(resp.port, b"COMMAND DOCS get\r\n")
    assert docs.startswith(b"*2\r\n$3\r\nget\r\n") and b"summary" in docs
    assert r.config_get("appendonly") == {"appendonly": "yes"} or r.config_get("appendonly") == {
        b"appendonly": b"yes"
    }
    assert r.execute_command("SPINDLE.CONSISTENCY") == b"strong"
    assert r.execute_command("SPINDLE.CONSISTENCY", "strong") in (b"OK", True, "OK")
    assert r.execute_command("SPINDLE.CONSISTENCY", "bounded", "250") in (b"OK", True, "OK")
    assert r.execute_command("SPINDLE.CONSISTENCY") == b"bounded"
    assert r.execute_command("SPINDLE.CONSISTENCY", "eventual") in (b"OK", True, "OK")
    with pytest.raises(redis.ResponseError, match="unsupported consistency level 'sometimes'"):
        r.execute_command("SPINDLE.CONSISTENCY", "sometimes")
    with pytest.raises(redis.ResponseError, match="only bounded takes a max staleness"):
        r.execute_command("SPINDLE.CONSISTENCY", "strong", "5")
    assert len(r.time()) == 2


def dict_of(reply: Any) -> dict[Any, Any]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2], strict=True))


def test_keyspace_selection(server: ThreadServer, resp: RespServer) -> None:
    on_loop(server, server.node.create_keyspace("default", "db1", 2))
    on_loop(server, server.node.create_keyspace("default", "events", 2))
    client = redis.Redis(port=resp.port)
    client.set("where", "default")
    assert client.select(1) is True
    assert client.get("where") is None
    client.set("where", "db1")
    assert client.execute_command("KEYSPACE", "events") in (b"OK", True)
    assert client.execute_command("KEYSPACE") == b"events"
    client.set("where", "events")
    assert client.select(0) is True
    assert client.get("where") == b"default"
    with Client(server.address, keyspace="db1") as binary:
        assert binary.get(b"where") == b"db1"
    db1 = redis.Redis(port=resp.port, db=1)  # redis-py sends SELECT 1 on connect
    assert db1.get("where") == b"db1"


# -- one store, two protocols --------------------------------------------------------------


def test_binary_and_resp_share_data(server: ThreadServer, r: redis.Redis) -> None:
    with Client(server.address) as binary:
        binary.put(b"from-binary", b"1")
        assert r.get("from-binary") == b"1"
        r.set("from-resp", "2", ex=100)
        assert binary.get(b"from-resp") == b"2"
        item = binary.get_item(b"from-resp")
        assert item is not None
        assert item.expire_at_ms > time.time() * 1000
        assert r.incr("from-binary") == 2
        assert binary.incr(b"from-binary") == 3
        r.delete("from-resp")
        assert binary.get(b"from-resp") is None


# -- tenants -------------------------------------------------------------------------------


def test_auth_and_isolation(server: ThreadServer, resp: RespServer, tokens: dict[str, str]) -> None:
    token = new_tenant(server, tokens["admin"], "acme")
    for protocol in (2, 3):
        acme = connect(resp.port, username="acme", password=token, protocol=protocol)
        assert acme.set("secret", f"acme{protocol}") is True
        assert acme.get("secret") == f"acme{protocol}".encode()
        acme.close()
    default = connect(resp.port)
    assert default.get("secret") is None  # the loopback default tenant sees its own data
    default.set("secret", "default")
    acme = connect(resp.port, username="acme", password=token)
    assert acme.get("secret") == b"acme3"
    assert set(acme.scan_iter()) == {b"secret"}
    with pytest.raises(redis.AuthenticationError):
        connect(resp.port, username="acme", password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):
        connect(resp.port, username="acme", password="wrong", protocol=3).ping()
    # AUTH in the middle of a connection switches tenant; a failed AUTH changes nothing.
    conn = connect(resp.port, single_connection_client=True)
    assert conn.get("secret") == b"default"
    with pytest.raises(redis.AuthenticationError):
        conn.execute_command("AUTH", "acme", "wrong")
    assert conn.get("secret") == b"default"
    assert conn.execute_command("AUTH", "acme", token) in (b"OK", True)
    assert conn.get("secret") == b"acme3"


def test_noauth_without_protected_mode(
    server: ThreadServer, resp: RespServer, tokens: dict[str, str]
) -> None:
    server.server.loopback_default_tenant = False
    for protocol in (2, 3):
        with pytest.raises(redis.AuthenticationError, match="uthenticat"):
            connect(resp.port, protocol=protocol).get("a")
    token = tokens["default"]
    assert raw(resp.port, f"GET a\r\nAUTH {token}\r\nSET a 1\r\nGET a\r\n".encode()) == (
        b"-NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n$1\r\n1\r\n"
    )
    for protocol in (2, 3):
        client = connect(resp.port, password=token, protocol=protocol)
        assert client.get("a") == b"1"  # AUTH <token> is the default tenant
    admin = connect(resp.port, username="admin", password=tokens["admin"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        admin.get("a")


def test_throttled_error_form(
    server: ThreadServer, resp: RespServer, tokens: dict[str, str]
) -> None:
    from spindle.kv.tenancy import Quota

    token = new_tenant(server, tokens["admin"], "slow")
    with Client(server.address, tenant="admin", token=tokens["admin"]) as admin:
        admin.set_quota("slow", Quota(write_ops_per_s=1))
    client = redis.Redis(port=resp.port, username="slow", password=token)
    with pytest.raises(redis.ResponseError, match=r"^THROTTLED retry after \d+ ms$"):
        for i in range(50):
            client.set(f"k{i}", "v")


# -- bounds --------------------------------------------------------------------------------


def test_connection_limit(
    server: ThreadServer, resp: RespServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [redis.Redis(port=resp.port, single_connection_client=True) for _ in range(3)]
    for client in held:
        client.ping()
    monkeypatch.setattr(limits, "CONNECTIONS_PER_NODE_MAX", 3)
    with socket.create_connection(("127.0.0.1", resp.port), timeout=5) as sock:
        assert sock.recv(100) == b"-ERR max number of clients reached\r\n"
    for client in held:
        client.close()


def test_idle_connections_are_closed(server: ThreadServer) -> None:
    resp = start_resp(server, idle_timeout_s=0.2)
    try:
        with socket.create_connection(("127.0.0.1", resp.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
            assert sock.recv(100) == b""  # closed by the server after 0.2 s of silence
    finally:
        on_loop(server, resp.stop(grace_s=1))


def test_client_that_does_not_read_is_paused(resp: RespServer, r: redis.Redis) -> None:
    """A client that pipelines without reading its replies: the server stops reading it,
    its memory stays bounded, and other clients are served meanwhile."""
    r.set("big", b"x" * 100_000)
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 1_000_000  # 100 GB of replies
    with socket.create_connection(("127.0.0.1", resp.port), timeout=5) as sock:
        sock.setblocking(False)
        sent = 0
        blocked_since = time.monotonic()
        while sent < len(request) and time.monotonic() - blocked_since < 1.0:
            try:
                sent += sock.send(request[sent : sent + 65536])
                blocked_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < len(request)  # the server stopped reading
        assert r.get("big") == b"x" * 100_000


# -- redis-cli -----------------------------------------------------------------------------

needs_redis_cli = pytest.mark.skipif(
    shutil.which("redis-cli") is None,
    reason="redis-cli not installed (Debian package redis-tools; `make system-deps` as root)",
)


def cli(port: int, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return (done.stdout + done.stderr).decode()


@needs_redis_cli
def test_redis_cli(resp: RespServer) -> None:
    port = resp.port
    assert cli(port, "SET", "a", "b").strip() == "OK"
    assert cli(port, "GET", "a").strip() == "b"
    assert cli(port, "-3", "GET", "a").strip() == "b"
    assert cli(port, "-3", "HELLO", "3").count("spindle") == 1
    assert cli(port, "GET", "nope").strip() == ""
    assert cli(port, "INCR", "n").strip() == "1"
    assert "unknown command 'FOO'" in cli(port, "FOO")
    assert "wrong number of arguments for 'get' command" in cli(port, "GET")
    assert cli(port, "DBSIZE").strip() == "2"
    assert cli(port, "--scan", "--pattern", "*").split() in (["a", "n"], ["n", "a"])
    assert "redis_version:7.2.0" in cli(port, "INFO", "server")
    commands = "".join(f"SET pipe{i} {i}\r\n" for i in range(1000)).encode()
    out = cli(port, "--pipe", stdin=commands)
    assert "errors: 0, replies: 1000" in out
    assert cli(port, "GET", "pipe999").strip() == "999"
