"""The simulated key/value state machine and the client wire messages.

Commands carry ``(client_id, request_id)``; the state machine keeps, per client, the last
request applied and its result (a session, as ZippyDB does). That makes a command applied at
most once even when the network duplicates a client request and the replica proposes it
twice, which is the property the linearizability check relies on.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ClientReply",
    "ClientRequest",
    "KVCommand",
    "KVStateMachine",
    "ReadMode",
    "Value",
]

Value = int | None
ReadMode = Literal["log", "read_index", "lease"]


class KVCommand(msgspec.Struct, frozen=True):
    client_id: int
    request_id: int
    op: str  # "get" | "put" | "delete" | "cas"
    key: str
    value: Value = None
    expected: Value = None

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @staticmethod
    def decode(data: bytes) -> KVCommand:
        return msgspec.msgpack.decode(data, type=KVCommand)


class ClientRequest(msgspec.Struct, frozen=True):
    command: KVCommand
    #: How a get is served: through the log, by ReadIndex, or by the leader lease.
    read_mode: ReadMode = "log"


class ClientReply(msgspec.Struct, frozen=True):
    client_id: int
    request_id: int
    #: "ok": done, ``value`` is the result; "mismatch": a CAS did not apply (definite);
    #: "not_leader": not proposed at all (definite), ``leader_hint`` may help.
    status: str
    value: Value = None
    leader_hint: int = 0


class _Session(msgspec.Struct):
    request_id: int
    status: str
    value: Value


class _Image(msgspec.Struct):
    data: dict[str, int]
    sessions: dict[int, _Session]


class KVStateMachine:
    """A dict plus client sessions; deterministic given the sequence of applied commands."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}
        self._sessions: dict[int, _Session] = {}
        self.applied_index = 0

    def apply(self, index: int, command: KVCommand) -> tuple[str, Value]:
        """Applies the command at log ``index``; returns (status, value) for the client."""
        assert index > self.applied_index, f"apply {index} after {self.applied_index}"
        self.applied_index = index
        session = self._sessions.get(command.client_id)
        if session is not None and command.request_id <= session.request_id:
            if command.request_id == session.request_id:
                return session.status, session.value
            return "stale", None
        status, value = self._execute(command)
        self._sessions[command.client_id] = _Session(command.request_id, status, value)
        return status, value

    def skip(self, index: int) -> None:
        """An entry with no command (a leader's empty entry) still advances applied."""
        assert index > self.applied_index, f"skip {index} after {self.applied_index}"
        self.applied_index = index

    def _execute(self, command: KVCommand) -> tuple[str, Value]:
        key = command.key
        if command.op == "get":
            return "ok", self.data.get(key)
        if command.op == "put":
            assert command.value is not None
            self.data[key] = command.value
            return "ok", command.value
        if command.op == "delete":
            self.data.pop(key, None)
            return "ok", None
        if command.op == "cas":
            if self.data.get(key) != command.expected:
                return "mismatch", self.data.get(key)
            if command.value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = command.value
            return "ok", command.value
        raise AssertionError(f"unknown op {command.op}")

    def read(self, key: str) -> Value:
        return self.data.get(key)

    def snapshot_bytes(self) -> bytes:
        return msgspec.msgpack.encode(_Image(self.data, self._sessions))

    def restore(self, index: int, image: bytes) -> None:
        decoded = msgspec.msgpack.decode(image, type=_Image) if image else _Image({}, {})
        self.data = decoded.data
        self._sessions = decoded.sessions
        self.applied_index = index
