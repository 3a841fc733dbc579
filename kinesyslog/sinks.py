"""Where the uploader delivers records: Firehose (PutRecordBatch), Kinesis Data Streams
(PutRecords) or a directory; and how each reads and checks a spool file."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from binascii import b2a_base64
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from kinesyslog import metrics
from kinesyslog.aws import error_code
from kinesyslog.constants import (
    FIREHOSE_MAX_BATCH_BYTES,
    FIREHOSE_MAX_BATCH_RECORDS,
    FIREHOSE_MAX_RECORD_BYTES,
    GZIP_MAGIC,
    GZIP_MIN_MEMBER_BYTES,
    KINESIS_MAX_BATCH_BYTES,
    KINESIS_MAX_BATCH_RECORDS,
    KINESIS_MAX_RECORD_BYTES,
    SPOOL_KINESIS_SUFFIX,
    SPOOL_LEGACY_PREFIX,
    SPOOL_TEMP_PREFIX,
)
from kinesyslog.kinesis import KeyLoad, cwl_partition_key, decode_spooled
from kinesyslog.spool import fsync_directory

log = logging.getLogger("kinesyslog.uploader")
THROUGHPUT_EXCEEDED = "ProvisionedThroughputExceededException"
HOT_KEY_GAUGE_INTERVAL = 1.0  # seconds between updates of the hot-key gauges


@dataclass(frozen=True, slots=True)
class Record:
    """A spooled record, ready to send."""

    path: Path
    data: bytes
    partition_key: str = ""  # Kinesis Data Streams only

    @property
    def size(self) -> int:
        """What counts toward a call's size limit."""
        return len(self.data) + len(self.partition_key.encode())


Batch = Sequence[Record]


class InvalidRecordError(Exception):
    """A spool file that cannot be sent as a record."""


class Sink(Protocol):
    destination: str  # the metric label: firehose, kinesis or directory
    name: str  # for the log
    consumes_files: bool  # True: a delivered record's spool file is gone already
    max_batch_records: int
    max_batch_bytes: int

    @property
    def last_error(self) -> str:
        """What went wrong last, for the log."""
        ...

    def load(self, path: Path) -> Record:
        """The spool file's record; InvalidRecordError if it cannot be sent, OSError if it
        cannot be read."""
        ...

    def send(self, batch: Batch) -> list[str | None]:
        """Per record: None if delivered, else an error code."""
        ...


def read_spool_file(path: Path) -> bytes:
    """A spool file's content, refused unread if it is larger than any record can be."""
    largest = KINESIS_MAX_RECORD_BYTES + 16  # a Kinesis spool file's header is 6 bytes
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > largest:
            raise InvalidRecordError(f"{size} bytes, larger than any record")
        content = file.read(largest + 1)
    if len(content) > largest:
        raise InvalidRecordError("larger than any record")
    return content


def check_gzip_record(path: Path, data: bytes) -> bytes:
    """``data`` if it is a gzip record Firehose takes; InvalidRecordError if not."""
    if len(data) > FIREHOSE_MAX_RECORD_BYTES:
        raise InvalidRecordError(
            f"{len(data)} bytes, over the {FIREHOSE_MAX_RECORD_BYTES} bytes of a Firehose record")
    if len(data) < GZIP_MIN_MEMBER_BYTES:
        raise InvalidRecordError(f"{len(data)} bytes, too short for a gzip record")
    if not data.startswith(GZIP_MAGIC):
        raise InvalidRecordError("not a gzip record (bad magic bytes)")
    if path.name.startswith(SPOOL_LEGACY_PREFIX):
        # 2.0.1 did not fsync its files: after a crash one may be cut short.
        from isal import igzip

        try:
            with igzip.GzipFile(fileobj=BytesIO(data)) as member:
                while member.read(1 << 20):
                    pass
        except (OSError, EOFError, ValueError) as error:
            raise InvalidRecordError(f"a damaged record of kinesyslog 2.0.1: {error}") from None
    return data


def load_spooled(path: Path) -> tuple[str | None, bytes]:
    """(partition key, data) of a Kinesis spool file, (None, data) of a gzip record file."""
    return decode_spool_file(path, read_spool_file(path))


def decode_spool_file(path: Path, content: bytes) -> tuple[str | None, bytes]:
    """load_spooled() of content already read."""
    if path.name.endswith(SPOOL_KINESIS_SUFFIX):
        try:
            return decode_spooled(content)
        except ValueError as error:
            raise InvalidRecordError(str(error)) from None
    return None, check_gzip_record(path, content)


def read_record(path: Path) -> bytes:
    """The gzip record in a spool file (a Firehose record, or the data of a Kinesis record
    in the cwl format); InvalidRecordError if there is none, OSError if unreadable."""
    partition_key, data = load_spooled(path)
    if partition_key is None:
        return data  # checked already
    if not data.startswith(GZIP_MAGIC):
        raise InvalidRecordError(
            "a KPL aggregated record made for Kinesis Data Streams (--kinesis-format kpl); "
            "only --kinesis-stream can send it")
    return check_gzip_record(path, data)


def put_record_batch_body(stream: str, records: Sequence[bytes]) -> bytearray:
    """The JSON request body of PutRecordBatch, as botocore would serialize it.

    botocore base64-encodes each record into a str, then json.dumps the whole request, which
    scans every base64 character for escapes: for 4 MiB of records that was half of the
    uploader's CPU. Base64 text never needs escaping, so the body is assembled from bytes.
    """
    head = b'{"DeliveryStreamName": ' + json.dumps(stream).encode() + b', "Records": ['
    return _body_of(head, [(b', {"Data": "' if index else b'{"Data": "', record, b'"}')
                           for index, record in enumerate(records)])


def _body_of(head: bytes, entries: Sequence[tuple[bytes, bytes, bytes]]) -> bytearray:
    """head, then before + base64(data) + after for each (before, data, after), then "]}",
    written into one buffer of the exact size: the encoded records exist once (pieces joined
    would be held twice, 5 MB more at the uploader's peak)."""
    size = len(head) + 2 + sum(len(before) + 4 * ((len(data) + 2) // 3) + len(after)
                               for before, data, after in entries)
    body = bytearray(size)
    view = memoryview(body)
    view[:len(head)] = head
    at = len(head)
    for before, data, after in entries:
        for piece in (before, b2a_base64(data, newline=False), after):
            view[at:at + len(piece)] = piece
            at += len(piece)
    view[at:] = b"]}"
    return body


class PrebuiltBody:
    """A request body built by the sink: botocore's hook between serializing a call and
    signing it puts it in place of the one serialized from placeholder records."""

    def __init__(self, client: Any, event: str) -> None:
        self.body: bytearray | None = None
        client.meta.events.register(event, self._put)

    def _put(self, params: dict[str, Any], **_: Any) -> None:
        if self.body is not None:
            params["body"] = self.body


class FirehoseSink:
    destination = "firehose"
    name = "Firehose"
    consumes_files = False
    max_batch_records = FIREHOSE_MAX_BATCH_RECORDS
    max_batch_bytes = FIREHOSE_MAX_BATCH_BYTES

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.last_error = ""
        self._body = PrebuiltBody(client, "before-call.firehose.PutRecordBatch")

    def load(self, path: Path) -> Record:
        return Record(path, read_record(path))

    def send(self, batch: Batch) -> list[str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        self._body.body = put_record_batch_body(self.stream, [record.data for record in batch])
        try:
            response = self.client.put_record_batch(
                DeliveryStreamName=self.stream, Records=[{"Data": b""}] * len(batch))
        except (BotoCoreError, ClientError, OSError) as error:
            self.last_error = str(error)
            return [error_code(error)] * len(batch)
        finally:
            self._body.body = None
        entries = response.get("RequestResponses") or []
        results: list[str | None] = []
        for index in range(len(batch)):
            entry = entries[index] if index < len(entries) else {}
            if entry.get("RecordId"):
                results.append(None)
            else:
                results.append(entry.get("ErrorCode") or "MissingRecordId")
                self.last_error = entry.get("ErrorMessage") or "no RecordId in the response"
        return results


def put_records_body(stream: str, batch: Batch) -> bytearray:
    """The JSON request body of Kinesis PutRecords, as botocore would serialize it (see
    put_record_batch_body)."""
    head = b'{"StreamName": ' + json.dumps(stream).encode() + b', "Records": ['
    return _body_of(head, [
        (b', {"Data": "' if index else b'{"Data": "', record.data,
         b'", "PartitionKey": ' + json.dumps(record.partition_key).encode() + b"}")
        for index, record in enumerate(batch)])


class KinesisSink:
    """Kinesis Data Streams: PutRecords, each record under its own partition key. Counts what
    each shard took, and tracks the bytes per key to name a hot one."""

    destination = "kinesis"
    name = "Kinesis"
    consumes_files = False
    max_batch_records = KINESIS_MAX_BATCH_RECORDS
    max_batch_bytes = KINESIS_MAX_BATCH_BYTES

    def __init__(self, client: Any, stream: str, key_mode: str) -> None:
        self.client = client
        self.stream = stream
        self.key_mode = key_mode
        self.last_error = ""
        self.key_load = KeyLoad()
        self._gauges_at = 0.0
        self._body = PrebuiltBody(client, "before-call.kinesis.PutRecords")

    def load(self, path: Path) -> Record:
        partition_key, data = load_spooled(path)
        if partition_key is None:  # a record spooled for Firehose: the same as a cwl record
            partition_key = cwl_partition_key(self.key_mode, data)
        return Record(path, data, partition_key)

    def send(self, batch: Batch) -> list[str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        now = time.monotonic()
        for record in batch:
            self.key_load.add(now, record.partition_key, record.size)
        self._publish_key_load(now)
        self._body.body = put_records_body(self.stream, batch)
        placeholder = {"Data": b"", "PartitionKey": "-"}
        try:
            response = self.client.put_records(StreamName=self.stream,
                                               Records=[placeholder] * len(batch))
        except (BotoCoreError, ClientError, OSError) as error:
            self.last_error = str(error)
            return [error_code(error)] * len(batch)
        finally:
            self._body.body = None
        entries = response.get("Records") or []
        results: list[str | None] = []
        shard_records: Counter[str] = Counter()
        shard_bytes: Counter[str] = Counter()
        for index, record in enumerate(batch):
            entry = entries[index] if index < len(entries) else {}
            if entry.get("SequenceNumber"):
                results.append(None)
                shard = str(entry.get("ShardId") or "unknown")
                shard_records[shard] += 1
                shard_bytes[shard] += record.size
            else:
                results.append(entry.get("ErrorCode") or "MissingSequenceNumber")
                self.last_error = entry.get("ErrorMessage") or "no SequenceNumber in the response"
        if THROUGHPUT_EXCEEDED in results:
            self.last_error += self._hot_key_text(now)
        for shard, count in shard_records.items():
            metrics.KINESIS_SHARD_RECORDS.labels(shard).inc(count)
            metrics.KINESIS_SHARD_BYTES.labels(shard).inc(shard_bytes[shard])
        return results

    def _publish_key_load(self, now: float) -> None:
        if now - self._gauges_at < HOT_KEY_GAUGE_INTERVAL:
            return
        self._gauges_at = now
        _, rate, share = self.key_load.busiest(now)
        metrics.KINESIS_HOT_KEY_SHARE.set(share)
        metrics.KINESIS_HOT_KEY_BYTES.set(rate)

    def _hot_key_text(self, now: float) -> str:
        key, rate, share = self.key_load.busiest(now)
        if not key:
            return ""
        return (f"; the busiest partition key, {key!r}, carried {rate / 1024:.0f} KiB/s "
                f"({share:.0%} of the bytes) over the last {self.key_load.window:.0f} s: a "
                "shard takes 1 MiB/s and 1,000 records/s (consider --partition-key random or "
                "more shards)")


class DirectorySink:
    """--output-dir: each record file is moved into the directory, atomically."""

    destination = "directory"
    name = "--output-dir"
    consumes_files = True
    max_batch_records = FIREHOSE_MAX_BATCH_RECORDS
    max_batch_bytes = FIREHOSE_MAX_BATCH_BYTES

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.last_error = ""

    def load(self, path: Path) -> Record:
        content = read_spool_file(path)
        decode_spool_file(path, content)  # checked; the file is moved as it is
        return Record(path, content)

    def send(self, batch: Batch) -> list[str | None]:
        results: list[str | None] = []
        for record in batch:
            path, data = record.path, record.data
            try:
                self._move(path, data)
            except OSError as error:
                self.last_error = f"{path}: {error}"
                results.append(errno.errorcode.get(error.errno or 0, type(error).__name__))
            else:
                results.append(None)
        try:
            fsync_directory(self.directory)
        except OSError as error:
            log.warning("could not fsync --output-dir %s: %s", self.directory, error)
        return results

    def _move(self, path: Path, data: bytes) -> None:
        target = self.directory / path.name
        try:
            os.replace(path, target)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
        # Another file system: write a copy under a temporary name, then rename it.
        temporary = self.directory / f"{SPOOL_TEMP_PREFIX}{os.getpid()}-{path.name}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)
        os.unlink(path)
