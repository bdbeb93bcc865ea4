"""Named bounds of Spindle Functions, with units. Crossing one gives a clear error, never a
hang or an unbounded allocation. docs/functions.md lists them for users."""

from __future__ import annotations

ARGS_BYTES_MAX = 256 * 1024
"""Largest encoded (JSON) arguments of one call; a larger submit fails with `ArgsTooLarge`."""

RESULT_BYTES_MAX = 256 * 1024
"""Largest encoded result kept; a larger result fails the attempt (not retried)."""

ERROR_CHARS_MAX = 2_000
"""An attempt's error message is cut to this many characters before it is stored."""

BATCH_SUBMIT_MAX = 500
"""Most calls one `submit_batch` accepts."""

FUNCTION_NAME_CHARS_MAX = 128
"""Longest function (and tenant) name."""

IDEMPOTENCY_KEY_CHARS_MAX = 256
"""Longest idempotency key."""

DEADLINE_S_MAX = 24 * 3600.0
"""Latest deadline a call may have, counted from its submission: one day."""

DEADLINE_S_DEFAULT = 3600.0
"""A function's default deadline when it names none."""

START_AFTER_S_MAX = 24 * 3600.0
"""Furthest in the future a call may be asked to start."""

RETENTION_S_DEFAULT = 24 * 3600.0
"""How long final states (result, error), idempotency keys and dead letters stay queryable."""

LEASE_S_DEFAULT = 10.0
"""How long a worker owns a call it leased without renewing; after it, another worker may
run the call again (at-least-once)."""

HEARTBEAT_S_DEFAULT = 2.0
"""How often a worker renews its leases; must be well under `LEASE_S_DEFAULT`."""

ATTEMPTS_MAX = 100
"""Largest `max_attempts` a retry policy may set."""

BACKOFF_S_MAX = 3600.0
"""Longest pause between two attempts of one call."""

TIMEOUT_S_MAX = 3600.0
"""Longest timeout of one attempt."""

QUEUE_SCAN_BATCH = 64
"""Most ready calls read per queue bucket per poll: the scheduler's look-ahead per bucket."""

QUEUE_SCAN_MIN = 8
"""Fewest ready calls read per bucket per poll; a poll reads max(this, free slots) (at most
QUEUE_SCAN_BATCH), which holds every call earliest-deadline-first could pick."""

QUEUE_SCAN_PAGES_MAX = 8
"""Pages of `QUEUE_SCAN_BATCH` a poll reads from one bucket when the calls at its head are
all blocked (their function at its concurrency limit or window, or not runnable here): the
bound on how far the worker looks past a blocked head for runnable calls."""

MOVES_PER_BATCH_MAX = 100
"""Most calls moved (leased, finished) in one atomic store batch; a batch of more calls of
one bucket is cut into several (each call is ~6 operations, under the store's BATCH_OPS_MAX)."""

PREFETCH_RUN_MS_MAX = 50
"""A worker leases calls ahead of its free slots (prefetch) only for functions whose recent
attempts took at most this long, so a prefetched call waits at most a few such run times
(a long call is leased only into a free slot, where another worker could not run it
sooner)."""

SWEEP_BATCH = 256
"""Delayed calls promoted, or expired leases reclaimed, per bucket per sweep."""

WORKER_SLOTS_MAX = 10_000
"""Most calls one worker runs at once."""

WORKER_PREFETCH_MAX = 10_000
"""Most calls one worker holds leased beyond its slots (prefetched, not started yet)."""

QUEUE_BUCKETS_MAX = 1_024
"""Most buckets (store shards) of the queue keyspace."""

QUEUE_BUCKETS_DEFAULT = 8
"""Buckets (store shards) of the queue keyspace when it is created."""

COMMAND_OUTPUT_BYTES_MAX = RESULT_BYTES_MAX + 64 * 1024
"""Most bytes read from an external program's stdout (or stderr) per call."""

HTTP_RESPONSE_BYTES_MAX = RESULT_BYTES_MAX + 64 * 1024
"""Most bytes read from an HTTP function's response body."""

HTTP_SUBMIT_BODY_BYTES_MAX = 8 * 1024 * 1024
"""Largest request body the HTTP submit API reads."""

LATENCY_SAMPLES_MAX = 1_024
"""Queueing-delay samples kept per function and criticality for p50/p99."""

CANCEL_REPEAT_S = 0.05
"""While a worker stops a task it cancelled, it cancels it again this often. Python 3.11's
`asyncio.wait_for` loses a cancel that lands just as the future it waits for completes
(cpython gh-86296, fixed in 3.12), and the store client waits for every response with it:
a background loop cancelled once can miss it and run on forever."""

STOP_TASK_S_MAX = 5.0
"""After SIGTERM, how long the dispatcher (and, after the drain, each background loop)
gets to stop once cancelled."""

HANDBACK_S_MAX = 10.0
"""After the drain grace (`drain_s`), how long the calls still running get to be cancelled
and handed back to the queue (one store write each); a call not handed back by then comes
back when its lease expires, as after SIGKILL."""

LEASE_FINISH_S_MAX = 5.0
"""After the dispatcher stopped, how long its lease batch still in flight gets to finish (so
its leases are handed back at once); leases of one that does not come back when they
expire."""

FINAL_FLUSH_S_MAX = 5.0
"""How long a stopping worker's last stats flush and status report may take."""

THREADS_JOIN_S_MAX = 1.0
"""How long a stopped worker waits for its thread pool; a blocking function still running
then is abandoned (the process exits without it; its call was handed back)."""

SHUTDOWN_S_MAX = (
    3 * STOP_TASK_S_MAX
    + LEASE_FINISH_S_MAX
    + 2 * HANDBACK_S_MAX
    + FINAL_FLUSH_S_MAX
    + THREADS_JOIN_S_MAX
)
"""Bound on a worker's shutdown besides the drain grace: the dispatcher, the background
loops and any task left at exit each get `STOP_TASK_S_MAX`, plus the dispatcher's last
lease batch, the two hand-backs (prefetched calls, then calls still running), the last
flush and the thread pool. A SIGTERMed `spindle worker` exits within `drain_s +
SHUTDOWN_S_MAX` (46 s past the grace; milliseconds when the store answers)."""
