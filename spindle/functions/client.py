"""Submitting calls: submit, batch submit, status, result, cancel, dead letters, replay.

    async with FunctionsClient("127.0.0.1:7379") as fx:
        call_id = await fx.submit("rebuild_timeline", {"user_id": 7}, idempotency_key="u7")
        print(await fx.result(call_id, wait_s=30))

A submit returns once the call is durable in the store. Function specs come from the
store (published by workers, or by `register`), so a submitter needs no function code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from types import TracebackType
from typing import Any

from spindle.functions import codec, limits
from spindle.functions.errors import (
    ArgsTooLarge,
    CallFailed,
    DeadlineInPast,
    NotFinished,
    UnknownFunction,
)
from spindle.functions.queue import DurableQueue, NewCall, now_ms
from spindle.functions.registry import Registry
from spindle.functions.spec import CallInfo, CallStatus, Criticality, FunctionSpec
from spindle.kv.client import AsyncClient
from spindle.kv.errors import InvalidArgument

When = float | dt.datetime
"""Seconds from now, or an absolute (timezone-aware) time."""

RESULT_POLL_S = 0.05
"""Pause between two status reads while `result(wait_s=...)` waits."""


@dataclasses.dataclass(frozen=True)
class CallRequest:
    function: str
    args: Any = None
    idempotency_key: str | None = None
    start_after: When | None = None
    deadline: When | None = None
    criticality: Criticality | str | None = None


def _at_ms(when: When, base_ms: int) -> int:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise InvalidArgument("absolute times must be timezone-aware")
        return int(when.timestamp() * 1000)
    return base_ms + int(float(when) * 1000)


class FunctionsClient:
    def __init__(
        self,
        address: str | None = None,
        *,
        kv: AsyncClient | None = None,
        retention_s: float = limits.RETENTION_S_DEFAULT,
    ) -> None:
        self._owns_kv = kv is None
        self.kv = kv or AsyncClient(address)
        self.queue = DurableQueue(self.kv, retention_s=retention_s)
        self._specs: dict[str, FunctionSpec] = {}

    async def __aenter__(self) -> FunctionsClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._owns_kv:
            await self.kv.connect()
        await self.queue.open()

    async def close(self) -> None:
        if self._owns_kv:
            await self.kv.close()

    async def register(self, what: Registry | FunctionSpec) -> None:
        """Publish specs to the store so that submitters and workers know them."""
        specs = what.specs() if isinstance(what, Registry) else [what]
        for spec in specs:
            await self.queue.publish(spec)
            self._specs[spec.name] = spec

    async def spec(self, function: str) -> FunctionSpec:
        found = self._specs.get(function)
        if found is None:
            found = await self.queue.spec(function)
            if found is None:
                raise UnknownFunction(f"no function named {function!r} is registered")
            self._specs[function] = found
        return found

    async def _prepare(self, request: CallRequest, base_ms: int) -> NewCall:
        spec = await self.spec(request.function)
        args_json = codec.encode_json(request.args)
        if len(args_json) > limits.ARGS_BYTES_MAX:
            raise ArgsTooLarge(
                f"arguments of {len(args_json)} bytes exceed the limit of "
                f"{limits.ARGS_BYTES_MAX} bytes (ARGS_BYTES_MAX)"
            )
        if request.idempotency_key is not None and not (
            0 < len(request.idempotency_key) <= limits.IDEMPOTENCY_KEY_CHARS_MAX
        ):
            raise InvalidArgument(
                f"idempotency key must be 1..{limits.IDEMPOTENCY_KEY_CHARS_MAX} characters"
            )
        not_before_ms = base_ms
        if request.start_after is not None:
            not_before_ms = max(base_ms, _at_ms(request.start_after, base_ms))
            if not_before_ms - base_ms > limits.START_AFTER_S_MAX * 1000:
                raise InvalidArgument(
                    f"start_after is more than {limits.START_AFTER_S_MAX:.0f}s away"
                )
        if request.deadline is None:
            deadline_ms = not_before_ms + int(spec.deadline_s * 1000)
        else:
            deadline_ms = _at_ms(request.deadline, base_ms)
        if deadline_ms <= base_ms:
            raise DeadlineInPast(
                f"deadline {deadline_ms} ms is not in the future (now {base_ms} ms)"
            )
        if deadline_ms <= not_before_ms:
            raise DeadlineInPast("deadline falls before start_after")
        if deadline_ms - base_ms > (limits.DEADLINE_S_MAX + limits.START_AFTER_S_MAX) * 1000 or (
            deadline_ms - not_before_ms > limits.DEADLINE_S_MAX * 1000
        ):
            raise InvalidArgument(
                f"deadline is more than {limits.DEADLINE_S_MAX:.0f}s after the call may start"
            )
        criticality = (
            spec.criticality
            if request.criticality is None
            else Criticality.parse(request.criticality)
        )
        return NewCall(
            function=spec.name,
            tenant=spec.tenant,
            criticality=criticality,
            args_json=args_json,
            not_before_ms=not_before_ms,
            deadline_ms=deadline_ms,
            idempotency_key=request.idempotency_key,
        )

    async def submit(
        self,
        function: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        start_after: When | None = None,
        deadline: When | None = None,
        criticality: Criticality | str | None = None,
    ) -> str:
        """Store a call durably and return its id. `args`: a JSON object (keyword
        arguments), array (positional) or null."""
        request = CallRequest(function, args, idempotency_key, start_after, deadline, criticality)
        return await self.submit_request(request)

    async def submit_request(self, request: CallRequest) -> str:
        """`submit` of a prepared `CallRequest`."""
        base_ms = now_ms()
        call = await self._prepare(request, base_ms)
        call_id, _ = await self.queue.enqueue(call, base_ms)
        return call_id

    async def submit_batch(self, requests: list[CallRequest]) -> list[str]:
        """Submit up to BATCH_SUBMIT_MAX calls; all are validated before any is stored.
        Calls go to their buckets concurrently (each is durable on its own: a failure part
        way leaves the earlier ones submitted; resubmit with idempotency keys)."""
        if len(requests) > limits.BATCH_SUBMIT_MAX:
            raise InvalidArgument(
                f"batch of {len(requests)} calls exceeds BATCH_SUBMIT_MAX "
                f"({limits.BATCH_SUBMIT_MAX})"
            )
        base_ms = now_ms()
        calls = [await self._prepare(request, base_ms) for request in requests]
        results = await asyncio.gather(*(self.queue.enqueue(call, base_ms) for call in calls))
        return [call_id for call_id, _ in results]

    async def status(self, call_id: str) -> CallInfo:
        return CallInfo.of(await self.queue.state(call_id))

    async def result(self, call_id: str, *, wait_s: float = 0.0) -> Any:
        """The call's result. Waits up to `wait_s` for it to finish; raises `NotFinished`
        if it has not, `CallFailed` if it ended without a result."""
        give_up = time.monotonic() + wait_s
        while True:
            state = await self.queue.state(call_id)
            if state.state == CallStatus.SUCCEEDED:
                return None if state.result is None else codec.decode_json(state.result)
            if state.state.final:
                raise CallFailed(call_id, state.state, state.error)
            if time.monotonic() >= give_up:
                raise NotFinished(f"call {call_id} is {state.state}", detail=state.state)
            await asyncio.sleep(RESULT_POLL_S)

    async def cancel(self, call_id: str) -> CallInfo:
        return CallInfo.of(await self.queue.cancel(call_id))

    async def dead_letters(self, limit: int = 100) -> list[CallInfo]:
        return [CallInfo.of(state) for state in await self.queue.dead_letters(limit)]

    async def replay(self, call_id: str, *, deadline: When | None = None) -> CallInfo:
        state = await self.queue.state(call_id)
        spec = await self.spec(state.function)
        base_ms = now_ms()
        deadline_ms = (
            base_ms + int(spec.deadline_s * 1000) if deadline is None else _at_ms(deadline, base_ms)
        )
        if deadline_ms <= base_ms:
            raise DeadlineInPast("replay deadline is not in the future")
        return CallInfo.of(await self.queue.replay(call_id, deadline_ms, base_ms))
