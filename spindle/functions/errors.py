"""Errors of Spindle Functions: subclasses of the store's taxonomy, so one `except` clause
and one wire code cover both (an unknown function is a `NotFound`, oversize arguments are
`TooLarge`, a deadline in the past is an `InvalidArgument`)."""

from __future__ import annotations

from spindle.kv.errors import Conflict, InvalidArgument, NotFound, TooLarge


class UnknownFunction(NotFound):
    """No function of that name is registered (published to the store)."""


class UnknownCall(NotFound):
    """No call with that id exists (or its final state passed its retention)."""


class ArgsTooLarge(TooLarge):
    """A call's encoded arguments exceed `limits.ARGS_BYTES_MAX`."""


class DeadlineInPast(InvalidArgument):
    """The deadline asked for has already passed (or falls before `start_after`)."""


class NotFinished(Conflict):
    """The call has no result yet."""


class CallFailed(Exception):
    """Raised by `result()` for a call that ended without a result (failed, cancelled,
    expired); `state` and `error` say why."""

    def __init__(self, call_id: str, state: str, error: str | None) -> None:
        super().__init__(f"call {call_id} ended {state}: {error or 'no error recorded'}")
        self.call_id = call_id
        self.state = state
        self.error = error


class RetryableError(Exception):
    """Raise from a function to ask for a retry whatever the retry policy's error list."""


class PermanentError(Exception):
    """Raise from a function to fail the call at once, without retries."""
