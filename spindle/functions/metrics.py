"""Prometheus metrics: the status report as metric families (prometheus_client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from spindle.functions.status import StatusRow

_GAUGES: list[tuple[str, str, str]] = [
    ("queued", "spindle_functions_queued", "Calls ready to run, waiting for a worker."),
    ("running", "spindle_functions_running", "Calls leased by a worker."),
    ("deferred", "spindle_functions_deferred", "Deferrable calls waiting for low load."),
    ("delayed", "spindle_functions_delayed", "Calls waiting for start_after or a backoff."),
    ("throughput_per_s", "spindle_functions_throughput_per_second", "Completions per second."),
    ("queue_delay_p50_ms", "spindle_functions_queue_delay_p50_ms", "Median queueing delay."),
    ("queue_delay_p99_ms", "spindle_functions_queue_delay_p99_ms", "p99 queueing delay."),
    ("deadline_misses", "spindle_functions_deadline_misses", "Calls that missed a deadline."),
    ("dead_letters", "spindle_functions_dead_letters", "Calls failed after their retries."),
    ("succeeded", "spindle_functions_succeeded", "Calls that succeeded."),
]


class StatusCollector:
    def __init__(self, rows: Callable[[], list[StatusRow]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        rows = self.rows()
        for field, name, help_text in _GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["function", "criticality"])
            for row in rows:
                value = getattr(row, field)
                if value is not None:
                    family.add_metric([row.function, row.criticality], float(value))
            yield family


def render(rows: list[StatusRow]) -> bytes:
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: rows))
    return bytes(generate_latest(registry))
