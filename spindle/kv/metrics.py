"""Prometheus exposition of a node's counters, read at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from spindle.kv.server import NodeServer


class _NodeCollector:
    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats
        node = self.server.node
        requests = CounterMetricFamily(
            "spindle_requests", "Requests received, by operation", labels=["op"]
        )
        for op, count in sorted(stats.requests.items()):
            requests.add_metric([op], count)
        yield requests
        errors = CounterMetricFamily("spindle_errors", "Error replies, by code", labels=["code"])
        for code, count in sorted(stats.errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield GaugeMetricFamily(
            "spindle_connections_open", "Open client connections", value=stats.connections_open
        )
        yield CounterMetricFamily(
            "spindle_engine_writes", "Write batches applied", value=node.committer.written_seq
        )
        yield CounterMetricFamily("spindle_fsyncs", "WAL fsyncs", value=node.committer.syncs)
        yield GaugeMetricFamily(
            "spindle_engine_bytes", "Approximate live bytes", value=node.engine.approximate_bytes()
        )
        yield GaugeMetricFamily("spindle_shards", "Shard replicas hosted", value=len(node.shards))
        yield from _tenant_metrics(self.server)


_TENANT_COUNTERS = (
    ("read_ops", "Read operations admitted"),
    ("write_ops", "Write operations admitted"),
    ("read_bytes", "Bytes returned by reads"),
    ("write_bytes", "Bytes written"),
    ("throttled", "Requests refused for a quota (Throttled or QuotaExceeded)"),
    ("refused", "Requests refused for access (wrong credentials, another tenant's data)"),
)


def _tenant_metrics(server: NodeServer) -> Iterator[Metric]:
    node = server.node
    tenants = sorted(node.catalog.tenants)
    for field, help_text in _TENANT_COUNTERS:
        family = CounterMetricFamily(f"spindle_tenant_{field}", help_text, labels=["tenant"])
        for tenant in tenants:
            family.add_metric([tenant], getattr(node.quotas.tenant_usage(tenant), field))
        yield family
    stored = GaugeMetricFamily(
        "spindle_tenant_stored_bytes", "Bytes a tenant stores", labels=["tenant"]
    )
    for tenant in tenants:
        owned = [ks for ks in node.catalog.keyspaces.values() if ks.tenant == tenant]
        stored.add_metric([tenant], node.stored_bytes(owned))
    yield stored
    share = GaugeMetricFamily(
        "spindle_tenant_quota_share",
        "Fraction of the tenant's rate quotas this node enforces (its part of the demand)",
        labels=["tenant"],
    )
    for tenant in tenants:
        share.add_metric([tenant], node.quotas.share(tenant))
    yield share


def render_metrics(server: NodeServer) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(server))
    return bytes(generate_latest(registry))
