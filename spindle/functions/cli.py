"""CLI: `spindle functions ...` (functions_app) and `spindle worker` (the `worker` command
function). Heavy imports happen inside the commands, so `spindle --help` stays fast.

Run standalone as `python -m spindle.functions.cli functions|worker|http ...`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from spindle.functions.client import FunctionsClient

T = TypeVar("T")

functions_app = typer.Typer(
    help="Asynchronous functions: submit calls, inspect them, see the queue.",
    no_args_is_help=True,
)

AddrOpt = Annotated[
    str,
    typer.Option("--addr", "-a", envvar="SPINDLE_ADDR", help="Store node address HOST:PORT."),
]
DEFAULT_ADDR = "127.0.0.1:7379"


def _run(address: str, body: Callable[[FunctionsClient], Awaitable[T]]) -> T:
    from spindle.functions.client import FunctionsClient
    from spindle.kv.errors import SpindleError

    async def main() -> T:
        async with FunctionsClient(address) as client:
            return await body(client)

    try:
        return asyncio.run(main())
    except SpindleError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def _echo_json(value: Any) -> None:
    import msgspec

    typer.echo(json.dumps(msgspec.to_builtins(value), indent=2))


@functions_app.command()
def status(
    addr: AddrOpt = DEFAULT_ADDR,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    prometheus: Annotated[bool, typer.Option(help="Prometheus text format.")] = False,
) -> None:
    """Per function and criticality: queued, running, deferred, throughput, p50/p99
    queueing delay, deadline misses, dead letters."""
    from spindle.functions.status import report

    rows = _run(addr, lambda client: report(client.queue))
    if prometheus:
        from spindle.functions.metrics import render

        sys.stdout.write(render(rows).decode())
        return
    if as_json:
        _echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Spindle Functions")
    columns = [
        "function",
        "criticality",
        "queued",
        "running",
        "deferred",
        "delayed",
        "throughput/s",
        "p50 delay ms",
        "p99 delay ms",
        "deadline misses",
        "dead letters",
        "succeeded",
    ]
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("function", "criticality") else "right"
        )
    for row in rows:
        table.add_row(
            row.function,
            row.criticality,
            str(row.queued),
            str(row.running),
            str(row.deferred),
            str(row.delayed),
            f"{row.throughput_per_s:.2f}",
            "-" if row.queue_delay_p50_ms is None else str(row.queue_delay_p50_ms),
            "-" if row.queue_delay_p99_ms is None else str(row.queue_delay_p99_ms),
            str(row.deadline_misses),
            str(row.dead_letters),
            str(row.succeeded),
        )
    Console().print(table)


@functions_app.command()
def submit(
    function: str,
    args: Annotated[str, typer.Argument(help="Arguments as JSON (object or array).")] = "null",
    addr: AddrOpt = DEFAULT_ADDR,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    start_after_s: Annotated[float | None, typer.Option(help="Seconds from now.")] = None,
    deadline_s: Annotated[float | None, typer.Option(help="Seconds from now.")] = None,
    criticality: Annotated[str | None, typer.Option(help="critical|normal|deferrable")] = None,
    wait_s: Annotated[float, typer.Option(help="Wait this long for the result.")] = 0.0,
) -> None:
    """Submit one call; prints its id (and with --wait-s, its result)."""
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as error:
        typer.echo(f"error: ARGS is not JSON: {error}", err=True)
        raise typer.Exit(2) from None

    async def body(client: FunctionsClient) -> tuple[str, Any]:
        call_id = await client.submit(
            function,
            parsed,
            idempotency_key=idempotency_key,
            start_after=start_after_s,
            deadline=deadline_s,
            criticality=criticality,
        )
        result = await client.result(call_id, wait_s=wait_s) if wait_s > 0 else None
        return call_id, result

    call_id, result = _run(addr, body)
    typer.echo(call_id)
    if wait_s > 0:
        typer.echo(json.dumps(result))


@functions_app.command()
def show(call_id: str, addr: AddrOpt = DEFAULT_ADDR) -> None:
    """One call's state."""
    _echo_json(_run(addr, lambda client: client.status(call_id)))


@functions_app.command()
def result(
    call_id: str, addr: AddrOpt = DEFAULT_ADDR, wait_s: Annotated[float, typer.Option()] = 0.0
) -> None:
    """A call's result (JSON)."""
    typer.echo(json.dumps(_run(addr, lambda client: client.result(call_id, wait_s=wait_s))))


@functions_app.command()
def cancel(call_id: str, addr: AddrOpt = DEFAULT_ADDR) -> None:
    """Cancel a queued or running call."""
    _echo_json(_run(addr, lambda client: client.cancel(call_id)))


@functions_app.command("dead-letters")
def dead_letters(addr: AddrOpt = DEFAULT_ADDR, limit: int = 100) -> None:
    """Calls that failed after their retries."""
    _echo_json(_run(addr, lambda client: client.dead_letters(limit)))


@functions_app.command()
def replay(call_id: str, addr: AddrOpt = DEFAULT_ADDR) -> None:
    """Run a dead-lettered call again."""
    _echo_json(_run(addr, lambda client: client.replay(call_id)))


@functions_app.command("register")
def register(
    name: str,
    command: Annotated[
        list[str] | None, typer.Argument(help="Program and arguments (after --).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="HTTP endpoint instead of a program.")] = None,
    addr: AddrOpt = DEFAULT_ADDR,
    criticality: str = "normal",
    deadline_s: float = 3600.0,
    timeout_s: float = 60.0,
    max_attempts: int = 3,
    concurrency_limit: Annotated[int | None, typer.Option()] = None,
    downstream: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Register an external program (`-- prog args`) or an HTTP endpoint (`--url`)."""
    from spindle.functions.registry import Registry
    from spindle.functions.spec import RetryPolicy

    registry = Registry()
    options: dict[str, Any] = {
        "criticality": criticality,
        "deadline_s": deadline_s,
        "timeout_s": timeout_s,
        "retry": RetryPolicy(max_attempts=max_attempts),
        "concurrency_limit": concurrency_limit,
        "downstream": downstream,
    }
    if url is not None:
        registry.http(name, url, **options)
    elif command:
        registry.command(name, command, **options)
    else:
        typer.echo("error: give a command (after --) or --url", err=True)
        raise typer.Exit(2)
    _run(addr, lambda client: client.register(registry))
    typer.echo(f"registered {name}")


@functions_app.command("http")
def http(
    addr: AddrOpt = DEFAULT_ADDR,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8090,
) -> None:
    """Serve the HTTP submit API (POST /v1/calls, GET /v1/calls/{id}, ...) until SIGTERM."""
    import logging
    import signal

    from spindle.functions import limits
    from spindle.functions.client import FunctionsClient
    from spindle.functions.http_api import FunctionsHttpServer
    from spindle.functions.worker import stop_tasks

    logging.basicConfig(level=os.environ.get("SPINDLE_LOG", "INFO"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with FunctionsClient(addr) as client:
            server = FunctionsHttpServer(client, host, port)
            await server.start()
            print(f"functions http api on {host}:{server.port}", flush=True)
            await stop.wait()
            await server.close()
            # Connections still open: asyncio.run would cancel them once and wait without a
            # timeout (a cancel can be lost, see spindle.functions.worker); bounded here.
            await stop_tasks(asyncio.all_tasks() - {asyncio.current_task()}, limits.STOP_TASK_S_MAX)

    asyncio.run(main())


def worker(
    app: Annotated[
        str | None,
        typer.Option(help="module:attribute of a Registry whose Python functions to run."),
    ] = None,
    addr: AddrOpt = DEFAULT_ADDR,
    slots: Annotated[int, typer.Option(help="Calls run at once.")] = 16,
    prefetch: Annotated[
        int | None,
        typer.Option(help="Short calls leased ahead of free slots (default: as many as slots)."),
    ] = None,
    threads: Annotated[int, typer.Option(help="Thread pool for blocking functions.")] = 8,
    lease_s: Annotated[float, typer.Option(help="Lease length.")] = 10.0,
    heartbeat_s: Annotated[float, typer.Option(help="Lease renewal period.")] = 2.0,
    drain_s: Annotated[float, typer.Option(help="Grace for running calls on SIGTERM.")] = 30.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
) -> None:
    """Run a worker: lease calls from the queue and run them until SIGTERM (then drain)."""
    import logging
    import signal

    from spindle.functions import limits
    from spindle.functions.registry import Registry, load_registry
    from spindle.functions.worker import Worker, WorkerConfig, stop_tasks
    from spindle.kv.client import AsyncClient

    logging.basicConfig(level=os.environ.get("SPINDLE_LOG", "INFO"))
    if app is not None and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    registry = load_registry(app) if app else Registry()
    config = WorkerConfig(
        slots=slots,
        prefetch=prefetch,
        threads=threads,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        drain_s=drain_s,
    )

    async def main() -> bool:
        """Serve until SIGTERM/SIGINT, drain; True if nothing was left running."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with AsyncClient(addr) as kv:
            instance = Worker(kv, registry, config)
            if metrics_port is not None:
                from prometheus_client import CollectorRegistry, start_http_server

                from spindle.functions.metrics import StatusCollector

                metrics = CollectorRegistry()
                metrics.register(StatusCollector(lambda: instance.status_rows))
                start_http_server(metrics_port, registry=metrics)
            task = asyncio.create_task(instance.run(stop))
            print(f"worker {config.worker_id} ready", flush=True)
            await task
            print(f"worker {config.worker_id} drained", flush=True)
        # asyncio.run would cancel what is left once and wait for it without a timeout, and
        # the interpreter joins the thread pool at exit: both bounded here instead.
        left = await stop_tasks(
            asyncio.all_tasks() - {asyncio.current_task()}, limits.STOP_TASK_S_MAX
        )
        threads = instance.join_threads()
        if threads:
            logging.warning("abandoning %d blocking calls still running after the drain", threads)
        return not left and not threads

    if not asyncio.run(main()):
        # Something outlived the bounded shutdown: exit without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


def main() -> None:
    root = typer.Typer(no_args_is_help=True)
    root.add_typer(functions_app, name="functions")
    root.command("worker")(worker)
    root.command("http")(http)
    root()


if __name__ == "__main__":
    main()
