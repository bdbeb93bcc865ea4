"""The `spindle` command against a real node."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from spindle.cli import app
from tests.conftest import ThreadServer

runner = CliRunner()


def cli(server: ThreadServer, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--addr", server.address])
    return result.exit_code, result.output


def test_kv_commands(server: ThreadServer) -> None:
    assert cli(server, "kv", "put", "hello", "world") == (0, "version 1\n")
    assert cli(server, "kv", "get", "hello") == (0, "world\n")
    code, out = cli(server, "kv", "get", "nothing")
    assert code == 2 and "absent" in out
    code, out = cli(server, "kv", "put", "hello", "again", "--if-absent")
    assert code == 1 and "Conflict" in out
    cli(server, "kv", "put", "help", "me")
    code, out = cli(server, "kv", "scan", "--prefix", "hel", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["key"] for r in rows) == ["hello", "help"]
    assert cli(server, "kv", "delete", "hello") == (0, "deleted\n")
    assert cli(server, "kv", "delete", "hello") == (0, "(absent)\n")


def test_keyspace_and_status_commands(server: ThreadServer) -> None:
    code, out = cli(
        server, "keyspace", "create", "users", "--partitioning", "range", "--split-point", "m"
    )
    assert code == 0 and "users (range, 2 shards)" in out
    code, out = cli(server, "keyspace", "list")
    assert code == 0 and "users" in out and "default" in out
    code, out = cli(server, "keyspace", "create", "users")
    assert code == 1 and "AlreadyExists" in out
    code, out = cli(server, "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert {ks["name"] for ks in status["keyspaces"]} == {"default", "users"}
    code, out = cli(server, "status")
    assert code == 0 and "users" in out


def test_unreachable_node_is_a_clear_error() -> None:
    result = runner.invoke(app, ["kv", "get", "k", "--addr", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "Unavailable" in result.output and "cannot connect" in result.output
