"""The scheduling policy: a pure class, no I/O and no clock (time comes in as `now_ms`).

Given the calls waiting (each queue bucket's head, in EDF order) and what runs now, it
decides which calls to start on this worker's free slots:

1. Criticality first: critical, then normal, then deferrable.
2. Within a criticality, earliest deadline first, subject to fairness: in a first pass no
   tenant may exceed an equal share of the slots among the tenants with work, nor a
   function an equal share of its tenant's; a second pass hands out what is left (work
   conserving), still in deadline order.
3. Each function's concurrency limit always holds. Its quota reserves
   `floor(reserved_share * slots)` slots: while it has calls waiting, no other function may
   take them; beyond its reservation it runs only if `opportunistic`, on spare slots.
4. Time-shifting: a deferrable call waits while the measured load is above the shifter's
   level, unless its deadline is near (then it runs whatever the load).
5. A call whose deadline has passed is reported as expired, never started.

Prefetch: the worker may hold up to `prefetch` calls beyond its slots, leased but not
started yet (they start, in EDF order, as slots free). The counts here are of calls held
(running or prefetched), so concurrency limits and shares count prefetched calls too. Only
a `prefetchable` function's calls are picked beyond the free slots; others are picked only
while held calls leave a slot free, so they start at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

from spindle.functions.spec import Criticality
from spindle.functions.timeshift import TimeShifter


@dataclasses.dataclass(frozen=True)
class Candidate:
    call_id: str
    function: str
    tenant: str
    criticality: Criticality
    deadline_ms: int
    submitted_ms: int


@dataclasses.dataclass(frozen=True)
class FunctionPolicy:
    """What the scheduler needs of a function's spec."""

    concurrency_limit: int | None = None
    reserved_share: float = 0.0
    opportunistic: bool = True
    expected_run_ms: int = 1_000
    """How long a call is expected to run: a deferrable call is released this long (plus
    the shifter's guard) before its deadline."""
    prefetchable: bool = False
    """May be picked beyond the free slots, to wait (leased) for one."""


@dataclasses.dataclass
class Decision:
    start: list[Candidate] = dataclasses.field(default_factory=list)
    deferred: list[Candidate] = dataclasses.field(default_factory=list)
    """Held back by time-shifting (still queued)."""
    expired: list[Candidate] = dataclasses.field(default_factory=list)
    blocked: list[Candidate] = dataclasses.field(default_factory=list)
    """Waiting on a concurrency limit, quota or free slot (still queued)."""


class Scheduler:
    """Keeps the worker's counts of held calls (running or prefetched); `pick` decides,
    `started`/`finished` update."""

    def __init__(
        self,
        slots: int,
        policy_of: Callable[[str], FunctionPolicy],
        shifter: TimeShifter | None = None,
        prefetch: int = 0,
    ) -> None:
        assert slots >= 1 and prefetch >= 0
        self.slots = slots
        self.prefetch = prefetch
        self.capacity = slots + prefetch
        """Most calls held at once."""
        self.policy_of = policy_of
        self.shifter = shifter or TimeShifter()
        self.running_by_function: dict[str, int] = {}
        self.running_by_tenant: dict[str, int] = {}
        self.running_total = 0

    # -- bookkeeping ---------------------------------------------------------------------

    def started(self, function: str, tenant: str) -> None:
        self.running_by_function[function] = self.running_by_function.get(function, 0) + 1
        self.running_by_tenant[tenant] = self.running_by_tenant.get(tenant, 0) + 1
        self.running_total += 1
        assert self.running_total <= self.capacity, "more calls held than slots + prefetch"

    def finished(self, function: str, tenant: str) -> None:
        self.running_by_function[function] -= 1
        self.running_by_tenant[tenant] -= 1
        self.running_total -= 1
        assert self.running_by_function[function] >= 0 and self.running_total >= 0

    @property
    def utilisation(self) -> float:
        """Busy slots / slots: held calls beyond the slots wait, so they add nothing."""
        return min(1.0, self.running_total / self.slots)

    def reserved_slots(self, function: str) -> int:
        return math.floor(self.policy_of(function).reserved_share * self.slots)

    # -- the decision --------------------------------------------------------------------

    def pick(
        self, now_ms: int, candidates: Iterable[Candidate], store_load: float = 0.0
    ) -> Decision:
        """Which candidates to start now. `store_load` in [0, 1] is the store's measured
        load (Throttled and slow answers); it counts as busy for time-shifting."""
        decision = Decision()
        unique: dict[str, Candidate] = {}
        for candidate in candidates:
            if candidate.deadline_ms <= now_ms:
                decision.expired.append(candidate)
            else:
                unique.setdefault(candidate.call_id, candidate)
        ordered = sorted(unique.values(), key=lambda c: (c.criticality, c.deadline_ms, c.call_id))
        granted_by_function: dict[str, int] = {}
        granted_by_tenant: dict[str, int] = {}
        granted = 0

        def running_f(function: str) -> int:
            return self.running_by_function.get(function, 0) + granted_by_function.get(function, 0)

        demand: dict[str, int] = {}
        for candidate in ordered:
            demand[candidate.function] = demand.get(candidate.function, 0) + 1

        def owed(function: str) -> int:
            """Slots still reserved for `function`: its unmet reservation, capped by demand."""
            unmet = self.reserved_slots(function) - running_f(function)
            return max(0, min(unmet, demand.get(function, 0)))

        level = self.shifter.level()
        chosen: set[str] = set()
        for criticality in Criticality:
            tier = [c for c in ordered if c.criticality == criticality]
            if not tier:
                continue
            tenant_share, function_share = self._shares(tier)
            for capped in (True, False):
                for candidate in tier:
                    if candidate.call_id in chosen:
                        continue
                    free = self.capacity - self.running_total - granted
                    if free <= 0:
                        break
                    function, tenant = candidate.function, candidate.tenant
                    policy = self.policy_of(function)
                    if not policy.prefetchable and self.running_total + granted >= self.slots:
                        continue  # no slot free for it now, and it may not wait for one
                    if (
                        policy.concurrency_limit is not None
                        and running_f(function) >= policy.concurrency_limit
                    ):
                        continue
                    within_reservation = running_f(function) < self.reserved_slots(function)
                    if not within_reservation:
                        if not policy.opportunistic:
                            continue
                        others_owed = sum(owed(f) for f in demand if f != function)
                        if free - others_owed <= 0:
                            continue
                        if capped and (
                            self.running_by_tenant.get(tenant, 0) + granted_by_tenant.get(tenant, 0)
                            >= tenant_share[tenant]
                            or running_f(function) >= function_share[function]
                        ):
                            continue
                    if criticality == Criticality.DEFERRABLE and self._hold(
                        now_ms, candidate, policy, granted, store_load, level
                    ):
                        continue
                    chosen.add(candidate.call_id)
                    decision.start.append(candidate)
                    granted += 1
                    granted_by_function[function] = granted_by_function.get(function, 0) + 1
                    granted_by_tenant[tenant] = granted_by_tenant.get(tenant, 0) + 1
        for candidate in ordered:
            if candidate.call_id in chosen:
                continue
            policy = self.policy_of(candidate.function)
            if candidate.criticality == Criticality.DEFERRABLE and self._hold(
                now_ms, candidate, policy, granted, store_load, level
            ):
                decision.deferred.append(candidate)
            else:
                decision.blocked.append(candidate)
        return decision

    def _hold(
        self,
        now_ms: int,
        candidate: Candidate,
        policy: FunctionPolicy,
        granted: int,
        store_load: float,
        level: float,
    ) -> bool:
        """True if a deferrable call should wait for lower load."""
        if self.shifter.due(
            now_ms, candidate.submitted_ms, candidate.deadline_ms, policy.expected_run_ms
        ):
            return False
        # Not capped at 1: a deferrable call is not prefetched onto a full worker.
        load = max((self.running_total + granted) / self.slots, store_load)
        return load >= level

    def _shares(self, tier: Sequence[Candidate]) -> tuple[dict[str, int], dict[str, int]]:
        """Equal shares of the slots: per tenant among tenants with work in this tier (or
        running), and per function among its tenant's functions with work."""
        functions_of: dict[str, set[str]] = {}
        for candidate in tier:
            functions_of.setdefault(candidate.tenant, set()).add(candidate.function)
        for tenant, count in self.running_by_tenant.items():
            if count > 0:
                functions_of.setdefault(tenant, set())
        tenant_share = {
            tenant: max(1, math.ceil(self.capacity / len(functions_of))) for tenant in functions_of
        }
        function_share: dict[str, int] = {}
        for tenant, functions in functions_of.items():
            for function in functions:
                function_share[function] = max(
                    1, math.ceil(tenant_share[tenant] / max(1, len(functions)))
                )
        return tenant_share, function_share
