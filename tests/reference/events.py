"""Events as JSON, grouped by stream, the reference (docs/contract.md §4.8-§4.10, §5.1).

The public API of kinesyslog/_fast/events.pyi, written from the contract with the json
module: an event is exactly what json.dumps({"id": ..., "timestamp": ..., "message": ...},
ensure_ascii=False) writes, its message the received bytes decoded as UTF-8 with
"backslashreplace".
"""

from __future__ import annotations

import json
import operator
import secrets
import time
from array import array
from typing import Union

from kinesyslog.constants import EVENT_ID_DIGITS, KIND_GELF
from kinesyslog.records import joined
from tests.reference.gelf import gelf_timestamp, is_json_object
from tests.reference.syslog import TimestampExtractor

Buffer = Union[bytes, bytearray, memoryview]
Entry = tuple[int, int, bytes, int, Buffer]
StreamKey = tuple[int, int, bytes]

COUNTER_DIGITS = 20
PREFIX_DIGITS = EVENT_ID_DIGITS - COUNTER_DIGITS  # 20 digits of ns, 16 random digits


def _bytes(message: Buffer) -> bytes:
    return message if isinstance(message, bytes) else memoryview(message).tobytes()


def _text(message: Buffer) -> str:
    """docs/contract.md §4.8: valid UTF-8 as is, each other byte as the text \\xNN."""
    return _bytes(message).decode("utf-8", "backslashreplace")


def json_string(message: Buffer) -> bytes:
    """The message as a JSON string, exactly as docs/contract.md §4.8 says: json.dumps(
    message.decode("utf-8", "backslashreplace"), ensure_ascii=False), encoded as UTF-8."""
    return json.dumps(_text(message), ensure_ascii=False).encode()


def new_id_prefix() -> bytes:
    """36 digits for an IdGenerator (docs/contract.md §4.10): the time in ns (20 digits) and
    16 random digits."""
    return b"%020d%016d" % (time.time_ns(), secrets.randbelow(10**16))


class IdGenerator:
    """Event ids: 36 prefix digits then a 20-digit counter starting at 0 (56 digits)."""

    def __init__(self, prefix: bytes) -> None:
        if not isinstance(prefix, bytes):
            raise TypeError(f"id prefix must be bytes, not {type(prefix).__name__}")
        if len(prefix) != PREFIX_DIGITS or not prefix.isdigit():
            raise ValueError(f"id prefix must be {PREFIX_DIGITS} ASCII digits, got {prefix!r}")
        self._prefix = prefix
        self._counter = 0

    def next_id(self) -> bytes:
        event_id = self._prefix + b"%0*d" % (COUNTER_DIGITS, self._counter)
        self._counter = (self._counter + 1) % 10**COUNTER_DIGITS
        return event_id


class EventBuffers:
    """Encoded events per (kind, port, source), in arrival order, keys in first-seen order.

    A GELF entry's timestamp is its "timestamp" member (and a GELF message that is not one
    JSON object is counted in gelf_invalid_json); any other entry's is its syslog header's."""

    def __init__(self, extractor: TimestampExtractor, ids: IdGenerator) -> None:
        if extractor is None or ids is None:
            raise TypeError("EventBuffers needs a TimestampExtractor and an IdGenerator")
        self._extractor = extractor
        self._ids = ids
        self._gelf_invalid_json = 0
        self._reset()

    def _reset(self) -> None:
        self._groups: dict[StreamKey, list[bytes]] = {}
        self._total_bytes = 0
        self._event_count = 0
        self._oldest_receive_ms = 0

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    @property
    def event_count(self) -> int:
        return self._event_count

    @property
    def oldest_receive_ms(self) -> int:
        """The earliest receive time of the events held (0 when there are none)."""
        return self._oldest_receive_ms

    @property
    def gelf_invalid_json(self) -> int:
        return self._gelf_invalid_json

    def add_batch(self, entries: list[Entry]) -> None:
        """Add (kind, port, source, receive_ms, message) tuples."""
        if not isinstance(entries, list):
            raise TypeError(f"entries must be a list, not {type(entries).__name__}")
        for entry in entries:
            if not isinstance(entry, tuple):
                raise TypeError(f"an entry must be a tuple, not {type(entry).__name__}")
            kind, port, source, receive_ms, message = entry
            kind, port, receive_ms = (operator.index(v) for v in (kind, port, receive_ms))
            data = _bytes(message)
            if kind == KIND_GELF:
                timestamp = gelf_timestamp(data, receive_ms)
                if not is_json_object(data):
                    self._gelf_invalid_json += 1
            else:
                timestamp = self._extractor.extract(data, receive_ms)
            event = json.dumps(
                {"id": self._ids.next_id().decode(), "timestamp": timestamp,
                 "message": _text(data)},
                ensure_ascii=False,
            ).encode()
            self._groups.setdefault((entry[0], entry[1], source), []).append(event)
            if self._event_count == 0 or receive_ms < self._oldest_receive_ms:
                self._oldest_receive_ms = receive_ms
            self._event_count += 1
            self._total_bytes += len(event)

    def take(self) -> list[tuple[StreamKey, bytes, bytes]]:
        """[((kind, port, source), body, ends), ...] in first-seen key order, body being the
        events joined by ", " and ends where each ends in it (native int64 bytes); then
        empty."""
        taken = []
        for key, events in self._groups.items():
            body, ends = joined(events)
            taken.append((key, body, array("q", ends).tobytes()))
        self._reset()
        return taken
