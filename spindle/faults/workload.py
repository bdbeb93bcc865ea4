"""The client workload of a fault run: asyncio clients against every node of a cluster.

Two kinds of client, both recording what they do (spindle.faults.history):

- Register clients run get (strong) / put / compare-and-set / delete on a small pool of
  shared keys; their history is checked for linearizability. Every value written is
  unique, so a value names the write (and its version): a compare-and-set is
  `put(if_version=v)` where v is the version the client last saw with value x, which is
  the model's `cas(x, new)`; on a key the client last saw absent it is `put(if_absent=True)`,
  the model's `cas(None, new)`. Each key serves `ops_per_key` operations and is then
  retired for a fresh one, which keeps each key's history small enough for the checker to
  decide (an operation with an unknown outcome stays open to the end of its key's history).
- Acknowledged-write clients put unique keys; every write acknowledged must be readable
  from every node after the faults heal.

Client i is connected to node (i mod N) + 1. Half the clients are *pinned*: they send
every request to that node, which forwards writes to the shard's leader and serves strong
reads after a ReadIndex round (the paths a client behind a load balancer takes); the other
half route by the shard map to leaders, as `AsyncClient` does.

Outcomes: an error that means "not applied" (Conflict on a conditional write, NotLeader,
NotSent, ...) is `fail`; a timeout, a lost connection or anything unexpected after a
write was sent is `info` (unknown), and the client continues with a fresh process id and a
fresh connection. A read that fails is `fail` (reads change nothing).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from spindle.faults.history import OpRecord, Outcome, Recorder
from spindle.kv.client import AsyncClient, NotSent, _KeyspaceMap
from spindle.kv.errors import (
    Conflict,
    InvalidArgument,
    NotLeader,
    PermissionDenied,
    QuotaExceeded,
    SpindleError,
    Throttled,
    Unauthenticated,
    WrongShard,
)
from spindle.kv.values import Stored

T = TypeVar("T")

NOT_APPLIED: tuple[type[SpindleError], ...] = (
    NotLeader,
    NotSent,
    WrongShard,
    InvalidArgument,
    Throttled,
    QuotaExceeded,
    Unauthenticated,
    PermissionDenied,
)
"""Errors after which a write certainly did not take effect."""

CLIENT_TIMEOUT_S = 2.0
"""Per request (the client retries NotLeader and unsent requests within its own budget)."""
OP_DEADLINE_S = 20.0
"""Hard bound on one operation, retries included: past it the outcome is unknown."""
THINK_S_MAX = 0.01
"""Pause between two operations of one client: uniform in [0, this]."""


class PinnedClient(AsyncClient):
    """An `AsyncClient` that sends every request to its seed node (the node forwards
    writes to leaders and fences strong reads itself)."""

    async def _map(self, keyspace: str) -> _KeyspaceMap:
        found = await super()._map(keyspace)
        seed = tuple(self.seed)
        if any(tuple(address) != seed for address in found.nodes.values()):
            found.nodes = {node: seed for node in found.nodes}  # type: ignore[misc]
        return found


async def shard_of(client: AsyncClient, key: bytes, keyspace: str = "default") -> int:
    """The id of the shard (Raft group) that holds `key`, from the client's shard map."""
    ks_map = await client._map(keyspace)
    return ks_map.shard_of(ks_map.internal_key(key))


def make_client(
    address: str,
    *,
    pinned: bool,
    timeout_s: float = CLIENT_TIMEOUT_S,
    tenant: str | None = None,
    token: str | None = None,
    consistency: str = "strong",
) -> AsyncClient:
    kind = PinnedClient if pinned else AsyncClient
    return kind(address, timeout_s=timeout_s, tenant=tenant, token=token, consistency=consistency)


@dataclass
class WorkloadConfig:
    register_clients: int = 6
    ack_clients: int = 2
    active_keys: int = 3
    """Shared keys in use at a time."""
    ops_per_key: int = 60
    """Operations a key serves before it is retired for a fresh one."""
    timeout_s: float = CLIENT_TIMEOUT_S
    think_s_max: float = THINK_S_MAX
    key_prefix: str = "lin"
    ack_prefix: str = "ack"


@dataclass
class AckLedger:
    """The unique-key writes and what their writers were told."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    failed: int = 0


class KeyPool:
    """`active` shared keys; each retired after `ops_per_key` picks for a fresh one."""

    def __init__(self, prefix: str, active: int, ops_per_key: int) -> None:
        self.prefix = prefix
        self.ops_per_key = ops_per_key
        self._generation = 0
        self._keys = [self._fresh() for _ in range(active)]
        self._uses = dict.fromkeys(self._keys, 0)
        self.all_keys: list[str] = list(self._keys)

    def _fresh(self) -> str:
        self._generation += 1
        return f"{self.prefix}{self._generation}"

    def pick(self, rng: random.Random) -> str:
        slot = rng.randrange(len(self._keys))
        key = self._keys[slot]
        self._uses[key] += 1
        if self._uses[key] >= self.ops_per_key:
            fresh = self._fresh()
            self._keys[slot] = fresh
            self._uses[fresh] = 0
            self.all_keys.append(fresh)
        return key


def _describe(error: BaseException) -> str:
    text = str(error)
    if not isinstance(error, SpindleError) or type(error).__name__ != str(error.code):
        text = f"{type(error).__name__}: {text}"
    return text[:200]


def classify(f: str, error: BaseException) -> Outcome:
    """The history outcome of operation `f` that raised `error`."""
    if f == "get":
        return "fail"  # a read that did not answer changed nothing
    if isinstance(error, Conflict):
        return "fail" if f == "cas" else "info"  # unconditional: no correct server says it
    if isinstance(error, NOT_APPLIED):
        return "fail"
    return "info"


def item_text(item: Stored | None) -> str | None:
    return None if item is None else item.value.decode()


async def recorded(
    recorder: Recorder,
    process: Hashable,
    f: str,
    key: str,
    value: object,
    operation: Awaitable[T],
    *,
    client: int,
    node_id: int,
    read: Callable[[T], object] = lambda result: None,
) -> tuple[Outcome, T | None, BaseException | None]:
    """Run one operation and record it: invocation, then ok (with `read(result)` as the
    value a get returned), fail or info (see `classify`)."""
    start_s = recorder.invoke(process, f, key, value)
    result: T | None = None
    error: BaseException | None = None
    returned: object = None
    try:
        done = await asyncio.wait_for(operation, OP_DEADLINE_S)
    except (SpindleError, OSError, TimeoutError, EOFError) as raised:
        error = raised
    else:
        result, returned = done, read(done)
    outcome: Outcome = "ok" if error is None else classify(f, error)
    recorder.complete(
        process,
        outcome,
        returned,
        client=client,
        node_id=node_id,
        f=f,
        key=key,
        start_s=start_s,
        error="" if error is None else _describe(error),
    )
    return outcome, result, error


class Workload:
    """Run the clients until `stop` is set; then every client finishes its operation."""

    def __init__(
        self,
        addresses: list[str],
        recorder: Recorder,
        config: WorkloadConfig | None = None,
        *,
        seed: int = 0,
        tenant: str | None = None,
        token: str | None = None,
    ) -> None:
        self.addresses = addresses
        self.recorder = recorder
        self.config = config or WorkloadConfig()
        self.rng = random.Random(seed)
        self.tenant = tenant
        self.token = token
        self.keys = KeyPool(
            self.config.key_prefix, self.config.active_keys, self.config.ops_per_key
        )
        self.acks = AckLedger()
        self.unexpected: list[str] = []
        """Answers no correct server gives (e.g. Conflict on an unconditional put)."""

    def node_of(self, client: int) -> int:
        return client % len(self.addresses) + 1

    def pinned(self, client: int) -> bool:
        return (client // len(self.addresses)) % 2 == 0

    def client_for(self, client: int) -> AsyncClient:
        return make_client(
            self.addresses[self.node_of(client) - 1],
            pinned=self.pinned(client),
            timeout_s=self.config.timeout_s,
            tenant=self.tenant,
            token=self.token,
        )

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        tasks = [
            asyncio.ensure_future(self._register_client(index, stop))
            for index in range(config.register_clients)
        ]
        tasks += [
            asyncio.ensure_future(self._ack_client(config.register_clients + index, index, stop))
            for index in range(config.ack_clients)
        ]
        await asyncio.gather(*tasks)

    async def _think(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, self.config.think_s_max))

    def _check_expected(self, f: str, error: BaseException | None) -> None:
        if isinstance(error, Conflict) and f != "cas":
            self.unexpected.append(f"Conflict on an unconditional {f}: {error}")

    # -- shared keys (the checked history) ---------------------------------------------

    async def _register_client(self, index: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        clients = self.config.register_clients
        process = index
        sequence = 0
        seen: dict[str, tuple[str | None, int]] = {}
        """key -> (value, version) this client last saw (None: absent)."""
        kv = self.client_for(index)
        node_id = self.node_of(index)
        try:
            while not stop.is_set():
                key = self.keys.pick(rng)
                sequence += 1
                value = f"c{index}-{sequence}"
                roll = rng.random()
                if roll < 0.4 or (roll < 0.65 and key not in seen):
                    f = "get"
                    outcome, item, error = await recorded(
                        self.recorder,
                        process,
                        f,
                        key,
                        None,
                        kv.get_item(key.encode(), consistency="strong"),
                        client=index,
                        node_id=node_id,
                        read=item_text,
                    )
                    if outcome == "ok":
                        seen[key] = (item_text(item), 0 if item is None else item.version)
                elif roll < 0.65:
                    f = "cas"
                    expected, version = seen[key]
                    if expected is None:
                        write = kv.put(key.encode(), value.encode(), if_absent=True)
                    else:
                        write = kv.put(key.encode(), value.encode(), if_version=version)
                    outcome, new_version, error = await recorded(
                        self.recorder,
                        process,
                        f,
                        key,
                        (expected, value),
                        write,
                        client=index,
                        node_id=node_id,
                    )
                    if outcome == "ok":
                        assert new_version is not None
                        seen[key] = (value, new_version)
                    else:
                        seen.pop(key, None)  # it changed: read it again before the next cas
                elif roll < 0.9:
                    f = "put"
                    outcome, new_version, error = await recorded(
                        self.recorder,
                        process,
                        f,
                        key,
                        value,
                        kv.put(key.encode(), value.encode()),
                        client=index,
                        node_id=node_id,
                    )
                    if outcome == "ok":
                        assert new_version is not None
                        seen[key] = (value, new_version)
                else:
                    f = "delete"
                    outcome, _, error = await recorded(
                        self.recorder,
                        process,
                        f,
                        key,
                        None,
                        kv.delete(key.encode()),
                        client=index,
                        node_id=node_id,
                    )
                    if outcome == "ok":
                        seen[key] = (None, 0)
                self._check_expected(f, error)
                if outcome == "info":
                    process += clients  # Jepsen: a fresh process after an unknown outcome
                    seen.pop(key, None)
                    await kv.close()
                    kv = self.client_for(index)
                await self._think()
        finally:
            await kv.close()

    # -- unique keys (acknowledged writes must survive) --------------------------------

    async def _ack_client(self, client: int, index: int, stop: asyncio.Event) -> None:
        kv = self.client_for(client)
        node_id = self.node_of(client)
        sequence = 0
        clock = self.recorder.clock
        try:
            while not stop.is_set():
                sequence += 1
                key = f"{self.config.ack_prefix}{index}-{sequence}"
                value = f"a{index}-{sequence}"
                start_s = clock()
                error: BaseException | None = None
                try:
                    await asyncio.wait_for(kv.put(key.encode(), value.encode()), OP_DEADLINE_S)
                except (SpindleError, OSError, TimeoutError, EOFError) as raised:
                    error = raised
                outcome: Outcome = "ok" if error is None else classify("put", error)
                self._check_expected("put", error)
                if outcome == "ok":
                    self.acks.acknowledged[key] = value
                elif outcome == "fail":
                    self.acks.failed += 1
                else:
                    self.acks.unknown[key] = value
                    await kv.close()
                    kv = self.client_for(client)
                self.recorder.note(
                    OpRecord(
                        client,
                        node_id,
                        "ack-put",
                        key,
                        start_s,
                        clock(),
                        outcome,
                        "" if error is None else _describe(error),
                    )
                )
                await self._think()
        finally:
            await kv.close()


__all__ = [
    "AckLedger",
    "KeyPool",
    "PinnedClient",
    "Workload",
    "WorkloadConfig",
    "classify",
    "item_text",
    "make_client",
    "recorded",
    "shard_of",
]
