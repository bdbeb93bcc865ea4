"""Running one attempt of a call: a Python callable (async on the loop, sync on a thread
pool), an external program (JSON on stdin and stdout), or an HTTP endpoint (JSON POST).

Every runner returns the result as a JSON-able value or raises; `classify` maps the error
to (type name, overload?) for the retry policy and the AIMD window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import urllib.parse
from concurrent.futures import Executor
from typing import Any

from spindle.functions import codec, limits
from spindle.functions.registry import Registered
from spindle.kv.errors import Throttled
from spindle.kv.errors import Timeout as StoreTimeout


class CommandFailed(Exception):
    """An external program exited non-zero or wrote no valid JSON."""


class HttpError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class Overloaded(HttpError):
    """429 or 503: the downstream is over capacity."""


def call_document(call_id: str, function: str, attempt: int, args: Any) -> dict[str, Any]:
    return {"call_id": call_id, "function": function, "attempt": attempt, "args": args}


async def run_attempt(
    registered: Registered,
    call_id: str,
    attempt: int,
    args: Any,
    executor: Executor,
) -> Any:
    spec = registered.spec
    if spec.kind == "python":
        assert registered.target is not None
        if spec.blocking:
            loop = asyncio.get_running_loop()
            bound = functools.partial(_invoke, registered.target, args)
            return await loop.run_in_executor(executor, bound)
        return await _invoke(registered.target, args)
    document = call_document(call_id, spec.name, attempt, args)
    if spec.kind == "command":
        return await _run_command(list(spec.command), codec.encode_json(document))
    assert spec.url is not None
    return await _post_json(spec.url, codec.encode_json(document))


def _invoke(target: Any, args: Any) -> Any:
    if args is None:
        return target()
    if isinstance(args, dict):
        return target(**args)
    if isinstance(args, list):
        return target(*args)
    return target(args)


async def _run_command(argv: list[str], stdin: bytes) -> Any:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=limits.COMMAND_OUTPUT_BYTES_MAX,
    )
    try:
        stdout, stderr = await process.communicate(stdin)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if len(stdout) > limits.COMMAND_OUTPUT_BYTES_MAX:
        raise CommandFailed(f"{argv[0]} wrote more than {limits.COMMAND_OUTPUT_BYTES_MAX} bytes")
    if process.returncode != 0:
        tail = stderr.decode(errors="replace")[-limits.ERROR_CHARS_MAX :]
        raise CommandFailed(f"{argv[0]} exited with status {process.returncode}: {tail}")
    try:
        return codec.decode_json(stdout)
    except Exception as error:
        raise CommandFailed(f"{argv[0]} wrote no valid JSON on stdout: {error}") from None


async def _post_json(url: str, body: bytes) -> Any:
    """A minimal HTTP/1.1 POST (stdlib only): one connection per call, closed after."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(0, f"malformed status line {status_line!r}")
        status = int(parts[1])
        length: int | None = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is not None and length > limits.HTTP_RESPONSE_BYTES_MAX:
            raise HttpError(status, f"response of {length} bytes is over the limit")
        if length is not None:
            payload = await reader.readexactly(length)
        else:
            payload = await reader.read(limits.HTTP_RESPONSE_BYTES_MAX + 1)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    text = payload.decode(errors="replace")
    if status in (429, 503):
        raise Overloaded(status, text)
    if not 200 <= status < 300:
        raise HttpError(status, text)
    return codec.decode_json(payload) if payload.strip() else None


def classify(error: BaseException) -> tuple[str, bool]:
    """(error type name for the retry policy, whether it signals downstream overload)."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError | StoreTimeout):
        return "Timeout", True
    if isinstance(error, Overloaded | Throttled):
        return type(error).__name__, True
    if isinstance(error, ConnectionError | OSError):
        return type(error).__name__, True
    return type(error).__name__, False
