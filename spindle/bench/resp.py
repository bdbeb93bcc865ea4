"""`spindle bench resp`: redis-benchmark against Spindle's RESP port and against a
redis-server with equal durability, side by side in one run.

Both servers acknowledge a write only once it is on disk: Spindle always fsyncs its log
(group commit), and redis-server runs with `--appendonly yes --appendfsync always`
(`--save ''`: no snapshots competing for the disk). Each cell is SET or GET with
`-c 50` clients, 100-byte values (`-d 100`) and random keys (`-r`), with and without
pipelining (`-P 16`); cells alternate between the two servers so that drift on the
machine hits both alike. Printed: requests per second of each and the ratio
Spindle/Redis. A short calibration run per cell sizes `-n` for about `seconds` per cell.

redis-benchmark and redis-server come from the Debian packages redis-tools and
redis-server; where missing and running as root with apt-get, they are installed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

CLIENTS = 50
"""redis-benchmark -c: concurrent connections."""
PIPELINE_DEPTH = 16
"""redis-benchmark -P of the pipelined cells."""
VALUE_BYTES = 100
"""redis-benchmark -d."""
RANDOM_KEYS = 100_000
"""redis-benchmark -r: keys are key:000000000000 .. key:000000099999."""
CALIBRATION_REQUESTS = 5_000
"""-n of the calibration run of an unpipelined cell (x PIPELINE_DEPTH when pipelined)."""
START_TIMEOUT_S = 30.0
CELLS: tuple[tuple[str, int], ...] = (
    ("set", 1),
    ("get", 1),
    ("set", PIPELINE_DEPTH),
    ("get", PIPELINE_DEPTH),
)
TARGET_RATIO = 0.5
"""The goal for SET and GET unpipelined (issue 3)."""

console = Console()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spindle_server_command(data_dir: str, port: int, resp_port: int) -> list[str]:
    """`spindle server` as a subprocess, its RESP port the one measured."""
    return [
        sys.executable,
        "-m",
        "spindle.cli",
        "server",
        "--data-dir",
        data_dir,
        "--port",
        str(port),
        "--resp-port",
        str(resp_port),
        "--http-port",
        str(free_port()),
    ]


def redis_server_command(data_dir: str, port: int) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        data_dir,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]


def ensure_tools() -> None:
    """Install redis-server and redis-tools where missing (root with apt-get), else say
    how and exit."""
    missing = [tool for tool in ("redis-benchmark", "redis-server") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        console.print(
            f"installing redis-server redis-tools with apt-get ({', '.join(missing)} missing)"
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server", "redis-tools"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return
    console.print(
        f"[red]missing {', '.join(missing)}[/red]: install them with "
        "`sudo apt-get install -y redis-server redis-tools` (Debian/Ubuntu) or "
        "`brew install redis` (macOS), then run again"
    )
    raise SystemExit(1)


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"{what} exited early:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def running(command: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process, what)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def floor_server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "spindle.bench.respfloor", str(port)]


def thread_cpu_s(pid: int) -> dict[int, tuple[float, float]]:
    """Per-thread (user, system) CPU seconds of process `pid`; empty where /proc is
    missing."""
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        found[int(tid)] = (int(fields[11]) * tick_s, int(fields[12]) * tick_s)
    return found


def cpu_per_request_us(
    pid: int, before: dict[int, tuple[float, float]], requests: int
) -> dict[str, float]:
    """The main thread's user and system CPU, and the other threads' total, per request."""
    after = thread_cpu_s(pid)
    user_now, sys_now = after.get(pid, (0.0, 0.0))
    user_then, sys_then = before.get(pid, (0.0, 0.0))
    main_user, main_sys = user_now - user_then, sys_now - sys_then
    others = sum(
        sum(now) - sum(before.get(tid, (0.0, 0.0))) for tid, now in after.items() if tid != pid
    )
    scale = 1e6 / max(1, requests)
    return {
        "main_user_us": main_user * scale,
        "main_sys_us": main_sys * scale,
        "other_threads_us": others * scale,
    }


def redis_benchmark(port: int, op: str, pipeline: int, requests: int) -> dict[str, float]:
    """One redis-benchmark run: {rps, avg_ms, p50_ms, p99_ms}."""
    command = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(CLIENTS),
        "-n",
        str(requests),
        "-r",
        str(RANDOM_KEYS),
        "-d",
        str(VALUE_BYTES),
        "-P",
        str(pipeline),
        "-t",
        op,
        "--csv",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    rows = [row for row in csv.reader(io.StringIO(done.stdout)) if row]
    if done.returncode != 0 or len(rows) < 2:
        raise RuntimeError(
            f"redis-benchmark failed ({done.returncode}): {done.stdout}{done.stderr}"
        )
    header, values = rows[0], rows[1]
    row = dict(zip(header, values, strict=False))
    return {
        "rps": float(row["rps"]),
        "avg_ms": float(row["avg_latency_ms"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
    }


def measure(port: int, op: str, pipeline: int, seconds: float) -> dict[str, float]:
    """Calibrate, then run for about `seconds`."""
    calibration = redis_benchmark(port, op, pipeline, CALIBRATION_REQUESTS * pipeline)
    requests = max(CALIBRATION_REQUESTS * pipeline, int(calibration["rps"] * seconds))
    result = redis_benchmark(port, op, pipeline, requests)
    result["requests"] = requests
    result["calibration_requests"] = CALIBRATION_REQUESTS * pipeline
    return result


def main(
    seconds: float = 4.0,
    runs: int = 1,
    output: str = "bench-results/resp.json",
    floor: bool = True,
) -> dict[str, Any]:
    """Run every cell against both servers (and the floor) `runs` times; print medians
    and ratios."""
    ensure_tools()
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="spindle-bench-resp-") as tmp:
        spindle_dir = Path(tmp) / "spindle"
        redis_dir = Path(tmp) / "redis"
        spindle_dir.mkdir()
        redis_dir.mkdir()
        spindle_port, resp_port, redis_port = free_port(), free_port(), free_port()
        floor_port = free_port()
        with (
            running(
                spindle_server_command(str(spindle_dir), spindle_port, resp_port),
                resp_port,
                "spindle",
            ) as spindle_process,
            running(redis_server_command(str(redis_dir), redis_port), redis_port, "redis-server"),
            running(floor_server_command(floor_port), floor_port, "floor")
            if floor
            else contextlib.nullcontext(),
        ):
            for run in range(runs):
                for op, pipeline in CELLS:
                    cell = f"{op.upper()} -P {pipeline}" if pipeline > 1 else op.upper()
                    servers = [("spindle", resp_port), ("redis", redis_port)]
                    if floor and pipeline == 1:
                        servers.append(("floor", floor_port))
                    for server, port in servers:
                        cpu_before = thread_cpu_s(spindle_process.pid)
                        result = measure(port, op, pipeline, seconds)
                        if server == "spindle":
                            total = int(result["requests"] + result["calibration_requests"])
                            result.update(
                                cpu_per_request_us(spindle_process.pid, cpu_before, total)
                            )
                        results.setdefault(cell, {}).setdefault(server, []).append(result)
                        console.print(
                            f"run {run + 1}/{runs} {cell:<10} {server:<8} "
                            f"{result['rps']:>10,.0f} req/s  p50 {result['p50_ms']:.2f} ms"
                        )
    summary = summarize(results)
    show(summary, runs)
    report = {
        "benchmark": "resp",
        "command": f"spindle bench resp --seconds {seconds} --runs {runs}",
        "clients": CLIENTS,
        "pipeline_depth": PIPELINE_DEPTH,
        "value_bytes": VALUE_BYTES,
        "random_keys": RANDOM_KEYS,
        "durability": "spindle: fsync per group commit; redis: appendonly yes, appendfsync always",
        "floor": "spindle.bench.respfloor: uvloop + hiredis, canned +OK, stores nothing",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cells": summary,
        "runs": results,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=2))
    console.print(f"results written to {output}")
    return report


def summarize(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for cell, by_server in results.items():
        spindle_rps = statistics.median(r["rps"] for r in by_server["spindle"])
        redis_rps = statistics.median(r["rps"] for r in by_server["redis"])
        summary[cell] = {
            "spindle_rps": spindle_rps,
            "redis_rps": redis_rps,
            "ratio": spindle_rps / redis_rps if redis_rps else 0.0,
            "spindle_p50_ms": statistics.median(r["p50_ms"] for r in by_server["spindle"]),
            "redis_p50_ms": statistics.median(r["p50_ms"] for r in by_server["redis"]),
        }
        for key in ("main_user_us", "main_sys_us", "other_threads_us"):
            values = [r[key] for r in by_server["spindle"] if key in r]
            if values:
                summary[cell][f"spindle_{key}"] = statistics.median(values)
        if by_server.get("floor"):
            summary[cell]["floor_rps"] = statistics.median(r["rps"] for r in by_server["floor"])
    return summary


def show(summary: dict[str, dict[str, float]], runs: int) -> None:
    table = Table(
        title=f"redis-benchmark -c {CLIENTS} -d {VALUE_BYTES} -r {RANDOM_KEYS} (median of {runs})"
    )
    for column in ("cell", "Spindle/s", "Redis/s", "ratio", "p50 Spindle", "p50 Redis"):
        table.add_column(column, justify="right", no_wrap=True)
    for cell, row in summary.items():
        unpipelined = "-P" not in cell
        ratio = f"{row['ratio']:.2f}x"
        if unpipelined:
            ratio += " ok" if row["ratio"] >= TARGET_RATIO else f" <{TARGET_RATIO}"
        table.add_row(
            cell,
            f"{row['spindle_rps']:,.0f}",
            f"{row['redis_rps']:,.0f}",
            ratio,
            f"{row['spindle_p50_ms']:.2f} ms",
            f"{row['redis_p50_ms']:.2f} ms",
        )
    console.print(table)
    costs = Table(title="where Spindle's time goes (medians)")
    for column in ("cell", "floor/s", "main thread user", "main thread system", "other threads"):
        costs.add_column(column, justify="right", no_wrap=True)
    for cell, row in summary.items():
        if "spindle_main_user_us" not in row:
            continue
        costs.add_row(
            cell,
            f"{row['floor_rps']:,.0f}" if "floor_rps" in row else "-",
            f"{row['spindle_main_user_us']:.1f} us/req",
            f"{row['spindle_main_sys_us']:.1f} us/req",
            f"{row['spindle_other_threads_us']:.1f} us/req",
        )
    console.print(costs)
    console.print(
        "floor: a uvloop + hiredis server that answers +OK and stores nothing "
        "(spindle.bench.respfloor); CPU from /proc, per request"
    )


if __name__ == "__main__":
    main()
