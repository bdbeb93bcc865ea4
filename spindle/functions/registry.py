"""The function registry: Python callables (decorator, sync or async), external programs
and HTTP endpoints, each with its spec.

    functions = Registry()

    @functions.function(criticality="deferrable", deadline_s=6 * 3600)
    async def rebuild_timeline(user_id: int) -> int: ...

    functions.command("resize", ["./resize", "--fast"], timeout_s=30)
    functions.http("notify", "http://127.0.0.1:8080/notify", downstream="notifier")

A worker runs a registry's functions (`spindle worker --app module:attribute`); command and
http functions need no code, so any worker runs them once their spec is published.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from spindle.functions import limits
from spindle.functions.spec import Criticality, FunctionSpec, Quota, RetryPolicy
from spindle.kv.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Registered:
    spec: FunctionSpec
    target: Callable[..., Any] | None = None
    """The Python callable (None for command and http functions)."""


class Registry:
    def __init__(self, tenant: str = "default") -> None:
        self.tenant = tenant
        self.functions: dict[str, Registered] = {}

    def _spec(self, name: str, kind: str, **options: Any) -> FunctionSpec:
        if "criticality" in options:
            options["criticality"] = Criticality.parse(options["criticality"])
        if isinstance(options.get("retry"), dict):
            options["retry"] = RetryPolicy(**options["retry"])
        if isinstance(options.get("quota"), dict):
            options["quota"] = Quota(**options["quota"])
        options.setdefault("tenant", self.tenant)
        spec = FunctionSpec(name=name, kind=kind, **options)
        spec.validate()
        return spec

    def add(self, registered: Registered) -> None:
        if registered.spec.name in self.functions:
            raise InvalidArgument(f"function {registered.spec.name!r} is already registered")
        self.functions[registered.spec.name] = registered

    def function(
        self,
        name: str | None = None,
        *,
        criticality: Criticality | str = Criticality.NORMAL,
        deadline_s: float = limits.DEADLINE_S_DEFAULT,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        concurrency_limit: int | None = None,
        quota: Quota | None = None,
        downstream: str | None = None,
    ) -> Callable[[F], F]:
        """Register a Python function. A coroutine function runs on the worker's event
        loop; a plain function runs on its thread pool."""

        def decorate(fn: F) -> F:
            spec = self._spec(
                name or fn.__name__,
                "python",
                criticality=criticality,
                deadline_s=deadline_s,
                timeout_s=timeout_s,
                retry=retry or RetryPolicy(),
                concurrency_limit=concurrency_limit,
                quota=quota or Quota(),
                downstream=downstream,
                blocking=not inspect.iscoroutinefunction(fn),
            )
            self.add(Registered(spec, fn))
            return fn

        return decorate

    def command(self, name: str, argv: list[str], **options: Any) -> FunctionSpec:
        """Register an external program: it reads one JSON call on stdin and writes one JSON
        result on stdout; a non-zero exit status fails the attempt."""
        spec = self._spec(name, "command", command=tuple(argv), **options)
        self.add(Registered(spec))
        return spec

    def http(self, name: str, url: str, **options: Any) -> FunctionSpec:
        """Register an HTTP endpoint: the call is POSTed as JSON; a 2xx answer's JSON body
        is the result; 429 and 503 mean overload (retried, and shrink the AIMD window)."""
        spec = self._spec(name, "http", url=url, **options)
        self.add(Registered(spec))
        return spec

    def get(self, name: str) -> Registered | None:
        return self.functions.get(name)

    def specs(self) -> list[FunctionSpec]:
        return [registered.spec for registered in self.functions.values()]


def load_registry(reference: str) -> Registry:
    """`module:attribute` -> the Registry it names (for `spindle worker --app`)."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument(f"--app must be module:attribute, got {reference!r}")
    found = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(found, Registry):
        raise InvalidArgument(f"{reference} is a {type(found).__name__}, not a Registry")
    return found
