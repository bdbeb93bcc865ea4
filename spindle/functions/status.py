"""The `spindle functions status` report: per function and criticality, from the queue's
counters (exact, kept in the same batches as the transitions) and every live worker's
flushed measurements (throughput, queueing delay samples)."""

from __future__ import annotations

import msgspec

from spindle.functions import queue as q
from spindle.functions.queue import DurableQueue
from spindle.functions.spec import Criticality
from spindle.functions.stats import decode_snapshot, merge, percentile


class StatusRow(msgspec.Struct):
    function: str
    criticality: str
    queued: int
    running: int
    deferred: int
    """Deferrable calls waiting (ready but held for load, or not yet started)."""
    delayed: int
    """Waiting for start_after or a retry backoff."""
    throughput_per_s: float
    queue_delay_p50_ms: int | None
    queue_delay_p99_ms: int | None
    deadline_misses: int
    dead_letters: int
    succeeded: int


async def report(queue: DurableQueue) -> list[StatusRow]:
    counters = await queue.counters()
    snapshots = [
        decode_snapshot(item.value)
        async for item in queue.kv.scan(prefix=q.STATS_PREFIX, keyspace=queue.meta_keyspace)
    ]
    measured = merge(snapshots)
    keys: set[tuple[str, str]] = {(f, c.name.lower()) for f, c, _ in counters}
    keys |= set(measured)
    rows: list[StatusRow] = []
    for function, criticality in sorted(keys):
        level = Criticality[criticality.upper()]

        def count(name: str, function: str = function, level: Criticality = level) -> int:
            return counters.get((function, level, name), 0)

        ready = count(q.QUEUED)
        is_deferrable = level == Criticality.DEFERRABLE
        row_measured = measured.get((function, criticality), {})
        delays: list[int] = row_measured.get("delays_ms", [])
        rows.append(
            StatusRow(
                function=function,
                criticality=criticality,
                queued=0 if is_deferrable else ready,
                running=count(q.RUNNING),
                deferred=ready if is_deferrable else 0,
                delayed=count(q.DELAYED),
                throughput_per_s=round(row_measured.get("throughput_per_s", 0.0), 3),
                queue_delay_p50_ms=percentile(delays, 0.5),
                queue_delay_p99_ms=percentile(delays, 0.99),
                deadline_misses=count(q.MISSED),
                dead_letters=count(q.DEAD),
                succeeded=count(q.SUCCEEDED),
            )
        )
    return rows
