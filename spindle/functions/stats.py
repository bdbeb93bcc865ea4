"""Per-worker measurements (throughput, queueing delay samples, deadline misses), kept
bounded in memory and flushed to the meta keyspace so `spindle functions status` can merge
every worker's view."""

from __future__ import annotations

import collections
from typing import Any

import msgspec

from spindle.functions import limits

THROUGHPUT_WINDOW_S = 60.0
"""Throughput is completions over the last this-many seconds."""


class StatsSnapshot(msgspec.Struct):
    """One (function, criticality)'s numbers from one worker."""

    completions_in_window: int = 0
    window_s: float = THROUGHPUT_WINDOW_S
    delays_ms: list[int] = []
    misses: int = 0


class _Series:
    def __init__(self) -> None:
        self.finished_ms: collections.deque[int] = collections.deque()
        self.delays_ms: collections.deque[int] = collections.deque(
            maxlen=limits.LATENCY_SAMPLES_MAX
        )
        self.misses = 0


class WorkerStats:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str], _Series] = {}

    def _get(self, function: str, criticality: str) -> _Series:
        return self.series.setdefault((function, criticality), _Series())

    def started(self, function: str, criticality: str, queue_delay_ms: int) -> None:
        self._get(function, criticality).delays_ms.append(max(0, queue_delay_ms))

    def finished(self, function: str, criticality: str, now_ms: int, missed: bool) -> None:
        series = self._get(function, criticality)
        series.finished_ms.append(now_ms)
        series.misses += missed
        self._trim(series, now_ms)

    def _trim(self, series: _Series, now_ms: int) -> None:
        horizon_ms = now_ms - int(THROUGHPUT_WINDOW_S * 1000)
        while series.finished_ms and series.finished_ms[0] < horizon_ms:
            series.finished_ms.popleft()

    def snapshot(self, now_ms: int) -> dict[str, StatsSnapshot]:
        out: dict[str, StatsSnapshot] = {}
        for (function, criticality), series in self.series.items():
            self._trim(series, now_ms)
            out[f"{function}\0{criticality}"] = StatsSnapshot(
                completions_in_window=len(series.finished_ms),
                delays_ms=list(series.delays_ms),
                misses=series.misses,
            )
        return out


def encode_snapshot(snapshot: dict[str, StatsSnapshot]) -> bytes:
    return msgspec.json.encode(snapshot)


def decode_snapshot(raw: bytes) -> dict[str, StatsSnapshot]:
    return msgspec.json.decode(raw, type=dict[str, StatsSnapshot])


def percentile(samples: list[int], fraction: float) -> int | None:
    if not samples:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def merge(snapshots: list[dict[str, StatsSnapshot]]) -> dict[tuple[str, str], dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for snapshot in snapshots:
        for key, one in snapshot.items():
            function, _, criticality = key.partition("\0")
            row = merged.setdefault(
                (function, criticality), {"throughput_per_s": 0.0, "delays_ms": []}
            )
            row["throughput_per_s"] += one.completions_in_window / one.window_s
            row["delays_ms"].extend(one.delays_ms)
    return merged
