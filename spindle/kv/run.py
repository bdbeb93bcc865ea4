"""Run a storage node in the foreground: open the engine, serve, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from spindle.kv.node import Node
from spindle.kv.server import NodeServer
from spindle.kv.storage import RocksEngine

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7379
DEFAULT_HTTP_PORT = 7380


async def serve(
    data_dir: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    http_port: int | None = DEFAULT_HTTP_PORT,
    *,
    on_ready: Callable[[NodeServer], None] | None = None,
) -> None:
    engine = RocksEngine(data_dir)
    try:
        node = Node(engine, host=host, port=port)
        await node.ensure_default_keyspace()
        server = NodeServer(node, host, port, http_port)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        logging.getLogger("spindle.server").info("shutting down")
        await server.stop()
    finally:
        engine.close()


def run(
    data_dir: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    http_port: int | None = DEFAULT_HTTP_PORT,
    on_ready: Callable[[NodeServer], None] | None = None,
) -> None:
    import uvloop

    uvloop.run(serve(data_dir, host, port, http_port, on_ready=on_ready))
