"""Spindle Functions: an asynchronous function platform on Spindle's store (after Meta's
XFaaS). See docs/functions.md."""

from spindle.functions.client import CallRequest, FunctionsClient
from spindle.functions.errors import (
    ArgsTooLarge,
    CallFailed,
    DeadlineInPast,
    NotFinished,
    PermanentError,
    RetryableError,
    UnknownCall,
    UnknownFunction,
)
from spindle.functions.registry import Registry
from spindle.functions.spec import (
    CallInfo,
    CallStatus,
    Criticality,
    FunctionSpec,
    Quota,
    RetryPolicy,
)

__all__ = [
    "ArgsTooLarge",
    "CallFailed",
    "CallInfo",
    "CallRequest",
    "CallStatus",
    "Criticality",
    "DeadlineInPast",
    "FunctionSpec",
    "FunctionsClient",
    "NotFinished",
    "PermanentError",
    "Quota",
    "Registry",
    "RetryPolicy",
    "RetryableError",
    "UnknownCall",
    "UnknownFunction",
]
