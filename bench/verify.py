"""Checking what a system delivered against what was sent: every message once and unchanged.

Our relay's records (gzip members, each a CloudWatch Logs subscription document, as files in
--output-dir or concatenated in the S3 objects that Firehose, here moto, writes; or Kinesis
records read back from a data stream: such a gzip record, or a KPL aggregated record of
event JSON user records) and rsyslog's output file (one line per message) are checked the
same way: each event's sequence number (seq="N" in the structured data, seq=N in a GELF
short_message) must be new and its text must be exactly what was sent."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kinesyslog.constants import FIREHOSE_MAX_RECORD_BYTES, KINESIS_MAX_RECORD_BYTES
from kinesyslog.kpl import MAGIC as KPL_MAGIC
from kinesyslog.kpl import deaggregate

try:
    from isal import isal_zlib as inflate_lib
except ImportError:  # the standard zlib decodes the same, only slower
    inflate_lib = zlib  # type: ignore[misc]

DELIVERED_FRACTION = 0.95  # t95: when this fraction of the messages was delivered
# RFC 5424 section 6: SD-ID "name@<private enterprise number>"; 32473 is reserved for
# documentation (RFC 5612). The sequence number in it is how loss is counted.
SD_ID = "bench@32473"
SEQ_RE = re.compile(r'\[bench@32473 seq="(\d+)"\]')
# GELF messages carry it at the start of short_message, zero-padded so all have one length.
GELF_SEQ_RE = re.compile(r'"short_message":"seq=(\d+) ')
GELF_SEQ_DIGITS = 7


def expected_timestamp_ms(seq: int, base_second: int) -> int:
    return (base_second + seq // 1000) * 1000 + seq % 1000


def gzip_members(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(compressed size, content) of each concatenated gzip member (RFC 1952 2.2); the same
    decoding as tests/e2e/relay_process.decode_records, plus each record's size."""
    while data:
        inflater = inflate_lib.decompressobj(16 + zlib.MAX_WBITS)
        content = inflater.decompress(data) + inflater.flush()
        if not inflater.eof:
            raise ValueError("truncated gzip member")
        yield len(data) - len(inflater.unused_data), content
        data = inflater.unused_data


@dataclass
class Tally:
    events: int = 0
    distinct: int = 0
    duplicates: int = 0
    foreign: int = 0  # events without a sequence number of this run
    corrupt: int = 0  # right sequence number, different text
    bad_timestamps: int = 0
    misordered: int = 0  # later than a higher number of the same connection (in one record)
    records: int | None = 0  # None: the system writes no records (rsyslog)
    record_bytes: int = 0
    max_record_bytes: int = 0
    oversize_records: int = 0
    wrong_group: int = 0  # records (KPL: user records) whose logGroup is not .../<type>/<port>
    bad_files: list[str] = field(default_factory=list)
    newest_mtime: float = 0.0  # when the last delivery happened (wall clock)
    t95_mtime: float | None = None


class Checker:
    """Counts events by sequence number; knows the messages that were sent."""

    def __init__(self, messages: list[bytes], connections: int, gelf: bool,
                 base_second: int) -> None:
        self.messages = messages
        self.count = len(messages)
        self.per_connection = -(-self.count // connections)
        self.seq_re = GELF_SEQ_RE if gelf else SEQ_RE
        self.base_second = base_second
        self.seen = bytearray(self.count)
        self.tally = Tally()
        self._deliveries: list[tuple[float, int]] = []  # (when, new distinct events)

    def event(self, message: str, last: dict[int, int], timestamp_ms: int | None = None,
              ) -> None:
        """One delivered event; last holds each connection's highest number so far (in
        the unit whose order is checked)."""
        tally = self.tally
        tally.events += 1
        match = self.seq_re.search(message)
        seq = int(match[1]) if match else -1
        if not 0 <= seq < self.count:
            tally.foreign += 1
            return
        if self.seen[seq]:
            tally.duplicates += 1
        else:
            self.seen[seq] = 1
            tally.distinct += 1
        tally.corrupt += message.encode() != self.messages[seq]
        if timestamp_ms is not None:
            tally.bad_timestamps += timestamp_ms != expected_timestamp_ms(seq, self.base_second)
        conn = seq // self.per_connection
        tally.misordered += seq < last.get(conn, -1)
        last[conn] = seq

    def delivered(self, when: float, new: int) -> None:
        self.tally.newest_mtime = max(self.tally.newest_mtime, when)
        self._deliveries.append((when, new))

    def finish(self) -> Tally:
        total = 0
        for when, new in sorted(self._deliveries):
            total += new
            if total >= DELIVERED_FRACTION * self.count:
                self.tally.t95_mtime = when
                break
        return self.tally


class RecordChecker(Checker):
    """Our relay's gzip records: files in --output-dir (or the spool), or S3 objects."""

    def __init__(self, messages: list[bytes], connections: int, gelf: bool, base_second: int,
                 group_suffix: str | None) -> None:
        super().__init__(messages, connections, gelf, base_second)
        self.group_suffix = group_suffix  # None: not checked (kinesyslog 2.x)

    def feed(self, name: str, data: bytes, when: float) -> None:
        """One file or S3 object: concatenated records, delivered at when."""
        tally = self.tally
        before = tally.distinct
        try:
            for size, member in gzip_members(data):
                self.record(size, FIREHOSE_MAX_RECORD_BYTES)
                self.document(json.loads(member))
        except (ValueError, KeyError, TypeError, zlib.error) as error:
            tally.bad_files.append(f"{name}: {error!r}")
        self.delivered(when, tally.distinct - before)

    def record(self, size: int, limit: int) -> None:
        tally = self.tally
        assert tally.records is not None
        tally.records += 1
        tally.record_bytes += size
        tally.max_record_bytes = max(tally.max_record_bytes, size)
        tally.oversize_records += size > limit

    def group_ok(self, group: str) -> bool:
        return self.group_suffix is None or group.endswith(self.group_suffix)

    def document(self, document: dict[str, Any]) -> None:
        """One CloudWatch-Logs-style record's document; order is checked within it."""
        self.tally.wrong_group += not self.group_ok(document["logGroup"])
        last: dict[int, int] = {}
        for event in document["logEvents"]:
            self.event(event["message"], last, event["timestamp"])


class StreamChecker(RecordChecker):
    """Our relay's Kinesis records, as GetRecords returns them: with --kinesis-format cwl
    each one gzip CloudWatch-Logs-style record (one gzip member, the bytes a Firehose record
    has); with kpl a KPL aggregated record whose user records are event JSON documents
    {"logGroup", "logStream", "id", "timestamp", "message"}, each gzipped with
    --kinesis-compress. A record's size is its data plus its partition key, as Kinesis
    counts it against its 1 MiB."""

    def __init__(self, messages: list[bytes], connections: int, gelf: bool, base_second: int,
                 group_suffix: str, record_format: str, compressed: bool) -> None:
        super().__init__(messages, connections, gelf, base_second, group_suffix)
        self.record_format = record_format
        self.compressed = compressed

    def feed_record(self, name: str, partition_key: str, data: bytes, when: float) -> None:
        """One Kinesis record, which arrived at when."""
        tally = self.tally
        before = tally.distinct
        self.record(len(data) + len(partition_key.encode()), KINESIS_MAX_RECORD_BYTES)
        try:
            if self.record_format == "cwl":
                members = list(gzip_members(data))
                if len(members) != 1:
                    raise ValueError(f"{len(members)} gzip members in one Kinesis record")
                self.document(json.loads(members[0][1]))
            else:
                self.aggregated(partition_key, data)
        except (ValueError, KeyError, TypeError, zlib.error) as error:
            tally.bad_files.append(f"{name}: {error!r}")
        self.delivered(when, tally.distinct - before)

    def aggregated(self, partition_key: str, data: bytes) -> None:
        """A KPL record's events; order is checked within it."""
        if not data.startswith(KPL_MAGIC):
            raise ValueError("not a KPL aggregated record")
        last: dict[int, int] = {}
        for _, user_record in deaggregate(partition_key, data):
            if self.compressed:
                user_record = inflate_lib.decompress(user_record, 16 + zlib.MAX_WBITS)
            event = json.loads(user_record)
            self.tally.wrong_group += not self.group_ok(event["logGroup"])
            self.event(event["message"], last, event["timestamp"])


class LineChecker(Checker):
    """rsyslog's output file: one message per line, as the raw message or as a JSON object
    {"timestamp": RFC 3339, "message": raw message} (--rsyslog-template json)."""

    def feed_file(self, name: str, data: bytes, json_lines: bool) -> None:
        self.tally.records = None
        last: dict[int, int] = {}  # order is checked over the whole file
        lines = data.split(b"\n")
        if lines[-1]:
            self.tally.bad_files.append(f"{name}: the last line has no LF")
        for number, line in enumerate(lines[:-1], 1):
            try:
                if not json_lines:
                    self.event(line.decode("utf-8"), last)
                    continue
                document = json.loads(line)
                moment = datetime.fromisoformat(document["timestamp"])
                self.event(document["message"], last, round(moment.timestamp() * 1000))
            except (ValueError, KeyError, TypeError) as error:
                self.tally.bad_files.append(f"{name} line {number}: {error!r}")
                if len(self.tally.bad_files) > 10:
                    self.tally.bad_files.append(f"{name}: stopped reading")
                    break
