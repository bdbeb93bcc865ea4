"""The `spindle` command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from spindle.functions.cli import functions_app
from spindle.functions.cli import worker as functions_worker
from spindle.kv.errors import SpindleError

T = TypeVar("T")

app = typer.Typer(
    help="Spindle: a sharded key/value store, async functions and a social service.",
    no_args_is_help=True,
    add_completion=False,
)
kv_app = typer.Typer(help="Read and write keys.", no_args_is_help=True)
keyspace_app = typer.Typer(help="Create and list keyspaces.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants (needs the admin token).", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks (not tests): measured numbers for docs/.", no_args_is_help=True
)
app.add_typer(kv_app, name="kv")
app.add_typer(keyspace_app, name="keyspace")
app.add_typer(tenant_app, name="tenant")
app.add_typer(functions_app, name="functions")
app.command("worker")(functions_worker)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)

AddrOpt = Annotated[
    str,
    typer.Option("--addr", "-a", envvar="SPINDLE_ADDR", help="Node address HOST:PORT."),
]
KeyspaceOpt = Annotated[str, typer.Option("--keyspace", "-k", help="Keyspace name.")]


def _client(addr: str, keyspace: str = "default") -> Any:
    from spindle.kv.client import Client

    return _guard(lambda: Client(addr, keyspace=keyspace, timeout_s=10.0))


def _guard(action: Callable[[], T]) -> T:
    """Run a client action; a Spindle error becomes a one-line message and exit code 1."""
    try:
        return action()
    except SpindleError as error:
        err_console.print(f"[red]error[/red] {error}")
        raise typer.Exit(1) from None


def _show(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return repr(raw)


@app.command()
def server(
    data_dir: Annotated[
        str, typer.Option(envvar="SPINDLE_DATA_DIR", help="Where the node keeps its data.")
    ] = "./.spindle",
    host: Annotated[str, typer.Option(envvar="SPINDLE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SPINDLE_PORT", help="Binary protocol.")] = 7379,
    http_port: Annotated[
        int, typer.Option(envvar="SPINDLE_HTTP_PORT", help="HTTP: /health /status /metrics.")
    ] = 7380,
    resp_port: Annotated[
        int, typer.Option(envvar="SPINDLE_RESP_PORT", help="Redis protocol (RESP2/RESP3).")
    ] = 6380,
    loopback_default: Annotated[
        bool,
        typer.Option(
            help="Let unauthenticated loopback clients act as the default tenant "
            "(like Redis's protected mode). --no-loopback-default requires a token always."
        ),
    ] = True,
    node_id: Annotated[
        int, typer.Option(envvar="SPINDLE_NODE_ID", help="This node's id, unique in the cluster.")
    ] = 1,
    join: Annotated[
        str | None,
        typer.Option(
            envvar="SPINDLE_JOIN",
            help="HOST:PORT of any cluster member to join; without it the node bootstraps "
            "a new cluster.",
        ),
    ] = None,
    cluster_size: Annotated[
        int,
        typer.Option(
            envvar="SPINDLE_CLUSTER_SIZE",
            help="Nodes the new cluster will have (bootstrap only); keyspaces replicate "
            "min(3, this) ways and the default keyspace appears once that many joined.",
        ),
    ] = 1,
    cluster_secret: Annotated[
        str | None,
        typer.Option(
            envvar="SPINDLE_CLUSTER_SECRET",
            help="Shared by all nodes of a cluster to authenticate each other.",
        ),
    ] = None,
) -> None:
    """Run a storage node in the foreground (Ctrl-C or SIGTERM stops it cleanly)."""
    import logging

    from spindle.kv.run import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def ready(srv: Any, credentials: dict[str, str]) -> None:
        addr = f"{srv.host}:{srv.port}"
        console.print(f"[bold]spindle node[/bold] data in {os.path.abspath(data_dir)}")
        console.print(f"  binary protocol  {addr}")
        console.print(f"  http             http://{srv.host}:{srv.http_port}/status")
        console.print(f"  redis protocol   {srv.host}:{resp_port}  (redis-cli -p {resp_port})")
        for name, token in sorted(credentials.items()):
            label = "admin token" if name == "admin" else f"tenant {name!r} token"
            console.print(f"  {label:<22} {token}", highlight=False)
        if loopback_default:
            console.print("  loopback clients without a token act as tenant 'default'")
        console.print("try, in another terminal:")
        console.print(f"  .venv/bin/spindle kv put hello world --addr {addr}")
        console.print(f"  .venv/bin/spindle kv get hello --addr {addr}")
        console.print(f"  .venv/bin/spindle status --addr {addr}")
        console.print("Ctrl-C stops the node.", highlight=False)
        sys.stdout.flush()

    from spindle.kv.client import parse_address
    from spindle.kv.run import ClusterOptions

    cluster = ClusterOptions(
        node_id=node_id,
        cluster_size=cluster_size,
        join=parse_address(join) if join else None,
        secret=cluster_secret,
    )
    run(
        data_dir,
        host,
        port,
        http_port,
        on_ready=ready,
        loopback_default_tenant=loopback_default,
        resp_port=resp_port,
        cluster=cluster,
    )
    console.print("stopped cleanly")


@app.command()
def up(
    data_dir: Annotated[str, typer.Option(envvar="SPINDLE_DATA_DIR")] = "./.spindle",
    host: Annotated[str, typer.Option(envvar="SPINDLE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SPINDLE_PORT")] = 7379,
    http_port: Annotated[int, typer.Option(envvar="SPINDLE_HTTP_PORT")] = 7380,
    resp_port: Annotated[int, typer.Option(envvar="SPINDLE_RESP_PORT")] = 6380,
    worker_slots: Annotated[int, typer.Option(help="Calls the worker runs at once.")] = 16,
    worker_app: Annotated[
        str | None, typer.Option(help="module:attribute of a functions Registry to run.")
    ] = None,
    nodes: Annotated[int, typer.Option(help="Storage nodes in the local cluster.")] = 3,
) -> None:
    """Start the local system in the foreground: a 3-node storage cluster (node i on
    port + 10(i-1), RESP port + (i-1)) and a function worker (what `make run` runs).
    Ctrl-C stops everything cleanly."""
    from spindle.up import UpConfig
    from spindle.up import up as run_up

    config = UpConfig(data_dir, host, port, http_port, resp_port, worker_slots, worker_app, nodes)
    raise typer.Exit(run_up(config))


@kv_app.command("get")
def kv_get(key: str, addr: AddrOpt = "127.0.0.1:7379", keyspace: KeyspaceOpt = "default") -> None:
    """Print the value of KEY (exit code 2 if absent)."""
    with _client(addr, keyspace) as kv:
        item = _guard(lambda: kv.get_item(key.encode()))
    if item is None:
        err_console.print("(absent)")
        raise typer.Exit(2)
    console.print(_show(item.value), highlight=False, soft_wrap=True)


@kv_app.command("put")
def kv_put(
    key: str,
    value: str,
    addr: AddrOpt = "127.0.0.1:7379",
    keyspace: KeyspaceOpt = "default",
    ttl_ms: Annotated[int | None, typer.Option(help="Time to live in milliseconds.")] = None,
    if_absent: Annotated[bool, typer.Option(help="Only if the key does not exist.")] = False,
    if_version: Annotated[int | None, typer.Option(help="Only if at this version.")] = None,
) -> None:
    """Write VALUE at KEY; prints the new version."""
    with _client(addr, keyspace) as kv:
        version = _guard(
            lambda: kv.put(
                key.encode(),
                value.encode(),
                ttl_ms=ttl_ms,
                if_absent=if_absent,
                if_version=if_version,
            )
        )
    console.print(f"version {version}")


@kv_app.command("delete")
def kv_delete(
    key: str, addr: AddrOpt = "127.0.0.1:7379", keyspace: KeyspaceOpt = "default"
) -> None:
    """Delete KEY."""
    with _client(addr, keyspace) as kv:
        existed = _guard(lambda: kv.delete(key.encode()))
    console.print("deleted" if existed else "(absent)")


@kv_app.command("scan")
def kv_scan(
    addr: AddrOpt = "127.0.0.1:7379",
    keyspace: KeyspaceOpt = "default",
    prefix: Annotated[str | None, typer.Option(help="Only keys with this prefix.")] = None,
    start: Annotated[str | None, typer.Option(help="First key (inclusive).")] = None,
    end: Annotated[str | None, typer.Option(help="Last key (exclusive).")] = None,
    reverse: bool = False,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List keys and values."""
    with _client(addr, keyspace) as kv:
        items = _guard(
            lambda: list(
                kv.scan(
                    prefix=prefix.encode() if prefix is not None else None,
                    start=start.encode() if start is not None else None,
                    end=end.encode() if end is not None else None,
                    reverse=reverse,
                    limit=limit,
                )
            )
        )
    for item in items:
        if as_json:
            line = {"key": _show(item.key), "value": _show(item.value), "version": item.version}
            print(json.dumps(line))
        else:
            console.print(f"{_show(item.key)}\t{_show(item.value)}", highlight=False)


@keyspace_app.command("create")
def keyspace_create(
    name: str,
    addr: AddrOpt = "127.0.0.1:7379",
    shards: Annotated[int, typer.Option(help="Initial shard count.")] = 8,
    partitioning: Annotated[str, typer.Option(help="hash or range.")] = "hash",
    split_point: Annotated[
        list[str] | None, typer.Option(help="Explicit split point (range only); repeatable.")
    ] = None,
) -> None:
    """Create a keyspace."""
    points = [p.encode() for p in split_point] if split_point else None
    with _client(addr) as kv:
        summary = _guard(
            lambda: kv.create_keyspace(
                name, shards=shards, partitioning=partitioning, split_points=points
            )
        )
    console.print(
        f"created keyspace {summary.name} ({summary.partitioning}, {summary.shards} shards)"
    )


@keyspace_app.command("list")
def keyspace_list(addr: AddrOpt = "127.0.0.1:7379") -> None:
    """List keyspaces."""
    with _client(addr) as kv:
        found = _guard(kv.list_keyspaces)
    table = Table("name", "id", "partitioning", "shards", "epoch")
    for ks in found:
        table.add_row(ks.name, str(ks.keyspace_id), ks.partitioning, str(ks.shards), str(ks.epoch))
    console.print(table)


AdminTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="SPINDLE_ADMIN_TOKEN",
        help="Admin token (default: from ./.spindle/node1/credentials.json, written by "
        "`make run`, or ./.spindle/credentials.json, when present).",
    ),
]


CREDENTIALS_PATHS = (
    os.path.join(".spindle", "node1", "credentials.json"),  # `make run`: node 1 bootstraps
    os.path.join(".spindle", "credentials.json"),  # a standalone `spindle server`
)


def _admin(addr: str, admin_token: str | None) -> Any:
    token = admin_token
    for path in CREDENTIALS_PATHS:
        if token is None and os.path.exists(path):
            with open(path) as file:
                token = json.load(file).get("admin")
    if token is None:
        err_console.print("[red]error[/red] give --admin-token or set SPINDLE_ADMIN_TOKEN")
        raise typer.Exit(1)
    from spindle.kv.client import Client

    return _guard(lambda: Client(addr, tenant="admin", token=token))


def _quota(
    read_ops: float | None,
    write_ops: float | None,
    read_bytes: float | None,
    write_bytes: float | None,
    stored_bytes: int | None,
    burst_s: float,
) -> Any:
    from spindle.kv.tenancy import Quota

    values = (read_ops, write_ops, read_bytes, write_bytes, stored_bytes)
    if all(v is None for v in values):
        return None
    return Quota(read_ops, write_ops, read_bytes, write_bytes, stored_bytes, burst_s)


ReadOpsOpt = Annotated[float | None, typer.Option(help="Read ops per second.")]
WriteOpsOpt = Annotated[float | None, typer.Option(help="Write ops per second.")]
ReadBytesOpt = Annotated[float | None, typer.Option(help="Read bytes per second.")]
WriteBytesOpt = Annotated[float | None, typer.Option(help="Write bytes per second.")]
StoredBytesOpt = Annotated[int | None, typer.Option(help="Stored bytes at most.")]
BurstOpt = Annotated[float, typer.Option(help="Bucket size in seconds of rate.")]


@tenant_app.command("create")
def tenant_create(
    name: str,
    addr: AddrOpt = "127.0.0.1:7379",
    admin_token: AdminTokenOpt = None,
    read_ops: ReadOpsOpt = None,
    write_ops: WriteOpsOpt = None,
    read_bytes: ReadBytesOpt = None,
    write_bytes: WriteBytesOpt = None,
    stored_bytes: StoredBytesOpt = None,
    burst_s: BurstOpt = 1.0,
) -> None:
    """Create a tenant; prints its token (shown only this once)."""
    quota = _quota(read_ops, write_ops, read_bytes, write_bytes, stored_bytes, burst_s)
    with _admin(addr, admin_token) as kv:
        created = _guard(lambda: kv.create_tenant(name, quota))
    console.print(f"tenant {created.name} token {created.token}", highlight=False)


@tenant_app.command("list")
def tenant_list(addr: AddrOpt = "127.0.0.1:7379", admin_token: AdminTokenOpt = None) -> None:
    """List tenants with quotas and usage."""
    with _admin(addr, admin_token) as kv:
        tenants = _guard(kv.list_tenants)
    table = Table("tenant", "keyspaces", "stored bytes", "quota", "ops r/w", "throttled", "refused")
    for t in tenants:
        quota = msgspec.json.encode(t.quota).decode() if t.quota else "-"
        usage = t.usage
        table.add_row(
            t.name,
            ",".join(t.keyspaces),
            str(t.stored_bytes),
            quota,
            f"{usage['read_ops']}/{usage['write_ops']}",
            str(usage["throttled"]),
            str(usage["refused"]),
        )
    console.print(table)


@tenant_app.command("quota")
def tenant_quota(
    name: str,
    addr: AddrOpt = "127.0.0.1:7379",
    admin_token: AdminTokenOpt = None,
    keyspace: Annotated[str | None, typer.Option(help="Set a keyspace's quota.")] = None,
    read_ops: ReadOpsOpt = None,
    write_ops: WriteOpsOpt = None,
    read_bytes: ReadBytesOpt = None,
    write_bytes: WriteBytesOpt = None,
    stored_bytes: StoredBytesOpt = None,
    burst_s: BurstOpt = 1.0,
) -> None:
    """Replace a tenant's (or keyspace's) quota at run time; no limits given removes it."""
    quota = _quota(read_ops, write_ops, read_bytes, write_bytes, stored_bytes, burst_s)
    with _admin(addr, admin_token) as kv:
        _guard(lambda: kv.set_quota(name, quota, keyspace=keyspace))
    console.print(f"quota of {name}{'/' + keyspace if keyspace else ''} set")


@tenant_app.command("delete")
def tenant_delete(
    name: str, addr: AddrOpt = "127.0.0.1:7379", admin_token: AdminTokenOpt = None
) -> None:
    """Delete a tenant and all its data."""
    with _admin(addr, admin_token) as kv:
        _guard(lambda: kv.delete_tenant(name))
    console.print(f"deleted tenant {name}")


@tenant_app.command("rotate-token")
def tenant_rotate(
    name: str, addr: AddrOpt = "127.0.0.1:7379", admin_token: AdminTokenOpt = None
) -> None:
    """Give a tenant (or 'admin') a new token; the old one stops working at once."""
    with _admin(addr, admin_token) as kv:
        created = _guard(lambda: kv.rotate_token(name))
    console.print(f"tenant {created.name} token {created.token}", highlight=False)


@app.command()
def status(
    addr: AddrOpt = "127.0.0.1:7379",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the cluster (nodes, health, shard leaders, replica lag) and the node's state:
    keyspaces, tenants, counters. --json gives the same for scripts."""
    import asyncio

    from spindle.kv.clusterstatus import cluster_view

    view = _guard(lambda: asyncio.run(cluster_view(addr)))
    info = view["node_status"][str(view["seed_node_id"])]
    if as_json:  # the queried node's own status, plus the cluster's nodes and shards
        shown = {**info, "nodes": view["nodes"], "shards": view["shards"]}
        print(json.dumps(msgspec.to_builtins(shown), indent=2))
        return
    nodes = Table("node", "address", "http", "resp", "pid", "health", "ready", "uptime")
    for node in view["nodes"]:
        nodes.add_row(
            str(node["node_id"]),
            f"{node['host']}:{node['port']}",
            str(node.get("http_port") or "-"),
            str(node.get("resp_port") or "-"),
            str(node["pid"] or "-"),
            "[green]up[/green]" if node["health"] == "up" else "[red]down[/red]",
            "yes" if node["ready"] else "no",
            f"{node['uptime_s']:.0f}s" if node["uptime_s"] is not None else "-",
        )
    console.print(nodes)
    shards = Table("shard", "keyspace", "leader", "term", "replicas (applied, lag)", "max lag")
    for shard in view["shards"]:
        replicas = "  ".join(
            f"n{node_id}{'*' if r['role'] == 'leader' else ''}:{r['applied']}/{r['lag']}"
            for node_id, r in sorted(shard["replicas"].items())
        )
        shards.add_row(
            str(shard["group_id"]),
            shard["keyspace"],
            f"n{shard['leader_id']}" if shard["leader_id"] else "[red]none[/red]",
            str(shard["term"]),
            replicas,
            str(shard["max_lag"]),
        )
    if view["shards"]:
        console.print(shards)
    console.print(
        f"node {info['node_id']}  up {info['uptime_s']:.0f}s  "
        f"catalog epoch {info['catalog_epoch']}  engine ~{info['engine_bytes']} bytes  "
        f"writes {info['writes']}  fsyncs {info['fsyncs']}"
    )
    table = Table("keyspace", "tenant", "partitioning", "shards", "epoch", "applied (sum)")
    for ks in info["keyspaces"]:
        applied = sum(s["applied_index"] or 0 for s in ks["shard_list"])
        table.add_row(
            ks["name"],
            ks["tenant"],
            ks["partitioning"],
            str(ks["shards"]),
            str(ks["epoch"]),
            str(applied),
        )
    console.print(table)
    tenants = Table(
        "tenant",
        "read ops",
        "write ops",
        "read B",
        "write B",
        "stored B",
        "throttled",
        "refused",
        "quota share",
    )
    columns = (
        "read_ops",
        "write_ops",
        "read_bytes",
        "write_bytes",
        "stored_bytes",
        "throttled",
        "refused",
    )
    for name, usage in info.get("tenants", {}).items():
        share = f"{usage.get('quota_share', 1.0):.2f}"
        tenants.add_row(name, *(str(usage[column]) for column in columns), share)
    console.print(tenants)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sim(ctx: typer.Context) -> None:
    """Deterministic simulation of Raft clusters under faults: `spindle sim --seeds 100
    --faults all` (see `spindle sim --help`)."""
    from spindle.sim.runner import main as sim_main

    raise typer.Exit(sim_main(ctx.args))


@bench_app.command("kv")
def bench_kv(
    seconds: Annotated[float, typer.Option(help="Duration of each measured cell.")] = 2.0,
    output: Annotated[str, typer.Option(help="Where to write the JSON results.")] = (
        "bench-results/kv.json"
    ),
    quick: Annotated[bool, typer.Option(help="Fewer cells, for a smoke run.")] = False,
) -> None:
    """Benchmark a node (get, durable put, scan, mixed) against raw rocksdict."""
    from spindle.bench.kv import main as bench_main

    bench_main(seconds=seconds, output=output, quick=quick)


@bench_app.command("resp")
def bench_resp(
    seconds: Annotated[float, typer.Option(help="Duration of each measured cell.")] = 4.0,
    runs: Annotated[int, typer.Option(help="Repetitions; medians are printed.")] = 3,
    output: Annotated[str, typer.Option(help="JSON results.")] = "bench-results/resp.json",
    floor: Annotated[
        bool, typer.Option(help="Also measure a store-nothing uvloop server (the floor).")
    ] = True,
) -> None:
    """redis-benchmark against Spindle's RESP port and a redis-server with appendfsync
    always (equal durability), side by side."""
    from spindle.bench.resp import main as resp_main

    resp_main(seconds=seconds, runs=runs, output=output, floor=floor)


@bench_app.command("functions")
def bench_functions(
    calls: Annotated[int, typer.Option(help="No-op calls to run.")] = 20_000,
    slots: Annotated[int, typer.Option(help="Worker slots, the same for every system.")] = 10,
    output: Annotated[str, typer.Option(help="JSON results.")] = "bench-results/functions.json",
    quick: Annotated[bool, typer.Option(help="2,000 calls, one run.")] = False,
) -> None:
    """Spindle Functions vs Celery and Dramatiq (Redis broker): no-op calls through the
    same slots, side by side (needs `pip install -e '.[bench]'`)."""
    from spindle.bench.functions import main as functions_main

    functions_main(calls=calls, slots=slots, output=output, quick=quick)


@bench_app.command("cluster")
def bench_cluster(
    duration_s: Annotated[float, typer.Option("--duration", help="Seconds per cell.")] = 5.0,
    runs: Annotated[int, typer.Option(help="Runs; the table shows medians.")] = 3,
    generator_processes: Annotated[int, typer.Option(help="Load generator processes.")] = 2,
    systems: Annotated[str, typer.Option(help="Comma-separated: spindle, etcd.")] = (
        "spindle,etcd"
    ),
    concurrency: Annotated[str, typer.Option(help="Comma-separated client counts.")] = (
        "16,128,512"
    ),
    output: Annotated[str, typer.Option(help="JSON results.")] = "bench-results/cluster.json",
    quick: Annotated[bool, typer.Option(help="Short cells, one run.")] = False,
) -> None:
    """A local 3-node Spindle cluster vs a 3-member etcd (Debian etcd-server, started
    here): replicated durable puts, strong and eventual gets, side by side."""
    from spindle.bench.cluster import main as cluster_main

    cluster_main(
        duration_s=duration_s,
        runs=runs,
        generator_processes=generator_processes,
        systems=systems,
        output=output,
        quick=quick,
        concurrency=concurrency,
    )


@bench_app.command("noisy")
def bench_noisy(
    seconds: Annotated[float, typer.Option(help="Duration of each measured phase.")] = 4.0,
    output: Annotated[str, typer.Option(help="Where to write the JSON results.")] = (
        "bench-results/noisy.json"
    ),
) -> None:
    """A tenant floods the node: how much does another tenant's p99 rise?"""
    from spindle.bench.noisy import main as noisy_main

    noisy_main(seconds=seconds, output=output)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
