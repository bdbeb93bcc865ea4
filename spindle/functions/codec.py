"""Encoding of call state and specs for the store: msgpack for state, JSON for args and
results (they cross into external programs and HTTP services)."""

from __future__ import annotations

from typing import Any

import msgspec

from spindle.functions.spec import CallState, FunctionSpec

_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(CallState)
_spec_decoder = msgspec.json.Decoder(FunctionSpec)


def encode_state(state: CallState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> CallState:
    return _state_decoder.decode(raw)


def encode_spec(spec: FunctionSpec) -> bytes:
    return msgspec.json.encode(spec)


def decode_spec(raw: bytes) -> FunctionSpec:
    return _spec_decoder.decode(raw)


def encode_json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def decode_json(raw: bytes) -> Any:
    return msgspec.json.decode(raw)
