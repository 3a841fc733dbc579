"""Where the uploader delivers records: Firehose (PutRecordBatch), Kinesis Data Streams
(PutRecords) or a directory; and how each reads and checks a spool file."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from kinesyslog import metrics
from kinesyslog._fast.b64 import encode_into, encoded_length
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
    """A spooled record, checked and ready to send. Its data stays in the spool file until the
    sink sends it: a batch costs no memory while it waits (see RequestBody)."""

    path: Path
    data_size: int
    partition_key: str = ""  # Kinesis Data Streams only
    data_offset: int = 0  # where the data starts in the file

    @property
    def size(self) -> int:
        """What counts toward a call's size limit."""
        return self.data_size + len(self.partition_key.encode())


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
            with igzip.GzipFile(fileobj=io.BytesIO(data)) as member:
                while member.read(1 << 20):
                    pass
        except (OSError, EOFError, ValueError) as error:
            raise InvalidRecordError(f"a damaged record of kinesyslog 2.0.1: {error}") from None
    return data


class Spooled(NamedTuple):
    partition_key: str | None  # None: a gzip record file
    data: bytes
    data_offset: int  # where the data starts in the file


def load_spooled(path: Path) -> Spooled:
    """The partition key and data of a Kinesis spool file, or the data of a gzip record
    file."""
    content = read_spool_file(path)
    partition_key, data = decode_spool_file(path, content)
    return Spooled(partition_key, data, len(content) - len(data))


def decode_spool_file(path: Path, content: bytes) -> tuple[str | None, bytes]:
    """load_spooled() of content already read."""
    if path.name.endswith(SPOOL_KINESIS_SUFFIX):
        try:
            return decode_spooled(content)
        except ValueError as error:
            raise InvalidRecordError(str(error)) from None
    return None, check_gzip_record(path, content)


def read_record(path: Path) -> Spooled:
    """The gzip record in a spool file (a Firehose record, or the data of a Kinesis record
    in the cwl format); InvalidRecordError if there is none, OSError if unreadable."""
    spooled = load_spooled(path)
    if spooled.partition_key is None:
        return spooled  # checked already
    if not spooled.data.startswith(GZIP_MAGIC):
        raise InvalidRecordError(
            "a KPL aggregated record made for Kinesis Data Streams (--kinesis-format kpl); "
            "only --kinesis-stream can send it")
    check_gzip_record(path, spooled.data)
    return spooled


_FIRST_ENTRY = b'{"Data": "'
_NEXT_ENTRY = b', {"Data": "'
_BODY_END = b"]}"
_FIREHOSE_ENTRY_END = b'"}'
# Bytes of a spool file read and base64-encoded at a time: a multiple of 3, so that the
# chunks' base64 joins into the data's.
BASE64_CHUNK = 3 * 16384
# At most this many bytes per read(size) of a request body. botocore reads 1 MiB at a time to
# sign it; a new 1 MiB buffer per read left glibc's heap a megabyte or two larger for good
# (its threshold for giving large blocks their own memory maps rises after the first one is
# freed), up to 2 MB of the uploader's RSS. A shorter read is no end of the body: botocore
# and http.client read until read() returns nothing.
BODY_READ_LIMIT = 64 * 1024


def put_record_batch_head(stream: str) -> bytes:
    return b'{"DeliveryStreamName": ' + json.dumps(stream).encode() + b', "Records": ['


def put_records_head(stream: str) -> bytes:
    return b'{"StreamName": ' + json.dumps(stream).encode() + b', "Records": ['


def put_records_entry_end(partition_key: str) -> bytes:
    """What follows a PutRecords entry's data."""
    return b'", "PartitionKey": ' + json.dumps(partition_key).encode() + b"}"


class SpoolFileChangedError(OSError):
    """A spool file in a request body no longer holds what it held when it was added."""


@dataclass(frozen=True, slots=True)
class _FileData:
    """An entry's data: ``size`` bytes of an open spool file from ``offset`` on."""

    fd: int
    offset: int
    size: int


class RequestBody:
    """The JSON body of PutRecordBatch or PutRecords, as botocore would serialize it, read as
    a stream that is made while it is read: nothing of the batch is held in memory.

    botocore base64-encodes each record into a str, then json.dumps the whole request, which
    scans every base64 character for escapes: for 4 MiB of records that was half of the
    uploader's CPU. Base64 text never needs escaping, so the body is assembled from bytes:
    each record's data is read from its spool file and base64-encoded (kinesyslog/_fast/
    b64.pyx) a chunk at a time, when botocore reads the body to sign it and again when
    urllib3 reads it to send it. A call holds two chunks, not its 5.6 MB body.

    Each spool file is opened when its entry is added and read through that descriptor, so
    both reads see the same data; close() closes them. A file cut short in between makes
    read() raise SpoolFileChangedError, which fails the call.
    """

    __slots__ = ("_chunk", "_finished", "_length", "_pieces", "_position", "_starts", "_text",
                 "_text_view", "_window_data", "_window_end", "_window_start", "count")

    def __init__(self, head: bytes) -> None:
        self._pieces: list[bytes | _FileData] = [head]
        self._starts = [0]  # where each piece starts in the body
        self._length = len(head)
        self._position = 0
        self._chunk = memoryview(bytearray(BASE64_CHUNK))
        self._text = bytearray(encoded_length(BASE64_CHUNK))
        self._text_view = memoryview(self._text)
        # The text of data[start:end] of one entry, encoded last: see _read_data().
        self._window_data: _FileData | None = None
        self._window_start = self._window_end = 0
        self._finished = False
        self.count = 0

    def add_file(self, path: Path, offset: int, size: int, end: bytes) -> None:
        """Adds an entry whose data is the last ``size`` bytes of a spool file, from
        ``offset`` on. OSError if the file cannot be opened, InvalidRecordError if it is no
        longer ``offset + size`` bytes long; nothing is added then."""
        if self._finished:
            raise ValueError("the body is finished")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != offset + size:
                raise InvalidRecordError("the file changed since it was checked")
        except BaseException:
            os.close(fd)
            raise
        self._add(_NEXT_ENTRY if self.count else _FIRST_ENTRY)
        self._add(_FileData(fd, offset, size))
        self._add(end)
        self.count += 1

    def finish(self) -> RequestBody:
        """Ends the body; it can be read from now on."""
        if not self._finished:
            self._add(_BODY_END)
            self._finished = True
        return self

    def close(self) -> None:
        """Closes the spool files; the body cannot be read any more."""
        for piece in self._pieces:
            if isinstance(piece, _FileData):
                os.close(piece.fd)
        self._pieces = []
        self._starts = []

    def _add(self, piece: bytes | _FileData) -> None:
        self._pieces.append(piece)
        self._starts.append(self._length)
        self._length += (len(piece) if isinstance(piece, bytes)
                         else encoded_length(piece.size))

    # --- the file interface botocore (signing, retries) and urllib3 (sending) use ----------
    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        if base + position < 0:
            raise ValueError("negative position")
        self._position = base + position
        return self._position

    def read(self, size: int = -1) -> bytearray:
        if not self._finished:
            raise ValueError("the body is not finished")
        left = max(self._length - self._position, 0)
        size = left if size < 0 else min(size, left, BODY_READ_LIMIT)
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size:
            index = bisect_right(self._starts, self._position) - 1
            piece = self._pieces[index]
            inside = self._position - self._starts[index]
            if isinstance(piece, bytes):
                count = min(len(piece) - inside, size - filled)
                view[filled:filled + count] = piece[inside:inside + count]
            else:
                count = self._read_data(piece, inside, view[filled:])
            filled += count
            self._position += count
        return out

    def _read_data(self, data: _FileData, inside: int, out: memoryview) -> int:
        """Writes the base64 text of data from position ``inside`` on into out, as much as
        the text window holds; how many bytes. The window is one chunk of data, encoded:
        urllib3 reads 16 KiB at a time, a quarter of it."""
        if self._window_data is not data or not (
                self._window_start <= inside < self._window_end):
            start = 3 * (inside // 4)  # every 3 bytes of data are 4 of text
            count = min(BASE64_CHUNK, data.size - start)
            chunk = self._chunk[:count]
            got = 0
            while got < count:
                read = os.preadv(data.fd, [chunk[got:]], data.offset + start + got)
                if not read:
                    raise SpoolFileChangedError(errno.EIO, "a spool file was cut short while "
                                                "its record was being sent")
                got += read
            self._window_data = data
            self._window_start = 4 * (inside // 4)
            self._window_end = self._window_start + encode_into(chunk, self._text, 0)
        skip = inside - self._window_start
        written = min(len(out), self._window_end - inside)
        out[:written] = self._text_view[skip:skip + written]
        return written


def write_body(head: bytes, batch: Batch, ends: Sequence[bytes]) -> tuple[
        RequestBody | None, list[str | None]]:
    """The request body of the batch's records, each opened again from its spool file and
    followed by its entry of ``ends`` (None if none could be added; the caller closes it);
    and per record None if added, else why not (an errno name, or InvalidRecord): such a
    record is left out of the call and retried, when the uploader loads it again (and moves
    it to corrupt/ or forgets it)."""
    body = RequestBody(head)
    left_out: list[str | None] = []
    try:
        for record, end in zip(batch, ends):
            try:
                body.add_file(record.path, record.data_offset, record.data_size, end)
            except OSError as error:
                left_out.append(errno.errorcode.get(error.errno or 0, type(error).__name__))
                continue
            except InvalidRecordError:
                left_out.append("InvalidRecord")
                continue
            left_out.append(None)
    except BaseException:
        body.close()
        raise
    if not body.count:
        body.close()
        return None, left_out
    return body.finish(), left_out


NOTHING_READ = "no record of the batch could be read again from the spool"


def merge_results(left_out: list[str | None], sent: list[str | None]) -> list[str | None]:
    """Per record of the batch: why it was left out, else the call's result for it."""
    answers = iter(sent)
    return [code if code is not None else next(answers) for code in left_out]


class PrebuiltBody:
    """A request body built by the sink: botocore's hook between serializing a call and
    signing it puts it in place of the one serialized from placeholder records."""

    def __init__(self, client: Any, event: str) -> None:
        self.body: RequestBody | None = None
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
        _, data, offset = read_record(path)
        return Record(path, len(data), data_offset=offset)

    def send(self, batch: Batch) -> list[str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        body, left_out = write_body(put_record_batch_head(self.stream), batch,
                                    [_FIREHOSE_ENTRY_END] * len(batch))
        if body is None:
            self.last_error = NOTHING_READ
            return left_out
        sent = left_out.count(None)
        self._body.body = body
        try:
            response = self.client.put_record_batch(
                DeliveryStreamName=self.stream, Records=[{"Data": b""}] * sent)
        except (BotoCoreError, ClientError, OSError) as error:
            self.last_error = str(error)
            return merge_results(left_out, [error_code(error)] * sent)
        finally:
            self._body.body = None
            body.close()
        entries = response.get("RequestResponses") or []
        results: list[str | None] = []
        for index in range(sent):
            entry = entries[index] if index < len(entries) else {}
            if entry.get("RecordId"):
                results.append(None)
            else:
                results.append(entry.get("ErrorCode") or "MissingRecordId")
                self.last_error = entry.get("ErrorMessage") or "no RecordId in the response"
        return merge_results(left_out, results)


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
        partition_key, data, offset = load_spooled(path)
        if partition_key is None:  # a record spooled for Firehose: the same as a cwl record
            partition_key = cwl_partition_key(self.key_mode, data)
        return Record(path, len(data), partition_key, offset)

    def send(self, batch: Batch) -> list[str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        now = time.monotonic()
        for record in batch:
            self.key_load.add(now, record.partition_key, record.size)
        self._publish_key_load(now)
        body, left_out = write_body(
            put_records_head(self.stream), batch,
            [put_records_entry_end(record.partition_key) for record in batch])
        if body is None:
            self.last_error = NOTHING_READ
            return left_out
        sent = [record for record, code in zip(batch, left_out) if code is None]
        self._body.body = body
        placeholder = {"Data": b"", "PartitionKey": "-"}
        try:
            response = self.client.put_records(StreamName=self.stream,
                                               Records=[placeholder] * len(sent))
        except (BotoCoreError, ClientError, OSError) as error:
            self.last_error = str(error)
            return merge_results(left_out, [error_code(error)] * len(sent))
        finally:
            self._body.body = None
            body.close()
        entries = response.get("Records") or []
        results: list[str | None] = []
        shard_records: Counter[str] = Counter()
        shard_bytes: Counter[str] = Counter()
        for index, record in enumerate(sent):
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
        return merge_results(left_out, results)

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
        return Record(path, len(content))

    def send(self, batch: Batch) -> list[str | None]:
        results: list[str | None] = []
        for record in batch:
            try:
                self._move(record.path)
            except OSError as error:
                self.last_error = f"{record.path}: {error}"
                results.append(errno.errorcode.get(error.errno or 0, type(error).__name__))
            else:
                results.append(None)
        try:
            fsync_directory(self.directory)
        except OSError as error:
            log.warning("could not fsync --output-dir %s: %s", self.directory, error)
        return results

    def _move(self, path: Path) -> None:
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
            with open(path, "rb") as source, open(temporary, "wb") as copy:
                shutil.copyfileobj(source, copy)
                copy.flush()
                os.fsync(copy.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)
        os.unlink(path)
