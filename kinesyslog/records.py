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
from itertools import accumulate

from isal import isal_zlib

from kinesyslog.constants import FIREHOSE_MAX_RECORD_BYTES, GZIP_LEVEL, MESSAGE_TYPE

log = logging.getLogger("kinesyslog.records")

_SEPARATOR = b", "
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


def build_records(owner: str, log_group: str, log_stream: str, events: list[bytes]) -> list[bytes]:
    """Gzip records holding ``events`` in order, none over FIREHOSE_MAX_RECORD_BYTES.

    Shortened events are counted in the module attribute ``truncated_events``.
    """
    if not events:
        return []
    header = encode_record_header(owner, log_group, log_stream)
    records: list[bytes] = []
    _build(header, events, records)
    return records


def _compress(header: bytes, events: list[bytes]) -> bytes:
    document = b"".join((header, _SEPARATOR.join(events), _TRAILER))
    return isal_zlib.compress(document, GZIP_LEVEL, _GZIP_WBITS)


def _build(header: bytes, events: list[bytes], out: list[bytes]) -> None:
    record = _compress(header, events)
    if len(record) <= FIREHOSE_MAX_RECORD_BYTES:
        out.append(record)
    elif len(events) == 1:
        out.append(_truncate(header, events[0], len(record)))
    else:
        parts = -(-len(record) // FIREHOSE_MAX_RECORD_BYTES)  # ceil
        for part in _balanced_split(events, max(2, min(parts, len(events)))):
            _build(header, part, out)


def _balanced_split(events: list[bytes], parts: int) -> list[list[bytes]]:
    """Cuts ``events`` into ``parts`` non-empty runs of about equal uncompressed size."""
    ends = list(accumulate(len(event) + len(_SEPARATOR) for event in events))
    total = ends[-1]
    cuts = [0]
    for k in range(1, parts):
        target = total * k / parts
        i = bisect_left(ends, target)  # the event during which the target size is reached
        # Cut before or after that event, whichever is closer to the target.
        cut = i + 1 if ends[i] - target <= target - (ends[i - 1] if i else 0) else i
        # Leave at least one event for this run and for each run still to come.
        cut = max(cuts[-1] + 1, min(cut, len(events) - (parts - k)))
        cuts.append(cut)
    cuts.append(len(events))
    return [events[start:end] for start, end in zip(cuts, cuts[1:])]


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
        record = _compress(header, [json.dumps(fields).encode()])
        size = len(record)
    truncated_events += 1
    log.warning(
        "an event of %d characters does not fit in a %d-byte Firehose record: its message "
        "was cut to %d characters", original_length, FIREHOSE_MAX_RECORD_BYTES, len(message),
    )
    return record
