"""Tenants over the real server: authentication, isolation by every binary-protocol and
CLI route, quotas (throttling, run-time changes, stored bytes) and accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spindle.cli import app
from spindle.kv import protocol as p
from spindle.kv.client import AsyncClient
from spindle.kv.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Throttled,
    Unauthenticated,
)
from spindle.kv.tenancy import Quota
from tests.conftest import ThreadServer


@pytest.fixture
async def admin(server: ThreadServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, tenant="admin", token=server.admin_token) as client:
        yield client


async def tenant_client(server: ThreadServer, admin: AsyncClient, name: str) -> AsyncClient:
    created = await admin.create_tenant(name)
    client = AsyncClient(server.address, tenant=name, token=created.token)
    await client.connect()
    return client


async def test_tenants_are_isolated_on_the_binary_protocol(
    server: ThreadServer, admin: AsyncClient
) -> None:
    a = await tenant_client(server, admin, "alice")
    b = await tenant_client(server, admin, "bob")
    try:
        await a.create_keyspace("notes", shards=2)
        await a.put(b"secret", b"alice's", keyspace="notes")
        await b.create_keyspace("notes", shards=2)  # same name, bob's own keyspace
        assert await b.get(b"secret", keyspace="notes") is None
        await b.put(b"secret", b"bob's", keyspace="notes")
        assert await a.get(b"secret", keyspace="notes") == b"alice's"
        with pytest.raises(NotFound):
            await b.get(b"k", keyspace="only-alice")
        await a.create_keyspace("only-alice")
        with pytest.raises(NotFound):
            await b.get(b"k", keyspace="only-alice")
        with pytest.raises(NotFound):
            await b.put(b"k", b"v", keyspace="only-alice")
        with pytest.raises(NotFound):
            await b.scan_page(keyspace="only-alice")
        assert {ks.name for ks in await b.list_keyspaces()} == {"default", "notes"}
        assert "only-alice" not in {
            ks["name"]
            for ks in (await b.call(p.GetShardMap(id=0), dict, idempotent=True))["keyspaces"]
        }
        with pytest.raises(PermissionDenied):
            await b.create_tenant("mallory")
        with pytest.raises(PermissionDenied):
            await b.set_quota("alice", Quota(write_ops_per_s=1))
        with pytest.raises(PermissionDenied, match="admin credential manages tenants"):
            await admin.get(b"secret", keyspace="notes")
        tenants = {t.name: t for t in await admin.list_tenants()}
        assert tenants["bob"].usage["refused"] >= 5
        assert tenants["alice"].keyspaces == ["default", "notes", "only-alice"]
    finally:
        await a.close()
        await b.close()


async def test_authentication(server: ThreadServer, admin: AsyncClient) -> None:
    created = await admin.create_tenant("carol")
    with pytest.raises(Exception) as caught:
        async with AsyncClient(server.address, tenant="carol", token="wrong") as bad:
            await bad.ping()
    assert isinstance(caught.value, Unauthenticated)
    with pytest.raises(Unauthenticated):
        await AsyncClient(server.address, tenant="admin", token=created.token).connect()
    rotated = await admin.rotate_token("carol")
    with pytest.raises(Unauthenticated):
        await AsyncClient(server.address, tenant="carol", token=created.token).connect()
    async with AsyncClient(server.address, tenant="carol", token=rotated.token) as ok:
        await ok.put(b"k", b"v")
        assert await ok.get(b"k") == b"v"
    await admin.delete_tenant("carol")
    with pytest.raises(Unauthenticated):
        await AsyncClient(server.address, tenant="carol", token=rotated.token).connect()
    with pytest.raises(InvalidArgument, match="reserved"):
        await admin.create_tenant("admin")
    with pytest.raises(InvalidArgument):
        await admin.delete_tenant("default")


async def test_loopback_default_tenant_can_be_turned_off(tmp_path: Path) -> None:
    strict = ThreadServer(tmp_path / "strict", loopback_default_tenant=False)
    strict.start()
    try:
        async with AsyncClient(strict.address) as anonymous:
            assert (await anonymous.ping())["node_id"] == 1, "ping needs no credential"
            with pytest.raises(Unauthenticated, match="authenticate first"):
                await anonymous.get(b"k")
        token = strict.credentials["default"]
        async with AsyncClient(strict.address, tenant="default", token=token) as kv:
            await kv.put(b"k", b"v")
    finally:
        strict.stop()


def test_only_loopback_peers_get_the_default_tenant(server: ThreadServer) -> None:
    assert server.server.default_tenant_for(("127.0.0.1", 5000)) == "default"
    assert server.server.default_tenant_for(("::1", 5000, 0, 0)) == "default"
    assert server.server.default_tenant_for(("10.1.2.3", 5000)) is None
    assert server.server.default_tenant_for(("192.168.0.7", 5000)) is None
    assert server.server.default_tenant_for(None) is None


async def test_ops_quota_throttles_and_changes_at_run_time(
    server: ThreadServer, admin: AsyncClient
) -> None:
    kv = await tenant_client(server, admin, "dora")
    try:
        await admin.set_quota("dora", Quota(write_ops_per_s=5, burst_s=1))
        outcomes = []
        started = time.monotonic()
        for i in range(20):
            try:
                await kv.put(b"k%d" % i, b"v")
                outcomes.append("ok")
            except Throttled as error:
                assert error.detail["retry_after_ms"] > 0
                outcomes.append("throttled")
        elapsed_s = time.monotonic() - started
        # A burst of 5, then 5 more per second; the bound allows for a slow machine.
        assert 5 <= outcomes.count("ok") <= 5 + 5 * elapsed_s + 1, (outcomes, elapsed_s)
        assert "throttled" in outcomes
        await admin.set_quota("dora", None)  # lifted at run time, no restart
        for i in range(50):
            await kv.put(b"free%d" % i, b"v")
        usage = {t.name: t.usage for t in await admin.list_tenants()}["dora"]
        assert usage["throttled"] >= 13 and usage["write_ops"] >= 55
        default = AsyncClient(server.address)
        async with default:
            for i in range(20):
                await default.put(b"x%d" % i, b"v"), "another tenant is not affected"
    finally:
        await kv.close()


async def test_stored_bytes_quota_refuses_writes_that_would_exceed(
    server: ThreadServer, admin: AsyncClient
) -> None:
    kv = await tenant_client(server, admin, "erin")
    try:
        await kv.create_keyspace("files", shards=2)
        await admin.set_quota("erin", Quota(stored_bytes=10_000))
        await kv.put(b"a", b"x" * 4000, keyspace="files")
        await kv.put(b"b", b"x" * 4000, keyspace="files")
        with pytest.raises(QuotaExceeded, match="stored-bytes quota of 10000"):
            await kv.put(b"c", b"x" * 4000, keyspace="files")
        assert await kv.get(b"c", keyspace="files") is None
        await kv.delete(b"a", keyspace="files")
        await kv.put(b"c", b"x" * 4000, keyspace="files")
        summary = {t.name: t for t in await admin.list_tenants()}["erin"]
        assert 8000 < summary.stored_bytes < 10_000
        await admin.set_quota("erin", Quota(stored_bytes=100), keyspace="files")
        with pytest.raises(QuotaExceeded, match="keyspace"):
            await kv.put(b"d", b"tiny", keyspace="files")
    finally:
        await kv.close()


async def test_read_quota_and_status_usage(server: ThreadServer, admin: AsyncClient) -> None:
    kv = await tenant_client(server, admin, "fay")
    try:
        await kv.put(b"k", b"v" * 1000)
        await admin.set_quota("fay", Quota(read_bytes_per_s=2000, burst_s=1))
        served = 0
        with pytest.raises(Throttled, match="read bytes"):
            for _ in range(6):  # 1000 bytes each against 2000 bytes/s: the debt comes soon
                await kv.get(b"k")
                served += 1
        assert served >= 2
        status = await admin.status()
        assert status["tenants"]["fay"]["read_bytes"] >= 2000
        assert status["tenants"]["fay"]["throttled"] >= 1
    finally:
        await kv.close()


async def test_quotas_survive_restart(tmp_path: Path) -> None:
    first = ThreadServer(tmp_path / "n")
    first.start()
    try:
        async with AsyncClient(first.address, tenant="admin", token=first.admin_token) as admin:
            created = await admin.create_tenant("gus", Quota(write_ops_per_s=1, burst_s=1))
    finally:
        first.stop()
    second = ThreadServer(tmp_path / "n")
    second.start()
    try:
        async with AsyncClient(second.address, tenant="gus", token=created.token) as kv:
            await kv.put(b"a", b"1")
            with pytest.raises(Throttled):
                await kv.put(b"b", b"2")
    finally:
        second.stop()


def test_cli_tenant_commands_and_isolation(server: ThreadServer) -> None:
    runner = CliRunner()
    base = ["--addr", server.address, "--admin-token", server.admin_token]
    out = runner.invoke(app, ["tenant", "create", "hana", "--write-ops", "100", *base])
    assert out.exit_code == 0, out.output
    token = out.output.split()[-1]
    env = {"SPINDLE_TENANT": "hana", "SPINDLE_TOKEN": token}
    put = runner.invoke(app, ["kv", "put", "k", "hana's", "--addr", server.address], env=env)
    assert put.exit_code == 0, put.output
    get = runner.invoke(app, ["kv", "get", "k", "--addr", server.address], env=env)
    assert get.output == "hana's\n"
    other = runner.invoke(app, ["kv", "get", "k", "--addr", server.address])
    assert other.exit_code == 2, "the default tenant does not see hana's key"
    denied = runner.invoke(
        app, ["tenant", "list", "--addr", server.address, "--admin-token", token]
    )
    assert denied.exit_code == 1 and "Unauthenticated" in denied.output
    listed = runner.invoke(app, ["tenant", "list", *base])
    assert listed.exit_code == 0 and "hana" in listed.output
    quota = runner.invoke(app, ["tenant", "quota", "hana", "--write-ops", "1", *base])
    assert quota.exit_code == 0, quota.output
    assert runner.invoke(app, ["tenant", "delete", "hana", *base]).exit_code == 0


async def test_fair_dispatch_keeps_a_quiet_tenant_served_under_a_flood() -> None:
    """Ordering, not timing: with a flood of one tenant queued at the node's dispatcher,
    another tenant's request runs within the first round, not after the flood."""
    from spindle.kv.node import Node
    from spindle.kv.server import Dispatcher
    from spindle.kv.storage import MemoryEngine

    node = Node(MemoryEngine())
    await node.ensure_default_keyspace()
    dispatcher = Dispatcher(node)
    ran: list[str] = []

    class Connection:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant

        def execute(self, request: p.Request) -> None:
            node.execute("default", request)
            ran.append(self.tenant)

        def after_dispatch(self) -> None:
            pass

    noisy, quiet = Connection("noisy"), Connection("quiet")
    for _ in range(1000):
        dispatcher.submit("noisy", noisy, p.Get(id=1, key=b"k"))
    await asyncio.sleep(0)  # one dispatcher turn runs
    dispatcher.submit("quiet", quiet, p.Get(id=2, key=b"k"))
    while len(ran) < 1001:
        await asyncio.sleep(0)
    assert ran.index("quiet") <= 64 + 16, ran.index("quiet")


async def test_per_tenant_usage_on_the_metrics_endpoint(
    server: ThreadServer, admin: AsyncClient
) -> None:
    import urllib.request

    kv = await tenant_client(server, admin, "ivy")
    try:
        await kv.put(b"k", b"v" * 10)
        await kv.get(b"k")
        with pytest.raises(NotFound):
            await kv.get(b"k", keyspace="not-ivys")
    finally:
        await kv.close()
    url = f"http://127.0.0.1:{server.server.http_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    assert 'spindle_tenant_write_ops_total{tenant="ivy"} 1.0' in text
    assert 'spindle_tenant_read_bytes_total{tenant="ivy"} 10.0' in text
    assert 'spindle_tenant_refused_total{tenant="ivy"} 1.0' in text
    assert 'spindle_tenant_stored_bytes{tenant="ivy"}' in text
