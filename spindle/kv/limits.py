"""Named bounds of the store. Crossing one gives a clear error, never a hang or an
unbounded allocation. docs/protocol.md lists them for users."""

from __future__ import annotations

KEY_BYTES_MAX = 4 * 1024
"""Largest key a client may write or read."""

VALUE_BYTES_MAX = 1024 * 1024
"""Largest value a client may write."""

BATCH_OPS_MAX = 1_000
"""Most operations in one atomic batch, transaction, multi_get or delete set."""

FRAME_BYTES_MAX = 16 * 1024 * 1024
"""Largest frame (request or response body) on the binary protocol. A larger declared
length means the framing is corrupt: the server replies once and closes the connection."""

SCAN_LIMIT_MAX = 10_000
"""Most items one scan call returns; more needs the continuation cursor."""

SCAN_BYTES_MAX = 4 * 1024 * 1024
"""A scan page stops early once it holds this many key+value bytes."""

INFLIGHT_REQUESTS_PER_CONNECTION_MAX = 1_024
"""Pipelined requests one connection may have outstanding; the server stops reading the
socket beyond this until responses drain (back-pressure, no error)."""

DELETE_RANGE_KEYS_PER_ENTRY_MAX = 10_000
"""Most keys one delete_range log entry removes key by key (hash keyspaces); the node
proposes further entries until the range is empty. Range keyspaces use one tombstone."""

SHARDS_PER_KEYSPACE_MAX = 4_096
"""Most shards one keyspace may be created with."""

KEYSPACE_NAME_BYTES_MAX = 128
"""Longest tenant or keyspace name."""

TTL_MS_MAX = 100 * 365 * 24 * 3600 * 1000
"""Longest time to live, one century: beyond it a TTL is surely a unit mistake."""

TTL_PURGE_KEYS_PER_PASS_MAX = 1_000
"""Most expired keys the background purger deletes per shard per pass."""

CLIENT_RETRIES_MAX = 20
"""Most times the client retries one request (WrongShard, NotLeader, a node it cannot reach;
Unavailable and connection loss only when the request is idempotent) ..."""

CLIENT_RETRY_BUDGET_S = 5.0
"""... and for how long after the first try: a leader failover (an election timeout of
1-2 s, then a vote) fits well inside it, so a client rides it out."""

CONNECTIONS_PER_NODE_MAX = 10_000
"""Client connections one node accepts at once (binary protocol and RESP together); the
next one gets an `Unavailable` reply and is closed."""

IDLE_TIMEOUT_S = 600.0
"""A client connection with nothing in flight and no bytes received for this long is
closed."""

DISPATCH_BATCH_MAX = 16
"""Requests the fair dispatcher runs per event-loop turn before letting I/O in: with the
bound below, what a newly arrived request may wait behind under overload."""

QUEUED_PER_CONNECTION_MAX = 16
"""Requests one connection may have decoded and waiting in the fair queue; the rest of its
pipeline stays undecoded in its buffer (reading paused) until these run. This keeps the
work queued ahead of another tenant's request small."""
