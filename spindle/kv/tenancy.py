"""Tenants' credentials, quotas and fair shares: the pure policy, no I/O and no clock.

ZippyDB serves many use cases from one fleet; each is isolated from the others and held to
its quota so that one tenant's spike cannot starve the rest. Here:

- `TokenBucket`: a rate with a burst, in any unit (ops or bytes). A request may take more
  than the bucket holds (a large value); the bucket then runs into debt and later requests
  wait, so the long-run rate holds.
- `QuotaEnforcer`: per tenant (and optionally per keyspace) buckets for read/write ops and
  bytes per second. Over quota is `Throttled` with a retry-after, never a silent drop.
  In a cluster each node enforces its *share* of a tenant's quota: the fraction of the
  tenant's requests (over the last exchange interval) that arrived at this node, from the
  demand counts the nodes exchange (`demand_share`). So the cluster as a whole admits about
  the quota, however the tenant's clients spread over the nodes.
- `FairQueue`: deficit round robin across tenants, weighted by quota share, so that under
  overload a node serves tenants in proportion to their share.
- Credentials: tokens are random, stored only as salted hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from spindle.kv.errors import InvalidArgument, Throttled

T = TypeVar("T")

ADMIN_TENANT = "admin"
"""Reserved name of the administrator credential; not a data tenant."""
TOKEN_BYTES = 24
"""Random bytes in a generated token (printed as 48 hex characters)."""
DEFAULT_WEIGHT = 100.0
"""Fair-queue weight of a tenant without an ops quota."""
FAIR_QUANTUM_OPS = 8
"""Requests a tenant of DEFAULT_WEIGHT may run per fair-queue round."""


class Quota(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Limits of a tenant or keyspace; None means unlimited."""

    read_ops_per_s: float | None = None
    write_ops_per_s: float | None = None
    read_bytes_per_s: float | None = None
    write_bytes_per_s: float | None = None
    stored_bytes: int | None = None
    burst_s: float = 1.0
    """Bucket capacity, in seconds of rate: how long a tenant may run at full speed after
    being idle."""

    def check(self) -> None:
        for name in ("read_ops_per_s", "write_ops_per_s", "read_bytes_per_s", "write_bytes_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidArgument(f"quota {name} must be > 0 (or unset), got {value}")
        if self.stored_bytes is not None and self.stored_bytes < 0:
            raise InvalidArgument("quota stored_bytes must be >= 0")
        if not 0.01 <= self.burst_s <= 3600:
            raise InvalidArgument("quota burst_s must be in 0.01..3600")

    def weight(self) -> float:
        ops = (self.read_ops_per_s or 0.0) + (self.write_ops_per_s or 0.0)
        return ops if ops > 0 else DEFAULT_WEIGHT


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def hash_token(token: str, salt: str | None = None) -> str:
    """`salt$sha256(salt + token)`: what the catalog stores instead of the token."""
    salt = salt if salt is not None else secrets.token_hex(8)
    digest = hashlib.sha256((salt + token).encode()).hexdigest()
    return f"{salt}${digest}"


def token_matches(token: str, stored_hash: str) -> bool:
    salt, _, _ = stored_hash.partition("$")
    return hmac.compare_digest(hash_token(token, salt), stored_hash)


class TokenBucket:
    """A rate limiter. `take` answers 0.0 (granted) or the seconds to wait."""

    __slots__ = ("capacity", "level", "rate_per_s", "updated_s")

    def __init__(self, rate_per_s: float, burst_s: float, now_s: float) -> None:
        assert rate_per_s > 0
        self.rate_per_s = rate_per_s
        self.capacity = rate_per_s * burst_s
        self.level = self.capacity
        self.updated_s = now_s

    def _refill(self, now_s: float) -> None:
        if now_s > self.updated_s:
            self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.rate_per_s)
            self.updated_s = now_s

    def take(self, amount: float, now_s: float) -> float:
        self._refill(now_s)
        needed = min(amount, self.capacity)
        if self.level >= needed:
            self.level -= amount
            return 0.0
        return (needed - self.level) / self.rate_per_s

    def charge(self, amount: float, now_s: float) -> None:
        """Debit after the fact (a read's size is known only once it ran)."""
        self._refill(now_s)
        self.level -= amount

    def wait_s(self, now_s: float) -> float:
        """Seconds until the bucket is out of debt (0: requests may go)."""
        self._refill(now_s)
        return 0.0 if self.level > 0 else (-self.level + 1e-9) / self.rate_per_s

    def rescale(self, rate_per_s: float, burst_s: float, now_s: float) -> None:
        """Change the rate at run time, keeping what the bucket holds (up to the new
        capacity) and any debt."""
        assert rate_per_s > 0
        self._refill(now_s)
        self.rate_per_s = rate_per_s
        self.capacity = rate_per_s * burst_s
        self.level = min(self.level, self.capacity)


QUOTA_SHARE_MIN = 0.05
"""The smallest share of a tenant's quota a node enforces, even when its peers report all
of the tenant's recent demand: a node that starts receiving the tenant's requests is not
shut out for a whole exchange interval. The cluster may admit up to this much extra per
such node."""


def demand_share(own: int, peers: list[int]) -> float:
    """This node's share of a tenant's quota: its part of the tenant's demand (requests
    arrived, admitted or not) in the last interval, at least `QUOTA_SHARE_MIN`; the whole
    quota when nobody saw demand."""
    total = own + sum(peers)
    if total <= 0:
        return 1.0
    return max(QUOTA_SHARE_MIN, own / total)


class _Buckets:
    def __init__(
        self, quota: Quota, now_s: float, previous: _Buckets | None, share: float = 1.0
    ) -> None:
        self.quota = quota
        self.share = share

        def bucket(rate: float | None, old: TokenBucket | None) -> TokenBucket | None:
            if rate is None:
                return None
            fresh = TokenBucket(rate * share, quota.burst_s, now_s)
            if old is not None:  # a quota change keeps the tenant's current standing
                fresh.level = min(fresh.capacity, old.level)
            return fresh

        old = previous
        self.read_ops: TokenBucket | None = bucket(
            quota.read_ops_per_s, old.read_ops if old else None
        )
        self.write_ops: TokenBucket | None = bucket(
            quota.write_ops_per_s, old.write_ops if old else None
        )
        self.read_bytes: TokenBucket | None = bucket(
            quota.read_bytes_per_s, old.read_bytes if old else None
        )
        self.write_bytes: TokenBucket | None = bucket(
            quota.write_bytes_per_s, old.write_bytes if old else None
        )

    def set_share(self, share: float, now_s: float) -> None:
        self.share = share
        quota = self.quota
        for bucket, rate in (
            (self.read_ops, quota.read_ops_per_s),
            (self.write_ops, quota.write_ops_per_s),
            (self.read_bytes, quota.read_bytes_per_s),
            (self.write_bytes, quota.write_bytes_per_s),
        ):
            if bucket is not None and rate is not None:
                bucket.rescale(rate * share, quota.burst_s, now_s)


class TenantUsage(msgspec.Struct):
    """Counters per tenant, shown by `spindle status` and /metrics."""

    read_ops: int = 0
    write_ops: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    throttled: int = 0
    refused: int = 0


class QuotaEnforcer:
    """Admission control for every request, before it runs. `clock_s` is injected."""

    def __init__(self, clock_s: Callable[[], float]) -> None:
        self.clock_s = clock_s
        self._buckets: dict[tuple[str, str | None], _Buckets] = {}
        self._limited: set[str] = set()
        """Tenants with any quota: the others are admitted without a bucket lookup."""
        self.usage: dict[str, TenantUsage] = {}
        self._shares: dict[str, float] = {}
        """Tenant -> the share of its quotas this node enforces (absent: all of them)."""
        self._demand: dict[str, int] = {}
        """Tenant -> requests (admitted or not) since `take_demand`, for limited tenants."""

    def set_quota(self, tenant: str, quota: Quota | None, keyspace: str | None = None) -> None:
        key = (tenant, keyspace)
        if quota is None:
            self._buckets.pop(key, None)
        else:
            quota.check()
            share = self._shares.get(tenant, 1.0)
            self._buckets[key] = _Buckets(quota, self.clock_s(), self._buckets.get(key), share)
        self._limited = {limited for limited, _ in self._buckets}

    @property
    def limited_tenants(self) -> set[str]:
        return self._limited

    def take_demand(self) -> dict[str, int]:
        """Requests per limited tenant since the last call (then starts counting anew)."""
        demand, self._demand = self._demand, {}
        return demand

    def share(self, tenant: str) -> float:
        return self._shares.get(tenant, 1.0)

    def set_share(self, tenant: str, share: float) -> None:
        """Enforce `share` (0..1] of the tenant's quotas on this node from now on."""
        assert 0 < share <= 1, share
        if share == self._shares.get(tenant, 1.0):
            return
        if share == 1.0:
            self._shares.pop(tenant, None)
        else:
            self._shares[tenant] = share
        now_s = self.clock_s()
        for (owner, _), buckets in self._buckets.items():
            if owner == tenant:
                buckets.set_share(share, now_s)

    def quota(self, tenant: str, keyspace: str | None = None) -> Quota | None:
        found = self._buckets.get((tenant, keyspace))
        return None if found is None else found.quota

    def tenant_usage(self, tenant: str) -> TenantUsage:
        usage = self.usage.get(tenant)
        if usage is None:
            usage = self.usage[tenant] = TenantUsage()
        return usage

    def _scopes(self, tenant: str, keyspace: str | None) -> list[_Buckets]:
        if tenant not in self._limited:
            return []
        scopes = []
        found = self._buckets.get((tenant, None))
        if found is not None:
            scopes.append(found)
        if keyspace is not None:
            found = self._buckets.get((tenant, keyspace))
            if found is not None:
                scopes.append(found)
        return scopes

    def _admission(
        self, tenant: str, keyspace: str | None, ops: int
    ) -> tuple[list[_Buckets], float]:
        """The buckets a request is admitted against and the clock reading for them; counts
        the request as demand (for the cluster-wide share) if the tenant has a quota."""
        scopes = self._scopes(tenant, keyspace)
        if not scopes:
            return scopes, 0.0
        self._demand[tenant] = self._demand.get(tenant, 0) + ops
        return scopes, self.clock_s()

    def admit_write(self, tenant: str, keyspace: str | None, nbytes: int, ops: int = 1) -> None:
        usage = self.tenant_usage(tenant)
        scopes, now_s = self._admission(tenant, keyspace, ops)
        for scope in scopes:
            self._take(usage, scope.write_ops, ops, now_s, "write ops/s")
            self._take(usage, scope.write_bytes, nbytes, now_s, "write bytes/s")
        usage.write_ops += ops
        usage.write_bytes += nbytes

    def admit_read(self, tenant: str, keyspace: str | None, ops: int = 1) -> None:
        usage = self.tenant_usage(tenant)
        scopes, now_s = self._admission(tenant, keyspace, ops)
        for scope in scopes:
            self._take(usage, scope.read_ops, ops, now_s, "read ops/s")
            if scope.read_bytes is not None:
                wait_s = scope.read_bytes.wait_s(now_s)
                if wait_s > 0:
                    self._throttle(usage, wait_s, "read bytes/s")
        usage.read_ops += ops

    def charge_read_bytes(self, tenant: str, keyspace: str | None, nbytes: int) -> None:
        usage = self.tenant_usage(tenant)
        usage.read_bytes += nbytes
        scopes = self._scopes(tenant, keyspace)
        now_s = self.clock_s() if scopes else 0.0
        for scope in scopes:
            if scope.read_bytes is not None:
                scope.read_bytes.charge(nbytes, now_s)

    def _take(
        self,
        usage: TenantUsage,
        bucket: TokenBucket | None,
        amount: int,
        now_s: float,
        what: str,
    ) -> None:
        if bucket is None or amount == 0:
            return
        wait_s = bucket.take(amount, now_s)
        if wait_s > 0:
            self._throttle(usage, wait_s, what)

    @staticmethod
    def _throttle(usage: TenantUsage, wait_s: float, what: str) -> None:
        usage.throttled += 1
        retry_after_ms = max(1, int(wait_s * 1000 + 0.999))
        raise Throttled(
            f"over the {what} quota; retry after {retry_after_ms} ms",
            detail={"retry_after_ms": retry_after_ms},
        )

    def weight(self, tenant: str) -> float:
        found = self._buckets.get((tenant, None))
        return DEFAULT_WEIGHT if found is None else found.quota.weight()


class FairQueue(Generic[T]):
    """Deficit round robin over tenants: each round a tenant may run a number of items in
    proportion to its weight. Bounded by its callers (each item is a request counted
    against its connection's in-flight bound)."""

    def __init__(self, weight: Callable[[str], float]) -> None:
        self._weight = weight
        self._queues: dict[str, deque[T]] = {}
        self._active: deque[str] = deque()
        self._deficit: dict[str, float] = {}
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def push(self, tenant: str, item: T) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
        if not queue:
            self._active.append(tenant)
            self._deficit.setdefault(tenant, 0.0)
        queue.append(item)
        self._length += 1

    def pop(self) -> T:
        """The next item in fair order; the queue must not be empty."""
        assert self._length > 0, "pop from an empty fair queue"
        while True:
            tenant = self._active[0]
            queue = self._queues[tenant]
            if self._deficit[tenant] >= 1.0:
                self._deficit[tenant] -= 1.0
                item = queue.popleft()
                self._length -= 1
                if not queue:
                    self._active.popleft()
                    self._deficit[tenant] = 0.0
                return item
            self._active.rotate(-1)
            share = self._weight(tenant) / DEFAULT_WEIGHT * FAIR_QUANTUM_OPS
            self._deficit[tenant] += max(share, 0.01)
