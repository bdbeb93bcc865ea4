"""What a function is (its spec: criticality, deadline, retries, timeout, limits, quota) and
what a call is (its state record). Both are plain msgspec structs: the spec is published to
the store so that any submitter can check a call without importing the function's code."""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum

import msgspec

from spindle.functions import limits
from spindle.kv.errors import InvalidArgument

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


class Criticality(IntEnum):
    """Lower runs first. The value is the first byte of a ready-index key."""

    CRITICAL = 0
    NORMAL = 1
    DEFERRABLE = 2

    @classmethod
    def parse(cls, value: Criticality | str | int) -> Criticality:
        if isinstance(value, Criticality):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.upper()]
        except KeyError:
            names = ", ".join(c.name.lower() for c in cls)
            raise InvalidArgument(f"criticality must be one of {names}, got {value!r}") from None


class CallStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Failed after its retries: in the dead-letter set, replayable."""
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """Its deadline passed before it could run (or finish)."""

    @property
    def final(self) -> bool:
        return self not in (CallStatus.QUEUED, CallStatus.RUNNING)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with jitter. `retry_on` names exception classes (by `__name__`)
    that retry; empty means every error retries. Timeouts and lost leases always retry."""

    max_attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_multiplier: float = 2.0
    jitter_fraction: float = 0.2
    retry_on: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 1 <= self.max_attempts <= limits.ATTEMPTS_MAX:
            raise InvalidArgument(f"max_attempts must be 1..{limits.ATTEMPTS_MAX}")
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s <= limits.BACKOFF_S_MAX:
            raise InvalidArgument(
                f"need 0 <= backoff_initial_s <= backoff_max_s <= {limits.BACKOFF_S_MAX}"
            )
        if self.backoff_multiplier < 1 or not 0 <= self.jitter_fraction <= 1:
            raise InvalidArgument("need backoff_multiplier >= 1 and jitter_fraction in [0, 1]")

    def backoff_s(self, attempt: int, unit_random: float) -> float:
        """Pause before attempt `attempt + 1`, after `attempt` (>= 1) attempts failed.
        `unit_random` in [0, 1) comes from the caller, so the policy stays deterministic."""
        assert attempt >= 1 and 0 <= unit_random < 1
        base = min(
            self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** (attempt - 1)
        )
        jitter = base * self.jitter_fraction * (2 * unit_random - 1)
        return max(0.0, min(self.backoff_max_s, base + jitter))

    def retries(self, error_type: str) -> bool:
        return not self.retry_on or error_type in self.retry_on


class Quota(msgspec.Struct, frozen=True, kw_only=True):
    """A reserved share of each worker's slots, and whether the function may also use
    slots nobody else is waiting for (opportunistic capacity)."""

    reserved_share: float = 0.0
    opportunistic: bool = True

    def validate(self) -> None:
        if not 0 <= self.reserved_share <= 1:
            raise InvalidArgument("reserved_share must be in [0, 1]")
        if self.reserved_share == 0 and not self.opportunistic:
            raise InvalidArgument("a function with no reserved share must be opportunistic")


class FunctionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A registered function. `kind` is python (code in the worker), command (an external
    program: one JSON call on stdin, one JSON result on stdout) or http (POST of the call as
    JSON, JSON result in the response body)."""

    name: str
    kind: str = "python"
    tenant: str = "default"
    criticality: Criticality = Criticality.NORMAL
    deadline_s: float = limits.DEADLINE_S_DEFAULT
    timeout_s: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    concurrency_limit: int | None = None
    quota: Quota = Quota()
    downstream: str | None = None
    """Name of the service the function calls; its AIMD window paces the function."""
    command: tuple[str, ...] = ()
    url: str | None = None
    blocking: bool = False
    """A sync Python function: run on the worker's thread pool."""

    def validate(self) -> None:
        check_name(self.name, "function")
        check_name(self.tenant, "tenant")
        if self.kind not in ("python", "command", "http"):
            raise InvalidArgument(f"kind must be python, command or http, got {self.kind!r}")
        if self.kind == "command" and not self.command:
            raise InvalidArgument("a command function needs a command")
        if self.kind == "http" and not (self.url or "").startswith("http://"):
            raise InvalidArgument("an http function needs an http:// url")
        if not 0 < self.deadline_s <= limits.DEADLINE_S_MAX:
            raise InvalidArgument(f"deadline_s must be in (0, {limits.DEADLINE_S_MAX}]")
        if not 0 < self.timeout_s <= limits.TIMEOUT_S_MAX:
            raise InvalidArgument(f"timeout_s must be in (0, {limits.TIMEOUT_S_MAX}]")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise InvalidArgument("concurrency_limit must be >= 1 (or None: no limit)")
        self.retry.validate()
        self.quota.validate()


class CallState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A call's mutable state. The same record is the value of its index entry (ready,
    delayed or leased), so a worker can schedule and lease from a scan alone."""

    call_id: str
    function: str
    tenant: str
    criticality: Criticality
    state: CallStatus = CallStatus.QUEUED
    attempt: int = 0
    """Attempts started so far."""
    submitted_ms: int
    not_before_ms: int
    deadline_ms: int
    ready_ms: int = 0
    """When the call last became ready to run (queueing delay is measured from here)."""
    lease_owner: str | None = None
    lease_expiry_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    error: str | None = None
    error_type: str | None = None
    result: bytes | None = None
    """JSON of the function's result, once succeeded."""
    idempotency_key: str | None = None
    deferred: bool = False
    """The scheduler held it back for load at least once (time-shifted)."""
    replays: int = 0


class CallInfo(msgspec.Struct, kw_only=True):
    """What `status()` returns: the state without the result bytes."""

    call_id: str
    function: str
    state: CallStatus
    criticality: str
    attempt: int
    submitted_ms: int
    deadline_ms: int
    started_ms: int
    finished_ms: int
    error: str | None
    replays: int

    @classmethod
    def of(cls, state: CallState) -> CallInfo:
        return cls(
            call_id=state.call_id,
            function=state.function,
            state=state.state,
            criticality=state.criticality.name.lower(),
            attempt=state.attempt,
            submitted_ms=state.submitted_ms,
            deadline_ms=state.deadline_ms,
            started_ms=state.started_ms,
            finished_ms=state.finished_ms,
            error=state.error,
            replays=state.replays,
        )


def check_name(name: str, what: str) -> None:
    if not name or len(name) > limits.FUNCTION_NAME_CHARS_MAX or not _NAME_RE.match(name):
        raise InvalidArgument(
            f"{what} name must be 1..{limits.FUNCTION_NAME_CHARS_MAX} characters of "
            f"[A-Za-z0-9_.:-], got {name!r}"
        )
