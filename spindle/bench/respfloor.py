"""The floor of `spindle bench resp`: what a Python server on this machine reaches when it
does nothing but the unavoidable part of serving Redis clients.

A uvloop server that parses each request with hiredis and answers it with a canned reply
(`+OK` to everything) and stores nothing. Its rate bounds what any server built like
Spindle's node (one Python event loop, a system call to read and one to answer each
unpipelined request) can reach here: Spindle's cost per request above this floor is the
store's own work. Run as `python -m spindle.bench.respfloor PORT`.
"""

from __future__ import annotations

import asyncio
import sys
import typing

import hiredis
import uvloop

OK = b"+OK\r\n"


class FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        replies = 0
        while self.reader.gets() is not False:
            replies += 1
        if replies and self.transport is not None:
            self.transport.write(OK * replies)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
