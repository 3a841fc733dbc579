"""GELF 1.1 input, the reference: UDP chunks, payloads, TCP/TLS framing, JSON, timestamps.

The public GELF API of kinesyslog/_fast/ (gelf_chunks.pyi, gelf_payload.pyi, json_scan.pyi
and framing.pyi GelfStreamFramer), written from docs/contract.md §4.5, §4.6 and
§4.9 and RFC 8259 for clarity, not speed. frame_stream() states the stream framing rules once
more over a whole stream, to check the streaming framers against.

GELF chunks over UDP (§4.5):

    CHUNK      = %x1E %x0F MESSAGE-ID SEQ COUNT PAYLOAD
    MESSAGE-ID = 8OCTET
    SEQ        = OCTET   ; 0 .. COUNT - 1
    COUNT      = OCTET   ; 1 .. 128

JSON, RFC 8259 (UTF-8 inside strings not checked, nesting up to 512 levels):

    JSON-text = ws value ws
    object    = begin-object [ member *( value-separator member ) ] end-object
    member    = string name-separator value
    array     = begin-array [ value *( value-separator value ) ] end-array
    value     = false / null / true / object / array / number / string
    number    = [ minus ] int [ frac ] [ exp ]
    int       = zero / ( digit1-9 *DIGIT )
    frac      = decimal-point 1*DIGIT
    exp       = e [ minus / plus ] 1*DIGIT
    string    = quotation-mark *char quotation-mark
    char      = unescaped / escape ( %x22 / %x5C / %x2F / %x62 / %x66 / %x6E / %x72 /
                %x74 / %x75 4HEXDIG )
    unescaped = %x20-21 / %x23-5B / %x5D-10FFFF
    ws        = *( %x20 / %x09 / %x0A / %x0D )
"""

from __future__ import annotations

import json
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Union

from kinesyslog.constants import (
    GELF_CHUNK_MAGIC,
    GELF_CHUNK_TIMEOUT,
    GELF_MAX_CHUNKS,
    GELF_MAX_JSON_DEPTH,
    GELF_MAX_PENDING_BYTES,
    GELF_MAX_PENDING_MESSAGES,
    GELF_MAX_TIMESTAMP_MS,
    GELF_STANDARD_CHUNK_SIZE,
)
from tests.reference.framing import Framer

Buffer = Union[bytes, bytearray, memoryview]
Status = Literal["ok", "truncated", "corrupt"]

# What pending_bytes charges besides the payloads (docs/contract.md §4.5: "payloads plus a
# fixed cost per chunk and per message"): per chunk; per message; per message, per chunk it
# will hold. Part of the API: ChunkAssembler's bounds are stated in these units.
CHUNK_OVERHEAD = 48
MESSAGE_OVERHEAD = 320
SLOT_OVERHEAD = 8

CHUNK_HEADER = 12  # magic, MESSAGE-ID, SEQ, COUNT
LF = 0x0A
CR = 0x0D
NUL = 0x00


def as_bytes(data: Buffer) -> bytes:
    """The bytes of any buffer (bytes, bytearray, memoryview); TypeError for anything else."""
    if isinstance(data, bytes):
        return data
    return memoryview(data).tobytes()


# --- UDP chunks ------------------------------------------------------------------------------


@dataclass
class _Message:
    """One message being reassembled. chunks is None once it was refused as oversized: it
    then only absorbs the message's remaining chunks until it completes or expires."""

    first_seen: float
    count: int
    seen: set[int] = field(default_factory=set)
    chunks: dict[int, bytes] | None = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks.values()) if self.chunks is not None else 0

    @property
    def cost(self) -> int:
        """What this message adds to pending_bytes."""
        if self.chunks is None:
            return MESSAGE_OVERHEAD
        return MESSAGE_OVERHEAD + SLOT_OVERHEAD * self.count + sum(
            CHUNK_OVERHEAD + len(c) for c in self.chunks.values())


class ChunkAssembler:
    """GELF chunk reassembly (docs/contract.md §4.5): chunks of one MESSAGE-ID in any order,
    duplicates ignored, a message discarded `timeout` seconds after its first chunk, pending
    memory bounded in bytes and in messages by evicting the oldest, a reassembled payload
    bounded by max_reassembled. feed() returns a whole payload or None; `now` is a monotonic
    clock that never decreases."""

    def __init__(
        self,
        max_message_size: int,
        max_pending_bytes: int = GELF_MAX_PENDING_BYTES,
        max_pending_messages: int = GELF_MAX_PENDING_MESSAGES,
        timeout: float = GELF_CHUNK_TIMEOUT,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        if max_pending_bytes < 1 or max_pending_messages < 1:
            raise ValueError("max_pending_bytes and max_pending_messages must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._max_message_size = max_message_size
        self._max_reassembled = max(2 * max_message_size,
                                    GELF_MAX_CHUNKS * GELF_STANDARD_CHUNK_SIZE)
        self._max_pending_bytes = max_pending_bytes
        self._max_pending_messages = max_pending_messages
        self._timeout = float(timeout)
        self._pending: OrderedDict[bytes, _Message] = OrderedDict()  # oldest first
        self._pending_bytes = 0  # the sum of the pending messages' costs
        self._counts = dict.fromkeys(
            ("expired", "evicted", "invalid", "duplicates", "empty", "oversized"), 0)

    max_message_size = property(lambda self: self._max_message_size)
    max_reassembled = property(lambda self: self._max_reassembled)
    max_pending_bytes = property(lambda self: self._max_pending_bytes)
    max_pending_messages = property(lambda self: self._max_pending_messages)
    timeout = property(lambda self: self._timeout)
    pending_bytes = property(lambda self: self._pending_bytes)
    pending_messages = property(lambda self: len(self._pending))
    expired = property(lambda self: self._counts["expired"])
    evicted = property(lambda self: self._counts["evicted"])
    invalid = property(lambda self: self._counts["invalid"])
    duplicates = property(lambda self: self._counts["duplicates"])
    empty = property(lambda self: self._counts["empty"])
    oversized = property(lambda self: self._counts["oversized"])

    def expire(self, now: float) -> int:
        """Discard the messages whose first chunk is `timeout` or more old; how many."""
        before = self._counts["expired"]
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if oldest.first_seen > now - self._timeout:
                break
            self._drop(key, "expired")
        return self._counts["expired"] - before

    def _drop(self, key: bytes, reason: str | None) -> None:
        """Remove a pending message; count it under `reason` (None: completed) unless it was
        refused before (its drop was counted then)."""
        message = self._pending.pop(key)
        self._pending_bytes -= message.cost
        if reason is not None and message.chunks is not None:
            self._counts[reason] += 1

    def _evict_oldest(self) -> None:
        self._drop(next(iter(self._pending)), "evicted")

    def feed(self, datagram: Buffer, now: float) -> bytes | None:
        data = as_bytes(datagram)
        if not data:
            self._counts["empty"] += 1
            return None
        if not data.startswith(GELF_CHUNK_MAGIC):
            return data  # a whole payload
        if len(data) < CHUNK_HEADER:
            self._counts["invalid"] += 1
            return None
        key, seq, count, payload = data[2:10], data[10], data[11], data[CHUNK_HEADER:]
        if not 1 <= count <= GELF_MAX_CHUNKS or seq >= count:
            self._counts["invalid"] += 1
            return None
        if count == 1:
            if len(payload) > self._max_reassembled:
                self._counts["oversized"] += 1
                return None
            return payload
        self.expire(now)
        message = self._pending.get(key)
        if message is None:
            self._first_chunk(key, seq, count, payload, now)
            return None
        if message.count != count:
            self._counts["invalid"] += 1
            return None
        if seq in message.seen:
            self._counts["duplicates"] += 1
            return None
        message.seen.add(seq)
        complete = len(message.seen) == count
        if message.chunks is None:  # refused: absorb the rest
            if complete:
                self._drop(key, None)
            return None
        if message.size + len(payload) > self._max_reassembled:
            self._counts["oversized"] += 1
            self._refuse(key, message)
            return None
        if complete:
            self._drop(key, None)
            message.chunks[seq] = payload
            return b"".join(message.chunks[k] for k in range(count))
        cost = CHUNK_OVERHEAD + len(payload)
        if cost > self._max_pending_bytes:
            self._counts["oversized"] += 1
            self._refuse(key, message)
            return None
        while self._pending_bytes + cost > self._max_pending_bytes:
            self._evict_oldest()
            if key not in self._pending:
                return None  # it was the oldest, evicted to make room for its own chunk
        message.chunks[seq] = payload
        self._pending_bytes += cost
        return None

    def _first_chunk(self, key: bytes, seq: int, count: int, payload: bytes,
                     now: float) -> None:
        cost = MESSAGE_OVERHEAD + SLOT_OVERHEAD * count + CHUNK_OVERHEAD + len(payload)
        if len(payload) > self._max_reassembled or cost > self._max_pending_bytes:
            self._counts["oversized"] += 1
            return
        while len(self._pending) >= self._max_pending_messages:
            self._evict_oldest()
        while self._pending_bytes + cost > self._max_pending_bytes:
            self._evict_oldest()
        self._pending[key] = _Message(now, count, {seq}, {seq: payload})
        self._pending_bytes += cost

    def _refuse(self, key: bytes, message: _Message) -> None:
        """Free an oversized message's chunks; it stays pending, absorbing the rest, unless
        this chunk was its last."""
        if len(message.seen) == message.count:
            self._drop(key, None)
            return
        self._pending_bytes -= message.cost
        message.chunks = None
        self._pending_bytes += message.cost


# --- Payloads --------------------------------------------------------------------------------


def decode_payload(payload: Buffer, max_size: int) -> tuple[bytes | None, Status]:
    """(message, status) of a UDP payload (docs/contract.md §4.5): gzip if it starts with
    1f 8b, zlib if it starts with 78 and the two header bytes pass zlib's check, else plain.
    Decompression stops after max_size + 1 output bytes; a longer message is cut to max_size
    ("truncated"); invalid or incomplete compressed data is "corrupt" (message None). Bytes
    after the end of a compressed stream are ignored."""
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    data = as_bytes(payload)
    if data.startswith(b"\x1f\x8b"):
        wbits = 16 + zlib.MAX_WBITS
    elif len(data) >= 2 and data[0] == 0x78 and int.from_bytes(data[:2], "big") % 31 == 0:
        wbits = zlib.MAX_WBITS
    else:
        if len(data) > max_size:
            return data[:max_size], "truncated"
        return data, "ok"
    decompressor = zlib.decompressobj(wbits)
    try:
        message = decompressor.decompress(data, max_size + 1)
    except zlib.error:
        return None, "corrupt"
    if len(message) > max_size:
        return message[:max_size], "truncated"
    if not decompressor.eof:
        return None, "corrupt"
    return message, "ok"


# --- TCP and TLS framing ---------------------------------------------------------------------

JSON_WHITESPACE = b" \t\r\n"
BETWEEN_FRAMES = JSON_WHITESPACE + b"\0"


@dataclass
class _FrameScan:
    """Where a frame stands: inside how many brackets of an object, inside a string, right
    after a backslash in one."""

    depth: int = 0
    in_string: bool = False
    escape: bool = False

    def advance(self, stream: bytes, start: int) -> int:
        """Read stream[start:]; the index of the frame's terminator, or len(stream)."""
        for index in range(start, len(stream)):
            c = stream[index]
            if c == NUL:
                return index  # always
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == 0x5C:  # \
                    self.escape = True
                elif c == 0x22:  # "
                    self.in_string = False
            elif self.depth == 0:
                if c == LF:
                    return index
                if c == 0x7B:  # { opens an object
                    self.depth = 1
            elif c == 0x22:
                self.in_string = True
            elif c in b"{[":
                self.depth += 1
            elif c in b"}]":
                self.depth -= 1
        return len(stream)


class GelfStreamFramer(Framer):
    """GELF documents of a TCP or TLS stream (docs/contract.md §4.6).

    A frame starts at the first byte that is not JSON whitespace or NUL. It ends at NUL,
    always, and at LF when no JSON object is open (an object opens at "{" and closes at its
    matching "}"; brackets are counted inside it, strings and their escapes skipped); a CR
    before that LF is removed. A frame longer than max_message_size is delivered cut to that
    size (counted in `truncated`) and the rest of it skipped; one byte over the size is held
    until the next byte shows whether it is the CR of a CR LF. At close an unterminated frame
    is delivered if no object is open, else dropped and counted in `incomplete_dropped`."""

    def __init__(self, max_message_size: int) -> None:
        super().__init__(max_message_size)
        self._new_frame()

    def _new_frame(self) -> None:
        self._started = False  # the frame's first byte was seen
        self._skipping = False  # it was delivered cut: drop the rest
        self._scan = _FrameScan()
        self._held = bytearray()

    def _deliver(self, frame: bytes, out: list[bytes]) -> None:
        """Deliver a frame, cut to max_message_size (and counted) if it is longer."""
        if len(frame) > self._max:
            frame = frame[: self._max]
            self._truncated += 1
        out.append(frame)

    def feed(self, data: Buffer) -> list[bytes]:
        stream = as_bytes(data)
        out: list[bytes] = []
        i = 0
        while i < len(stream):
            if not self._started:
                while i < len(stream) and stream[i] in BETWEEN_FRAMES:
                    i += 1
                if i == len(stream):
                    break
                self._started = True
            end = self._scan.advance(stream, i)
            if not self._skipping:
                if end < len(stream):
                    frame = bytes(self._held) + stream[i:end]
                    if stream[end] == LF and frame.endswith(b"\r"):
                        frame = frame[:-1]
                    self._deliver(frame, out)
                elif len(self._held) + end - i <= self._max + 1:
                    self._held += stream[i:end]
                else:  # too long, and not finished yet: deliver it cut now
                    self._deliver(bytes(self._held) + stream[i:end], out)
                    self._held.clear()
                    self._skipping = True
            if end < len(stream):
                self._new_frame()
            i = end + 1
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if self._started and not self._skipping:
            if self._scan.depth > 0:
                self._incomplete_dropped += 1
            else:
                frame = bytes(self._held)
                self._deliver(frame[:-1] if frame.endswith(b"\r") else frame, out)
        self._new_frame()
        return out


def frame_stream(stream: bytes, max_message_size: int) -> tuple[list[bytes], int, int]:
    """docs/contract.md §4.6 over a whole stream and its close, stated without a state
    machine: (messages, truncated, incomplete_dropped), what a GelfStreamFramer fed the
    stream in any pieces and then closed must give."""
    messages: list[bytes] = []
    truncated = dropped = 0
    i, n = 0, len(stream)
    while True:
        while i < n and stream[i] in BETWEEN_FRAMES:
            i += 1
        if i >= n:
            return messages, truncated, dropped
        depth, in_string, escape, j = 0, False, False, i
        while j < n:
            c = stream[j]
            if in_string:
                if c == 0:
                    break
                if escape:
                    escape = False
                elif c == 0x5C:
                    escape = True
                elif c == 0x22:
                    in_string = False
            elif c == 0 or (c == 0x0A and depth == 0):
                break
            elif depth == 0:
                depth = 1 if c == 0x7B else 0
            elif c == 0x22:
                in_string = True
            elif c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
            j += 1
        frame = stream[i:j]
        if j == n and len(frame) <= max_message_size + 1 and depth > 0:
            dropped += 1  # cut off at close, and not already delivered truncated
            return messages, truncated, dropped
        if (j == n or stream[j] == 0x0A) and frame.endswith(b"\r"):
            frame = frame[:-1]
        if len(frame) > max_message_size:
            frame = frame[:max_message_size]
            truncated += 1
        messages.append(frame)
        i = j + 1


# --- JSON: structure and the "timestamp" member ----------------------------------------------

STRING = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\xff]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*"')
NUMBER = re.compile(rb"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([-+]?[0-9]+))?")
LITERAL = re.compile(rb"true|false|null")
TIMESTAMP_KEY = "timestamp"


@dataclass
class JsonScan:
    """What scan_json_object() found: whether the text is one JSON object, and the last
    "timestamp" member of that object as ("number" | "string" | "other", its JSON text)."""

    is_object: bool
    timestamp: tuple[str, bytes] | None = None


def _skip_ws(document: bytes, i: int) -> int:
    """The index of the first byte at or after i that is not JSON whitespace (ws)."""
    while i < len(document) and document[i] in JSON_WHITESPACE:
        i += 1
    return i


def _string_value(token: bytes) -> str:
    """The text of a valid JSON string token (bytes that are not UTF-8 kept as surrogates)."""
    return json.loads(token.decode("utf-8", "surrogateescape"))


def scan_json_object(document: bytes) -> JsonScan:
    """Read `document` as one JSON object (RFC 8259, whitespace around it, nesting up to
    GELF_MAX_JSON_DEPTH levels, UTF-8 inside strings not checked)."""
    invalid = JsonScan(False)
    i = _skip_ws(document, 0)
    if not document.startswith(b"{", i):
        return invalid
    closers = [b"}"]  # what closes each open object or array, innermost last
    i += 1
    expect = "first member"  # or "member", "first value", "value", "separator"
    timestamp: tuple[str, bytes] | None = None
    is_timestamp = False  # the value about to be read is a top-level "timestamp" member
    while True:
        i = _skip_ws(document, i)
        if expect == "separator":
            if not closers:
                return JsonScan(i == len(document), timestamp)
            if document.startswith(b",", i):
                expect = "member" if closers[-1] == b"}" else "value"
            elif document.startswith(closers[-1], i):
                closers.pop()
            else:
                return invalid
            i += 1
        elif expect in ("first member", "member"):
            if expect == "first member" and document.startswith(b"}", i):
                closers.pop()
                i += 1
                expect = "separator"
                continue
            key = STRING.match(document, i)
            if not key:
                return invalid
            is_timestamp = len(closers) == 1 and _string_value(key.group()) == TIMESTAMP_KEY
            i = _skip_ws(document, key.end())
            if not document.startswith(b":", i):
                return invalid
            i += 1
            expect = "value"
        elif expect == "first value" and document.startswith(b"]", i):
            closers.pop()
            i += 1
            expect = "separator"
        else:  # a value
            opener = document[i : i + 1]
            if opener in (b"{", b"["):
                if is_timestamp:
                    timestamp = ("other", opener)
                    is_timestamp = False
                if len(closers) >= GELF_MAX_JSON_DEPTH:
                    return invalid
                closers.append(b"}" if opener == b"{" else b"]")
                i += 1
                expect = "first member" if opener == b"{" else "first value"
                continue
            token = None
            for kind, grammar in (("string", STRING), ("number", NUMBER), ("other", LITERAL)):
                token = grammar.match(document, i)
                if token:
                    if is_timestamp:
                        timestamp = (kind, token.group())
                        is_timestamp = False
                    break
            if token is None:
                return invalid
            i = token.end()
            expect = "separator"


def is_json_object(message: Buffer) -> bool:
    """Whether message is one JSON object (RFC 8259) with optional whitespace around it,
    nested at most 512 levels; UTF-8 inside strings is not checked (docs/contract.md §4.6)."""
    return scan_json_object(as_bytes(message)).is_object


def number_ms(number: bytes) -> int | None:
    """A JSON number of seconds as milliseconds, exactly (no floating point), the digits
    after the millisecond truncated; None when it is negative or after the last millisecond
    of year 9999."""
    match = NUMBER.fullmatch(number)
    assert match is not None
    minus, integer, fraction, exponent = match.groups(b"")
    digits = (integer + fraction).lstrip(b"0")
    if not digits:
        return 0  # 0, -0, 0.000e999...
    if minus:
        return None
    exponent_digits = exponent.lstrip(b"+-").lstrip(b"0") or b"0"
    if len(exponent_digits) > 12:  # far beyond any meaningful value: saturate
        exponent_digits = b"9" * 12
    shift = int(exponent_digits) * (-1 if exponent.startswith(b"-") else 1)
    # value in ms = int(digits) * 10 ** (shift + 3 - len(fraction))
    whole_digits = len(digits) + shift + 3 - len(fraction)  # digits before the ms point
    if whole_digits <= 0:
        return 0
    if whole_digits > len(str(GELF_MAX_TIMESTAMP_MS)):
        return None
    ms = int(digits[:whole_digits].ljust(whole_digits, b"0"))
    return ms if ms <= GELF_MAX_TIMESTAMP_MS else None


def gelf_timestamp(message: Buffer, receive_ms: int) -> int:
    """docs/contract.md §4.9: the last `timestamp` member of the top-level JSON object, a
    JSON number or a string holding exactly a JSON number (as written, without escapes), in
    seconds since the epoch; receive_ms when the message is not one valid JSON object, has
    no such member, or its value is of another type, negative, or after year 9999."""
    scan = scan_json_object(as_bytes(message))
    if not scan.is_object or scan.timestamp is None:
        return receive_ms
    kind, token = scan.timestamp
    if kind == "string" and NUMBER.fullmatch(token[1:-1]):
        token, kind = token[1:-1], "number"
    if kind != "number":
        return receive_ms
    ms = number_ms(token)
    return receive_ms if ms is None else ms
