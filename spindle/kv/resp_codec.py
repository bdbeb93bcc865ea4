"""RESP wire format for the Redis front end: a request scanner that checks every declared
length before anything is allocated for it, reply encoders for RESP2 and RESP3, and Redis
glob patterns (SCAN MATCH) matched in linear-ish time.

hiredis parses the requests (spindle/kv/resp.py feeds it), but hiredis trusts declared
lengths: `*99999999` makes it allocate a list of that size. So the scanner walks the header
lines first (never the payload bytes), rejects absurd lengths, and hands hiredis only
complete, validated commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from spindle.kv import limits

COMMAND_ARGS_MAX = 65_536
"""Most arguments (command name included) in one command (MSET of 32,767 pairs); hiredis
allocates a list of the declared length, here at most 512 KiB. Beyond it the stream is
treated as corrupt (Redis: "invalid multibulk length")."""
BULK_BYTES_MAX = limits.VALUE_BYTES_MAX + 64 * 1024
"""Largest single argument: a value at the value limit plus slack, so a slightly too large
value gets a clean `-ERR` from the store and the connection stays open; anything larger
is a protocol error that closes the connection."""
COMMAND_BYTES_MAX = limits.FRAME_BYTES_MAX
"""Sum of the declared argument lengths of one command, as the binary protocol's frame."""
INLINE_BYTES_MAX = 64 * 1024
"""Longest inline (telnet-style) command line, as Redis's PROTO_INLINE_MAX_SIZE."""
HEADER_LINE_BYTES_MAX = 32
"""Longest `*<n>` or `$<n>` header line: a sign, 20 digits and CRLF fit."""
MATCH_PATTERN_BYTES_MAX = 1_024
"""Longest SCAN/KEYS MATCH pattern."""


class RespProtocolError(Exception):
    """The request stream cannot be trusted any more: reply once, then close."""


MULTIBULK = 1
INLINE = 2
EMPTY = 3


class CommandScanner:
    """Finds where each command ends in a receive buffer, checking lengths as it goes.

    Incremental: a command that arrives in many reads is scanned header by header, each
    header once, and the payload bytes are skipped by arithmetic. After a command is
    found, `kind` says how to parse it (`MULTIBULK`: hand the bytes to hiredis, `INLINE`:
    split the line, `EMPTY`: nothing to do).
    """

    def __init__(self) -> None:
        self.kind = EMPTY
        self._resume = 0
        """Where scanning of a partly received command continues (absolute offset)."""
        self._args_left = -1
        """Bulk headers still expected; -1 before the command's own header."""
        self._declared_bytes = 0

    def shift(self, consumed: int) -> None:
        """The caller dropped `consumed` bytes from the front of the buffer."""
        if self._args_left >= 0:
            self._resume -= consumed

    def scan(self, buf: bytearray, start: int) -> int:
        """End offset of the command starting at `start`, or -1 if it is incomplete.
        Raises RespProtocolError on malformed or absurd input."""
        size = len(buf)
        if self._args_left < 0:
            if start >= size:
                return -1
            if buf[start] != 0x2A:  # not '*': an inline command
                return self._scan_inline(buf, start, size)
            count, pos = _header(buf, start, size, "multibulk")
            if pos < 0:
                return -1
            if count <= 0:  # `*0` and `*-1` are ignored, as Redis does
                self.kind = EMPTY
                return pos
            if count > COMMAND_ARGS_MAX:
                raise RespProtocolError("invalid multibulk length")
            self._args_left = count
            self._declared_bytes = 0
        else:
            pos = self._resume
        while self._args_left > 0:
            if pos >= size:
                break
            if buf[pos] != 0x24:  # '$'
                raise RespProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            length, payload = _header(buf, pos, size, "bulk")
            if payload < 0:
                break
            if length < 0 or length > BULK_BYTES_MAX:
                raise RespProtocolError("invalid bulk length")
            end = payload + length
            if end + 2 > size:
                if self._declared_bytes + length > COMMAND_BYTES_MAX:
                    raise RespProtocolError("command too large")
                break
            if buf[end] != 0x0D or buf[end + 1] != 0x0A:
                raise RespProtocolError("bulk string not terminated by CRLF")
            self._declared_bytes += length
            if self._declared_bytes > COMMAND_BYTES_MAX:
                raise RespProtocolError("command too large")
            pos = end + 2
            self._args_left -= 1
        if self._args_left > 0:
            self._resume = pos
            return -1
        self._args_left = -1
        self.kind = MULTIBULK
        return pos

    def _scan_inline(self, buf: bytearray, start: int, size: int) -> int:
        newline = buf.find(b"\n", start, start + INLINE_BYTES_MAX)
        if newline < 0:
            if size - start >= INLINE_BYTES_MAX:
                raise RespProtocolError("too big inline request")
            return -1
        self.kind = INLINE
        return newline + 1


_HEADER_LINE = re.compile(rb"[*$](-?[0-9]{1,20})\r\n")


def _header(buf: bytearray, start: int, size: int, what: str) -> tuple[int, int]:
    """Parse `<type><integer>\\r\\n` at `start`: (value, offset after it), or (0, -1) if the
    line is incomplete."""
    found = _HEADER_LINE.match(buf, start)
    if found is not None:  # the common case, in one C call
        return int(found.group(1)), found.end()
    crlf = buf.find(b"\r\n", start + 1, start + HEADER_LINE_BYTES_MAX)
    if crlf < 0:
        if size - start >= HEADER_LINE_BYTES_MAX:
            raise RespProtocolError(f"invalid {what} length")
        return 0, -1
    digits = bytes(buf[start + 1 : crlf])
    body = digits[1:] if digits[:1] == b"-" else digits
    if not body.isdigit():
        raise RespProtocolError(f"invalid {what} length")
    return int(digits), crlf + 2


def split_inline(line: bytes) -> list[bytes]:
    """Arguments of an inline command: whitespace-separated words (no quoting)."""
    return line.split()


# -- replies ----------------------------------------------------------------------------

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
NULL_RESP2 = b"$-1\r\n"
NULL_RESP3 = b"_\r\n"
EMPTY_ARRAY = b"*0\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"


class Simple(str):
    """A status reply (`+text`), as opposed to a bulk string."""


class ErrorReply(str):
    """An error reply (`-CODE message`) inside a larger structure or on its own."""


class Verbatim(str):
    """Text that RESP3 sends as a verbatim string (INFO, CLIENT INFO) and RESP2 as bulk."""


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def error(message: str) -> bytes:
    """`-message\\r\\n`; the message's first word is the error code (ERR, NOAUTH, ...)."""
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def encode(value: Any, resp3: bool) -> bytes:
    """Encode a reply built of None, bytes, str, int, bool, float, list, tuple, dict and
    the marker classes above. Dicts become RESP3 maps, or flat arrays in RESP2."""
    out: list[bytes] = []
    _encode_into(out, value, resp3)
    return b"".join(out)


def _encode_into(out: list[bytes], value: Any, resp3: bool) -> None:
    if value is None:
        out.append(NULL_RESP3 if resp3 else NULL_RESP2)
    elif isinstance(value, bytes):
        out.append(bulk(value))
    elif isinstance(value, Simple):
        out.append(b"+" + value.encode() + b"\r\n")
    elif isinstance(value, ErrorReply):
        out.append(error(value))
    elif isinstance(value, Verbatim):
        data = value.encode()
        if resp3:
            out.append(b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data))
        else:
            out.append(bulk(data))
    elif isinstance(value, str):
        out.append(bulk(value.encode()))
    elif isinstance(value, bool):
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(ONE if value else ZERO)
    elif isinstance(value, int):
        out.append(integer(value))
    elif isinstance(value, float):
        out.append(b",%r\r\n" % value if resp3 else bulk(repr(value).encode()))
    elif isinstance(value, dict):
        out.append(b"%%%d\r\n" % len(value) if resp3 else b"*%d\r\n" % (2 * len(value)))
        for key, item in value.items():
            _encode_into(out, key, resp3)
            _encode_into(out, item, resp3)
    elif isinstance(value, (list, tuple)):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(out, item, resp3)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")


# -- glob patterns ----------------------------------------------------------------------

Matcher = Callable[[bytes], bool]


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match starts with (up to the first special character)."""
    for index, char in enumerate(pattern):
        if char in b"*?[\\":
            return pattern[:index]
    return pattern


def compile_glob(pattern: bytes) -> Matcher:
    """A matcher for Redis's glob syntax (`*`, `?`, `[abc]`, `[^a-z]`, `\\x`).

    The pattern is cut at its stars into fixed-width segments, each a star-free regex:
    the first must match at the start, the last at the end, the middle ones are searched
    leftmost-first in between. That is exact for globs and costs O(key x pattern) in C,
    where a regex with several `.*` could backtrack exponentially on a hostile pattern.
    """
    if len(pattern) > MATCH_PATTERN_BYTES_MAX:
        raise ValueError(f"MATCH pattern longer than {MATCH_PATTERN_BYTES_MAX} bytes")
    segments: list[tuple[re.Pattern[bytes], int]] = []
    parts: list[bytes] = []
    width = 0
    index = 0
    size = len(pattern)
    while index < size:
        char = pattern[index : index + 1]
        if char == b"*":
            segments.append((re.compile(b"".join(parts), re.DOTALL), width))
            parts, width = [], 0
        elif char == b"?":
            parts.append(b".")
            width += 1
        elif char == b"\\" and index + 1 < size:
            index += 1
            parts.append(re.escape(pattern[index : index + 1]))
            width += 1
        elif char == b"[":
            index, part = _char_class(pattern, index + 1)
            parts.append(part)
            width += 1
        else:
            parts.append(re.escape(char))
            width += 1
        index += 1
    segments.append((re.compile(b"".join(parts), re.DOTALL), width))
    if len(segments) == 1:
        only = segments[0][0]
        return lambda key: only.fullmatch(key) is not None
    first, first_width = segments[0]
    last, last_width = segments[-1]
    middle = segments[1:-1]

    def match(key: bytes) -> bool:
        limit = len(key) - last_width
        if limit < first_width or first.match(key, 0, first_width) is None:
            return False
        if last.fullmatch(key, limit) is None:
            return False
        position = first_width
        for segment, segment_width in middle:
            if segment_width == 0:
                continue
            found = segment.search(key, position, limit)
            if found is None:
                return False
            position = found.end()
        return True

    return match


def _char_class(pattern: bytes, index: int) -> tuple[int, bytes]:
    """Translate `[...]` starting after the `[`; returns (index of the closing `]` or of
    the pattern's end, regex). An unterminated class ends with the pattern, as in Redis."""
    size = len(pattern)
    negate = index < size and pattern[index : index + 1] == b"^"
    if negate:
        index += 1
    members: list[bytes] = []
    while index < size and pattern[index : index + 1] != b"]":
        char = pattern[index : index + 1]
        if char == b"\\" and index + 1 < size:
            index += 1
            members.append(re.escape(pattern[index : index + 1]))
        elif index + 2 < size and pattern[index + 1 : index + 2] == b"-":
            low, high = sorted((pattern[index], pattern[index + 2]))
            members.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
            index += 2
        else:
            members.append(re.escape(char))
        index += 1
    if not members:
        return index, b"." if negate else b"(?!)"
    return index, b"[" + (b"^" if negate else b"") + b"".join(members) + b"]"
