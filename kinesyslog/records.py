"""Firehose records: the CloudWatch-Logs-style JSON document, gzipped, ≤ 1,024,000 bytes.

A record is one gzip member holding exactly what ``json.dumps`` gives for::

    {"owner": o, "logGroup": g, "logStream": s, "subscriptionFilters": [g],
     "messageType": "DATA_MESSAGE", "logEvents": [e1, e2, …]}

The events arrive already JSON-encoded, so the document is assembled from bytes. Every
record's compressed size is measured; a list of events that compresses too big is split along
event boundaries, and a single event too big on its own has its message shortened.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from isal import isal_zlib

from kinesyslog.constants import FIREHOSE_MAX_RECORD_BYTES, GZIP_LEVEL, MESSAGE_TYPE

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

log = logging.getLogger("kinesyslog.records")

SEPARATOR = b", "
_TRAILER = b"]}"
_GZIP_WBITS = 31  # a gzip container

# Events whose message was shortened to fit in a record, since the process started.
truncated_events = 0


def encode_record_header(owner: str, log_group: str, log_stream: str) -> bytes:
    """The record's JSON up to and including the ``[`` that opens ``logEvents``."""
    group = json.dumps(log_group)
    return (
        f'{{"owner": {json.dumps(owner)}, "logGroup": {group}, '
        f'"logStream": {json.dumps(log_stream)}, "subscriptionFilters": [{group}], '
        f'"messageType": {json.dumps(MESSAGE_TYPE)}, "logEvents": ['
    ).encode()


def build_records(owner: str, log_group: str, log_stream: str, body: Buffer,
                  ends: Sequence[int]) -> list[bytes]:
    """Gzip records holding the events in order, none over FIREHOSE_MAX_RECORD_BYTES.

    ``body`` is the events' JSON joined by ", " and ``ends[i]`` where event i ends in it
    (EventBuffers.take() gives both). Shortened events are counted in the module attribute
    ``truncated_events``.
    """
    if not ends:
        return []
    header = encode_record_header(owner, log_group, log_stream)
    records: list[bytes] = []
    _build(header, memoryview(body), ends, 0, len(ends), records)
    return records


def joined(events: list[bytes]) -> tuple[bytes, list[int]]:
    """(body, ends) of a list of encoded events, as build_records() takes them."""
    body = SEPARATOR.join(events)
    ends = [end - len(SEPARATOR)
            for end in accumulate(len(event) + len(SEPARATOR) for event in events)]
    return body, ends


def events_of(body: Buffer, ends: Sequence[int]) -> list[bytes]:
    """The encoded events in (body, ends): the inverse of joined()."""
    view = memoryview(body)
    return [bytes(view[_start(ends, i):ends[i]]) for i in range(len(ends))]


def _start(ends: Sequence[int], first: int) -> int:
    """Where event ``first`` begins in the body."""
    return ends[first - 1] + len(SEPARATOR) if first else 0


def _compress(header: bytes, events: memoryview | bytes) -> bytes:
    """The gzip member of header + events + trailer, compressed in place (no joined copy)."""
    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, _GZIP_WBITS)
    return b"".join((compressor.compress(header), compressor.compress(events),
                     compressor.compress(_TRAILER), compressor.flush()))


def _build(header: bytes, body: memoryview, ends: Sequence[int], first: int, stop: int,
           out: list[bytes]) -> None:
    """Records of events first..stop-1."""
    record = _compress(header, body[_start(ends, first):ends[stop - 1]])
    if len(record) <= FIREHOSE_MAX_RECORD_BYTES:
        out.append(record)
    elif stop - first == 1:
        out.append(_truncate(header, bytes(body[_start(ends, first):ends[first]]), len(record)))
    else:
        parts = -(-len(record) // FIREHOSE_MAX_RECORD_BYTES)  # ceil
        cuts = _balanced_split(ends, first, stop, max(2, min(parts, stop - first)))
        for start, end in zip(cuts, cuts[1:]):
            _build(header, body, ends, start, end, out)


def _balanced_split(ends: Sequence[int], first: int, stop: int, parts: int) -> list[int]:
    """Cuts events first..stop-1 into ``parts`` non-empty runs of about equal size: the
    indexes where the runs start, then ``stop``. Sizes count each event with a separator."""
    base = _start(ends, first)
    # Bytes up to and including event first+i, each event with its separator.
    size = [ends[i] + len(SEPARATOR) - base for i in range(first, stop)]
    total = size[-1]
    count = stop - first
    cuts = [0]
    for k in range(1, parts):
        target = total * k / parts
        i = bisect_left(size, target)  # the event during which the target size is reached
        # Cut before or after that event, whichever is closer to the target.
        cut = i + 1 if size[i] - target <= target - (size[i - 1] if i else 0) else i
        # Leave at least one event for this run and for each run still to come.
        cut = max(cuts[-1] + 1, min(cut, count - (parts - k)))
        cuts.append(cut)
    cuts.append(count)
    return [first + cut for cut in cuts]


def _truncate(header: bytes, event: bytes, size: int) -> bytes:
    """The record of ``event`` alone, its message cut until the record fits."""
    global truncated_events
    fields = json.loads(event)
    message: str = fields["message"]
    original_length = len(message)
    record = b""
    while size > FIREHOSE_MAX_RECORD_BYTES:
        if not message:
            raise ValueError("a record with an empty message does not fit in a Firehose record")
        # The size is roughly proportional to the message length; always shorten.
        message = message[: min(len(message) - 1, len(message) * FIREHOSE_MAX_RECORD_BYTES // size)]
        fields["message"] = message
        record = _compress(header, json.dumps(fields).encode())
        size = len(record)
    truncated_events += 1
    log.warning(
        "an event of %d characters does not fit in a %d-byte Firehose record: its message "
        "was cut to %d characters", original_length, FIREHOSE_MAX_RECORD_BYTES, len(message),
    )
    return record
