"""Run a storage node in the foreground: open the engine, serve, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
from collections.abc import Callable

import msgspec

from spindle.kv.node import Node
from spindle.kv.resp import DEFAULT_RESP_PORT, RespServer
from spindle.kv.server import NodeServer
from spindle.kv.storage import RocksEngine

GIL_SWITCH_INTERVAL_S = 0.001
"""How long the event loop may hold the GIL while the fsync thread waits for it (Python's
default is 5 ms), so a busy loop delays a group commit's hand-off less. Measured effect on
redis-benchmark SET -c 50 is within run-to-run noise (about 24k/s at 5 ms and at 1 ms);
kept because it bounds that hand-off delay."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7379
DEFAULT_HTTP_PORT = 7380


async def _listen(server: NodeServer, resp_server: RespServer | None, node: Node) -> None:
    await server.start()
    if resp_server is not None:
        await resp_server.start()
        server.resp = resp_server
        node.address = msgspec.structs.replace(node.address, resp_port=resp_server.port)


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """How this node takes part in a cluster (the defaults: a standalone node)."""

    node_id: int = 1
    cluster_size: int = 1
    """The cluster's intended size; its default replication factor is min(3, this)."""
    join: tuple[str, int] | None = None
    """Any member's binary address; None bootstraps a new cluster."""
    secret: str | None = None
    """Shared by the cluster's nodes to authenticate each other (random if None: then
    no other node can talk to this one)."""


async def serve(
    data_dir: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    http_port: int | None = DEFAULT_HTTP_PORT,
    *,
    on_ready: Callable[[NodeServer, dict[str, str]], None] | None = None,
    loopback_default_tenant: bool = True,
    resp_port: int | None = DEFAULT_RESP_PORT,
    cluster: ClusterOptions | None = None,
) -> None:
    cluster = cluster or ClusterOptions()
    engine = RocksEngine(data_dir)
    try:
        node = Node(
            engine,
            node_id=cluster.node_id,
            host=host,
            port=port,
            http_port=http_port or 0,
            resp_port=resp_port or 0,
            cluster_size=cluster.cluster_size,
            join=cluster.join,
            secret=cluster.secret,
        )
        server = NodeServer(
            node, host, port, http_port, loopback_default_tenant=loopback_default_tenant
        )
        resp_server = RespServer(server, host, resp_port) if resp_port is not None else None
        standalone = cluster.join is None and cluster.cluster_size <= 1
        if standalone:  # serve only once the default keyspace exists
            await node.ensure_default_keyspace()
        else:  # listen first: peers must reach a node while it starts or joins
            await _listen(server, resp_server, node)
        await node.start()
        credentials: dict[str, str] = {}
        if cluster.join is None:
            credentials = save_credentials(data_dir, await node.tenants.bootstrap_credentials())
        if standalone:
            await _listen(server, resp_server, node)
        await node.committer.drain()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # What start-up made (modules, the catalog, the CLI's libraries: some 40,000
        # objects) lives as long as the process: exempt it from the cyclic collector,
        # whose full collections otherwise walk all of it and stall every request for
        # 5-11 ms (measured during `spindle bench noisy`).
        gc.freeze()
        if on_ready is not None:
            on_ready(server, credentials)
        await stop.wait()
        logging.getLogger("spindle.server").info("shutting down")
        if resp_server is not None:
            await resp_server.stop()  # before the node closes
        await server.stop()
    finally:
        engine.close()


def run(
    data_dir: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    http_port: int | None = DEFAULT_HTTP_PORT,
    on_ready: Callable[[NodeServer, dict[str, str]], None] | None = None,
    loopback_default_tenant: bool = True,
    resp_port: int | None = DEFAULT_RESP_PORT,
    cluster: ClusterOptions | None = None,
) -> None:
    import sys

    import uvloop

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    uvloop.run(
        serve(
            data_dir,
            host,
            port,
            http_port,
            on_ready=on_ready,
            loopback_default_tenant=loopback_default_tenant,
            resp_port=resp_port,
            cluster=cluster,
        )
    )


CREDENTIALS_FILE = "credentials.json"
"""Tokens made at first start, kept (mode 0600) in the data directory so that `make run`
can show them again; the catalog itself holds only their hashes."""


def save_credentials(data_dir: str, created: dict[str, str]) -> dict[str, str]:
    """Merge newly created tokens into the data directory's credentials file; returns
    every token the file knows."""
    path = os.path.join(data_dir, CREDENTIALS_FILE)
    known: dict[str, str] = {}
    if os.path.exists(path):
        with open(path) as file:
            known = json.load(file)
    if created:
        known.update(created)
        descriptor = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(known, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(path + ".tmp", path)
    return known
