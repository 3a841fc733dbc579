"""Kinesis Data Streams records (--kinesis-stream): what the worker spools, without I/O.

One spool file holds one Kinesis record, so that it can be deleted as soon as that record got
its SequenceNumber::

    b"KDS1" | partition key length (2 bytes, big-endian) | partition key (UTF-8) | data

named ``record-<time>-<seq>.kds``. The data is one of:

* ``--kinesis-format cwl``: a gzip CloudWatch-Logs-style record, the very bytes a Firehose
  record has (records.py), so that consumers of CloudWatch Logs subscriptions work unchanged;
* ``--kinesis-format kpl``: a KPL aggregated record (kpl.py) with one user record per event::

      {"logGroup": g, "logStream": s, "id": "…", "timestamp": 1519247270240, "message": "…"}

  each gzipped on its own with ``--kinesis-compress``.

Partition keys (``--partition-key``): ``source``, the sender's address (the record's
logStream), so that every event of one sender lands on one shard, in order; ``group``, the
log group; ``random``, a fresh random key per Kinesis record, which spreads the load evenly
and keeps no order. An aggregated record only ever holds user records of its own partition
key: the KCL drops a whole aggregated record when one of its user records hashes to another
shard.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from isal import isal_zlib

from kinesyslog import kpl, records
from kinesyslog.constants import (
    GZIP_LEVEL,
    KINESIS_FORMATS,
    KINESIS_MAX_PARTITION_KEY_CHARS,
    KINESIS_MAX_RECORD_BYTES,
    PARTITION_KEY_MODES,
)
from kinesyslog.records import build_records

if TYPE_CHECKING:
    from typing_extensions import Buffer

SPOOL_MAGIC = b"KDS1"
_KEY_LENGTH_BYTES = 2
_GZIP_WBITS = 31
# The largest user record that fits alone in a Kinesis record under the longest partition key
# (UTF-8, up to 4 bytes a character), with the aggregation's framing.
_MAX_USER_RECORD_BYTES = (KINESIS_MAX_RECORD_BYTES - 4 * KINESIS_MAX_PARTITION_KEY_CHARS
                          - len(kpl.MAGIC) - kpl.DIGEST_SIZE - 32)
log = logging.getLogger("kinesyslog.records")

# What the worker hands over per stream: log group, log stream (the source address), the
# events' JSON joined by ", " and where each ends (EventBuffers.take()).
EventBatch = tuple[str, str, "Buffer", Sequence[int]]


def encode_spooled(partition_key: str, data: bytes) -> bytes:
    """The content of the spool file of one Kinesis record."""
    key = partition_key.encode()
    return b"".join((SPOOL_MAGIC, len(key).to_bytes(_KEY_LENGTH_BYTES, "big"), key, data))


def decode_spooled(content: bytes) -> tuple[str, bytes]:
    """(partition key, data) of a spool file's content; ValueError if it is not one that
    PutRecords would take."""
    if not content.startswith(SPOOL_MAGIC):
        raise ValueError("not a Kinesis spool record (bad magic bytes)")
    start = len(SPOOL_MAGIC) + _KEY_LENGTH_BYTES
    if len(content) < start:
        raise ValueError("a Kinesis spool record cut short in its header")
    key_end = start + int.from_bytes(content[len(SPOOL_MAGIC):start], "big")
    if len(content) < key_end:
        raise ValueError("a Kinesis spool record cut short in its partition key")
    try:
        partition_key = content[start:key_end].decode()
    except UnicodeDecodeError:
        raise ValueError("a partition key that is not UTF-8") from None
    if not 1 <= len(partition_key) <= KINESIS_MAX_PARTITION_KEY_CHARS:
        raise ValueError(f"a partition key of {len(partition_key)} characters; Kinesis takes "
                         f"1 to {KINESIS_MAX_PARTITION_KEY_CHARS}")
    data = content[key_end:]
    if not data:
        raise ValueError("a Kinesis record without data")
    if len(content) - start > KINESIS_MAX_RECORD_BYTES:
        raise ValueError(f"{len(content) - start} bytes with the partition key, over the "
                         f"{KINESIS_MAX_RECORD_BYTES} bytes of a Kinesis record")
    return partition_key, data


def random_key() -> str:
    return f"{random.getrandbits(128):032x}"


def partition_key(mode: str, log_group: str, log_stream: str) -> str:
    """The partition key of events of this log group and stream (a fresh one for random)."""
    if mode == "random":
        return random_key()
    key = log_group if mode == "group" else log_stream
    # Never longer than Kinesis allows (config.py bounds the group prefix; a source address is
    # far shorter), never empty.
    return key[:KINESIS_MAX_PARTITION_KEY_CHARS] or "-"


_HEADER_FIELD = {name: re.compile(rf'"{name}": ("(?:[^"\\]|\\.)*")'.encode())
                 for name in ("logGroup", "logStream")}
_HEADER_BYTES = 4096  # a record's header (owner, logGroup, logStream) is well within this


def cwl_partition_key(mode: str, record: bytes) -> str:
    """The partition key of a gzip CloudWatch-Logs-style record spooled for Firehose (left by
    a relay that ran with --stream), read from its header; a random one if it has none."""
    if mode != "random":
        try:
            header = isal_zlib.decompressobj(_GZIP_WBITS).decompress(record, _HEADER_BYTES)
        except isal_zlib.error:  # type: ignore[misc]  # an exception class the stubs miss
            header = b""
        found = {name: pattern.search(header) for name, pattern in _HEADER_FIELD.items()}
        if found["logGroup"] and found["logStream"]:
            return partition_key(mode, json.loads(found["logGroup"][1]),
                                 json.loads(found["logStream"][1]))
    return random_key()


class KeyLoad:
    """Bytes sent per partition key over the last ``window`` seconds: which key is hot."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._sent: deque[tuple[float, str, int]] = deque()
        self._bytes: Counter[str] = Counter()
        self._total = 0

    def add(self, now: float, key: str, size: int) -> None:
        self._sent.append((now, key, size))
        self._bytes[key] += size
        self._total += size
        self._forget(now)

    def busiest(self, now: float) -> tuple[str, float, float]:
        """(key, bytes per second, share of all bytes) of the busiest key; ("", 0, 0) if
        nothing was sent within the window."""
        self._forget(now)
        if not self._total:
            return "", 0.0, 0.0
        key, size = self._bytes.most_common(1)[0]
        return key, size / self.window, size / self._total

    def _forget(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.window:
            _, key, size = self._sent.popleft()
            self._total -= size
            self._bytes[key] -= size
            if not self._bytes[key]:
                del self._bytes[key]


def user_record_prefix(log_group: str, log_stream: str) -> bytes:
    """What goes before an event's own fields in its user record."""
    return (f'{{"logGroup": {json.dumps(log_group)}, '
            f'"logStream": {json.dumps(log_stream)}, ').encode()


def gzip(data: bytes) -> bytes:
    return isal_zlib.compress(data, GZIP_LEVEL, _GZIP_WBITS)


class RecordMaker:
    """Turns the worker's event batches into spool file contents, one per Kinesis record."""

    def __init__(self, owner: str, record_format: str, key_mode: str,
                 compress: bool) -> None:
        if record_format not in KINESIS_FORMATS:
            raise ValueError(f"unknown Kinesis record format {record_format!r}")
        if key_mode not in PARTITION_KEY_MODES:
            raise ValueError(f"unknown partition key mode {key_mode!r}")
        self.owner = owner
        self.record_format = record_format
        self.key_mode = key_mode
        self.compress = compress

    def make(self, batches: Iterable[EventBatch]) -> list[bytes]:
        if self.record_format == "cwl":
            return [encode_spooled(partition_key(self.key_mode, group, source), record)
                    for group, source, body, ends in batches
                    for record in build_records(self.owner, group, source, body, ends)]
        return [encode_spooled(record.partition_key, record.data)
                for record in self._aggregate(batches)]

    def _aggregate(self, batches: Iterable[EventBatch]) -> list[kpl.KinesisRecord]:
        """KPL records of every event, one aggregator per partition key (random keys: one
        aggregator, a new key for each record)."""
        aggregators: dict[str, kpl.Aggregator] = {}
        made: list[kpl.KinesisRecord] = []
        for group, source, body, ends in batches:
            user_records = self._user_records(user_record_prefix(group, source), body, ends)
            if self.key_mode == "random":
                aggregator = aggregators.setdefault("", kpl.Aggregator())
                key = aggregator.open_key or random_key()
                made += aggregator.add_all(key, user_records, new_key=random_key)
                continue
            key = partition_key(self.key_mode, group, source)
            if key not in aggregators:
                aggregators[key] = kpl.Aggregator()
            made += aggregators[key].add_all(key, user_records)
        for aggregator in aggregators.values():
            made += aggregator.flush()
        return made

    def _user_records(self, prefix: bytes, body: Buffer, ends: Sequence[int]
                      ) -> Iterator[bytes]:
        """Each event's user record: the prefix, then the event after its "{" (the prefix
        has one), gzipped with --kinesis-compress, shortened if it is too large."""
        view = memoryview(body)
        start = 0
        for end in ends:
            user_record = prefix + view[start + 1:end]
            start = end + len(records.SEPARATOR)
            if self.compress:
                user_record = gzip(user_record)
            if len(user_record) > _MAX_USER_RECORD_BYTES:
                user_record = self._shortened(user_record)
            yield user_record

    def _compressed(self, document: bytes) -> bytes:
        return gzip(document) if self.compress else document

    def _shortened(self, user_record: bytes) -> bytes:
        """The user record with its message cut until it fits in a Kinesis record alone (an
        event near --max-message-size's largest, JSON-escaped, can be several MiB)."""
        document = json.loads(isal_zlib.decompress(user_record, _GZIP_WBITS)
                              if self.compress else user_record)
        message: str = document["message"]
        original_length = len(message)
        while len(user_record) > _MAX_USER_RECORD_BYTES:
            if not message:
                raise ValueError("an event with an empty message does not fit in a Kinesis "
                                 "record")
            # The size is roughly proportional to the message length; always shorten.
            message = message[:min(len(message) - 1,
                                   len(message) * _MAX_USER_RECORD_BYTES // len(user_record))]
            document["message"] = message
            user_record = self._compressed(json.dumps(document).encode())
        records.truncated_events += 1
        log.warning("an event of %d characters does not fit in a %d-byte Kinesis record: its "
                    "message was cut to %d characters", original_length,
                    KINESIS_MAX_RECORD_BYTES, len(message))
        return user_record
