"""One error taxonomy for every surface: binary protocol, RESP, HTTP and the Python client.

An error is a value with a code. The server sends `(code, message, detail)`; the client
turns it back into the matching exception class, so callers can `except Conflict`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "InvalidArgument"
    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    WRONG_SHARD = "WrongShard"
    NOT_LEADER = "NotLeader"
    CONFLICT = "Conflict"
    THROTTLED = "Throttled"
    QUOTA_EXCEEDED = "QuotaExceeded"
    UNAVAILABLE = "Unavailable"
    TIMEOUT = "Timeout"
    TOO_LARGE = "TooLarge"
    UNKNOWN_OPERATION = "UnknownOperation"
    MALFORMED_FRAME = "MalformedFrame"
    UNAUTHENTICATED = "Unauthenticated"
    PERMISSION_DENIED = "PermissionDenied"
    INTERNAL = "Internal"


class SpindleError(Exception):
    """Base of every error Spindle reports; `detail` carries machine-readable context."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(SpindleError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SpindleError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(SpindleError):
    code = ErrorCode.ALREADY_EXISTS


class WrongShard(SpindleError):
    """The key is not served here, or the request's shard-map epoch is stale.

    `detail` holds the current keyspace map (encoded), so the client can refresh and retry.
    """

    code = ErrorCode.WRONG_SHARD


class NotLeader(SpindleError):
    code = ErrorCode.NOT_LEADER


class Conflict(SpindleError):
    """A condition did not hold: key exists, version mismatch, or a transaction read changed."""

    code = ErrorCode.CONFLICT


class Throttled(SpindleError):
    code = ErrorCode.THROTTLED


class QuotaExceeded(SpindleError):
    """A write would take the tenant (or keyspace) over its stored-bytes quota."""

    code = ErrorCode.QUOTA_EXCEEDED


class Unavailable(SpindleError):
    code = ErrorCode.UNAVAILABLE


class Timeout(SpindleError):
    code = ErrorCode.TIMEOUT


class TooLarge(SpindleError):
    code = ErrorCode.TOO_LARGE


class UnknownOperation(SpindleError):
    code = ErrorCode.UNKNOWN_OPERATION


class MalformedFrame(SpindleError):
    code = ErrorCode.MALFORMED_FRAME


class Unauthenticated(SpindleError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(SpindleError):
    code = ErrorCode.PERMISSION_DENIED


class Internal(SpindleError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[SpindleError]] = {
    cls.code.value: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        WrongShard,
        NotLeader,
        Conflict,
        Throttled,
        QuotaExceeded,
        Unavailable,
        Timeout,
        TooLarge,
        UnknownOperation,
        MalformedFrame,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def error_from_code(code: str, message: str, detail: Any = None) -> SpindleError:
    """Rebuild the typed exception for a code received over the wire."""
    cls = _BY_CODE.get(code, Internal)
    return cls(message, detail)
