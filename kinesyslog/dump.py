"""`kinesyslog dump`: print the events of records in files, directories, S3 prefixes and Kinesis
data streams.

A record is one gzip member holding one JSON document (records.py). Sources hold records
back to back: an S3 object written by Firehose (one PutRecordBatch's records concatenated),
a spool file (``record-*.gz``, or 2.0.1's ``firehose_event-*``), an ``--output-dir`` file.
Also accepted: a newline after a member (Firehose's AppendDelimiterToRecord), and an object
gzipped once more by Firehose's own S3 compression.

Kinesis records (kinesis.py) come from ``kinesis://STREAM``, read from every shard's
TRIM_HORIZON (parents before the children they were split or merged into) until each shard is
caught up, or from Kinesis spool files (``record-*.kds``, or any file that starts with their
magic bytes). A record's data is a KPL aggregated record, split into its user records, or a
plain record; each user record, or plain record, is one event's JSON (``{"logGroup",
"logStream", "id", "timestamp", "message"}``), gzipped or not, or a gzip CloudWatch-Logs-style
record as above. A stream is read for at most ``max_records`` Kinesis records (then a note on
``err`` says so) and ``timeout`` seconds (then an error names the shards not read to the end).

Output: one message per line, written as it is, so a message that contains a newline spans
several lines (``--json`` keeps every event on one line); or with ``as_json`` one JSON object
per line: ``{"logGroup", "logStream", "id", "timestamp", "message"}`` in that order.

A source that cannot be read or decoded gets one error line on ``err`` naming it (and where
in it the problem is); the events before the problem have been printed, the rest of that
source is skipped, the other sources are still dumped, and the exit status is 1. In a stream,
the source of an error is one Kinesis record (stream, shard and sequence number) or one shard:
the stream's other records are still dumped.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TextIO

from kinesyslog import kinesis, kpl
from kinesyslog.constants import (
    DUMP_CHUNK_SIZE,
    DUMP_KINESIS_TIMEOUT,
    DUMP_MAX_KINESIS_RECORDS,
    GZIP_MAGIC,
    OWNER_CACHE_FILE,
    RING_FILE_NAME,
    SPOOL_KINESIS_SUFFIX,
    SPOOL_LEGACY_TEMP_PREFIX,
)

S3_SCHEME = "s3://"
KINESIS_SCHEME = "kinesis://"
CONTROL_MESSAGE = "CONTROL_MESSAGE"  # CloudWatch Logs' health checks; they carry no logs
DEFAULT_MAX_RECORDS = DUMP_MAX_KINESIS_RECORDS
DEFAULT_TIMEOUT = DUMP_KINESIS_TIMEOUT
_GET_RECORDS_LIMIT = 10_000  # the most records one GetRecords call may return
_THROTTLE_SLEEP = 0.2  # a shard takes 5 GetRecords calls a second
_THROTTLED = frozenset(("ProvisionedThroughputExceededException", "LimitExceededException"))
# A call that hangs cannot hold the dump much beyond its --timeout.
_KINESIS_CONNECT_TIMEOUT = 5.0
_KINESIS_READ_TIMEOUT = 15.0
_KINESIS_MAX_ATTEMPTS = 3
_GZIP_WBITS = 31
_MAX_NESTING = 1  # a gzip member holding records: Firehose's S3 compression over our records
_SKIPPED_NAMES = frozenset((RING_FILE_NAME, OWNER_CACHE_FILE))
_json_string = json.JSONEncoder(ensure_ascii=False).encode

Records = Callable[[], Iterable[dict[str, Any]]]  # reads one source's records when called


class DumpError(ValueError):
    """Data that is not a sequence of records; the message says where and why."""


class SourceError(Exception):
    """A source (file, directory, S3 object or prefix, stream or shard) that could not be
    read."""


class _Timeout(Exception):
    """A stream's --timeout passed."""


def iter_records(data: bytes) -> Iterator[dict[str, Any]]:
    """The records in ``data``, concatenated gzip members each holding one JSON record.

    Each record is checked to have a string ``logGroup`` and ``logStream`` and a list of
    ``logEvents`` with a string ``id``, an integer ``timestamp`` and a string ``message``.
    Raises DumpError at the first member that is not such a record.
    """
    return _iter_records(memoryview(data), 0, _parse_record)


def iter_kinesis_records(data: bytes) -> Iterator[dict[str, Any]]:
    """The records in one Kinesis record's data, each event of a user record as a record of
    that one event (``logGroup``, ``logStream``, ``logEvents``).

    A KPL aggregated record is split into its user records. A user record, or a plain
    record, is one event's JSON or a CloudWatch-Logs-style record, either of them gzipped or
    not. Raises DumpError at the first that is neither.
    """
    if not data.startswith(kpl.MAGIC):
        return _user_record(data)
    try:
        user_records = kpl.deaggregate("", data)  # partition keys are not printed
    except ValueError as error:
        raise DumpError(f"a broken KPL aggregated record ({error})") from None
    return _user_records(user_records)


def _user_records(user_records: list[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    for number, (_, data) in enumerate(user_records, 1):
        try:
            yield from _user_record(data)
        except DumpError as error:
            raise DumpError(f"user record {number}: {error}") from None


def _user_record(data: bytes) -> Iterator[dict[str, Any]]:
    if data[:len(GZIP_MAGIC)] == GZIP_MAGIC:
        return _iter_records(memoryview(data), 0, _parse_document)
    return iter((_parse_document(data),))


def _iter_records(data: memoryview, depth: int,
                  parse: Callable[[bytes], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    position = 0
    number = 0
    while position < len(data):
        if data[position] == 0x0A:  # "\n" between members
            position += 1
            continue
        number += 1
        where = f"record {number} (byte {position})"
        document, position = _inflate_member(data, position, where)
        if depth < _MAX_NESTING and document[:len(GZIP_MAGIC)] == GZIP_MAGIC:
            try:
                yield from _iter_records(memoryview(document), depth + 1, parse)
            except DumpError as error:
                raise DumpError(f"in the gzip member at byte {position}: {error}") from None
            continue
        try:
            record = parse(document)
        except DumpError as error:
            raise DumpError(f"{where}: {error}") from None
        yield record


def _inflate_member(data: memoryview, start: int, where: str) -> tuple[bytes, int]:
    """(the content of the gzip member at ``start``, the position after it)."""
    if data[start:start + len(GZIP_MAGIC)] != GZIP_MAGIC[:len(data) - start]:
        raise DumpError(f"{where}: not gzip data")
    # zlib rather than ISA-L: its errors say what is wrong (ISA-L reads a bad header as a
    # truncated one), and inflating costs little next to json.loads.
    inflater = zlib.decompressobj(_GZIP_WBITS)
    parts = []
    position = start
    # Fed a chunk at a time, so that unused_data (a copy) stays small.
    while not inflater.eof:
        chunk = data[position:position + DUMP_CHUNK_SIZE]
        if not chunk:
            raise DumpError(f"{where}: truncated gzip data")
        try:
            parts.append(inflater.decompress(chunk))
        except zlib.error as error:
            raise DumpError(f"{where}: damaged gzip data ({error})") from None
        position += len(chunk)
    return b"".join(parts), position - len(inflater.unused_data)


def _parse_record(document: bytes) -> dict[str, Any]:
    return _check_record(_json_object(document))


def _parse_document(document: bytes) -> dict[str, Any]:
    """A CloudWatch-Logs-style record, or one event (a Kinesis user record's JSON) as a
    record of that one event."""
    value = _json_object(document)
    if "logEvents" in value:
        return _check_record(value)
    _check_stream(value)
    if not _is_event(value):
        raise DumpError("an event that lacks a string id, an integer timestamp or a string "
                        "message")
    return {"logGroup": value["logGroup"], "logStream": value["logStream"],
            "logEvents": [value]}


def _json_object(document: bytes) -> dict[str, Any]:
    try:
        value = json.loads(document)
    except ValueError as error:
        raise DumpError(f"not a JSON document ({error})") from None
    if not isinstance(value, dict):
        raise DumpError("not a JSON object")
    return value


def _check_stream(value: dict[str, Any]) -> None:
    for field in ("logGroup", "logStream"):
        if not isinstance(value.get(field), str):
            raise DumpError(f"no {field} string")


def _is_event(event: object) -> bool:
    return (isinstance(event, dict) and isinstance(event.get("id"), str)
            and type(event.get("timestamp")) is int and isinstance(event.get("message"), str))


def _check_record(record: dict[str, Any]) -> dict[str, Any]:
    _check_stream(record)
    events = record.get("logEvents")
    if not isinstance(events, list):
        raise DumpError("no logEvents list")
    for index, event in enumerate(events):
        if not _is_event(event):
            raise DumpError(f"event {index + 1} lacks a string id, an integer timestamp or a "
                            "string message")
    return record


def make_s3_client(*, region: str | None = None, profile: str | None = None,
                   endpoint_url: str | None = None) -> Any:
    """An S3 client from the normal boto3 chain (boto3 is imported only when needed)."""
    import boto3

    session = boto3.Session(profile_name=profile, region_name=region)
    return session.client("s3", endpoint_url=endpoint_url)


def make_kinesis_client(*, region: str | None = None, profile: str | None = None,
                        endpoint_url: str | None = None) -> Any:
    """A Kinesis client from the normal boto3 chain (AWS_ENDPOINT_URL_KINESIS included)."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=profile, region_name=region)
    config = Config(connect_timeout=_KINESIS_CONNECT_TIMEOUT,
                    read_timeout=_KINESIS_READ_TIMEOUT,
                    retries={"mode": "standard", "max_attempts": _KINESIS_MAX_ATTEMPTS})
    return session.client("kinesis", endpoint_url=endpoint_url, config=config)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SourceError(error.strerror or str(error)) from None


def _file_records(path: str) -> Iterator[dict[str, Any]]:
    content = _read_file(path)
    if path.endswith(SPOOL_KINESIS_SUFFIX) or content.startswith(kinesis.SPOOL_MAGIC):
        try:
            _, data = kinesis.decode_spooled(content)
        except ValueError as error:
            raise DumpError(str(error)) from None
        return iter_kinesis_records(data)
    return iter_records(content)


def _walk(directory: str) -> Iterator[tuple[str, Records]]:
    """Files under ``directory``, sorted, recursively, without following directory symlinks.

    Skipped: hidden names (the spool's .lock, and .tmp-* records being written), 2.0.1's
    _temp_firehose_event-* files (a record being written, or a second link to one), and the
    relay's ring and owner files."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        yield directory, partial(_raise, SourceError(error.strerror or str(error)))
        return
    for entry in entries:
        if entry.name.startswith((".", SPOOL_LEGACY_TEMP_PREFIX)) or entry.name in _SKIPPED_NAMES:
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        else:
            yield entry.path, partial(_file_records, entry.path)


def _raise(error: Exception) -> NoReturn:
    raise error


def _local(path: str) -> Iterator[tuple[str, Records]]:
    if Path(path).is_dir():
        yield from _walk(path)
    else:
        yield path, partial(_file_records, path)


def _s3_objects(client: Any, uri: str) -> Iterator[tuple[str, Records]]:
    """Every object under the S3 prefix, in key order (Firehose's keys sort by time)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise SourceError("no bucket in the S3 URI (expected s3://BUCKET/PREFIX)")

    def records(key: str) -> Iterator[dict[str, Any]]:
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise SourceError(str(error)) from None
        return iter_records(data)

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/"):  # a "folder" made in the console
                    yield f"{S3_SCHEME}{bucket}/{key}", partial(records, key)
    except (BotoCoreError, ClientError) as error:
        raise SourceError(str(error)) from None


def _kinesis_records(client: Any, uri: str, *, max_records: int, timeout: float,
                     note: Callable[[str], None]) -> Iterator[tuple[str, Records]]:
    """Every record of every shard of the stream, from TRIM_HORIZON until the shard is caught
    up, a shard after its parents; each named by stream, shard and sequence number.

    Stops after ``max_records`` Kinesis records (saying so through ``note``) and raises
    SourceError once ``timeout`` seconds have passed. A shard that cannot be read is one
    source that fails; the other shards are still read.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    stream = uri[len(KINESIS_SCHEME):]
    if not stream:
        raise SourceError("no stream name in the Kinesis URI (expected kinesis://STREAM)")
    deadline = time.monotonic() + timeout

    def call(operation: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
        """The operation's answer; a throttled call is tried again until the deadline."""
        while time.monotonic() < deadline:
            try:
                return operation(**params)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in _THROTTLED:
                    raise
            time.sleep(max(0.0, min(_THROTTLE_SLEEP, deadline - time.monotonic())))
        raise _Timeout

    try:
        answer = call(client.list_shards, StreamName=stream)
        shards = list(answer["Shards"])
        while answer.get("NextToken"):
            # A later page names no stream: its token does (Kinesis refuses both).
            answer = call(client.list_shards, NextToken=answer["NextToken"])
            shards += answer["Shards"]
    except _Timeout:
        raise SourceError(f"--timeout {timeout:g} s passed before the shards were listed"
                          ) from None
    except (BotoCoreError, ClientError) as error:
        raise SourceError(str(error)) from None

    unfinished = _parents_first(shards)
    read = 0
    for shard_id in list(unfinished):
        name = f"{uri} shard {shard_id}"
        iterator: str | None = None
        try:
            while True:
                if read >= max_records:
                    note(f"{uri}: stopped after {read} records (--max-records); not read to "
                         f"the end: {', '.join(unfinished)}")
                    return
                if iterator is None:
                    iterator = call(client.get_shard_iterator, StreamName=stream,
                                    ShardId=shard_id,
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                answer = call(client.get_records, ShardIterator=iterator,
                              Limit=min(_GET_RECORDS_LIMIT, max_records - read))
                records = answer["Records"]
                read += len(records)
                for record in records:
                    yield (f"{name} sequence {record['SequenceNumber']}",
                           partial(iter_kinesis_records, record["Data"]))
                iterator = answer.get("NextShardIterator")
                if iterator is None or (not records and answer.get("MillisBehindLatest") == 0):
                    break
        except _Timeout:
            raise SourceError(f"--timeout {timeout:g} s passed before these shards were read "
                              f"to the end: {', '.join(unfinished)}") from None
        except (BotoCoreError, ClientError) as error:
            yield name, partial(_raise, SourceError(str(error)))
        unfinished.remove(shard_id)


def _parents_first(shards: list[dict[str, Any]]) -> list[str]:
    """The shard ids, each after the listed shards it was split or merged from (which hold
    the older records of its partition keys), otherwise in the listing's order."""
    ids = [shard["ShardId"] for shard in shards]
    parents = {shard["ShardId"]: {shard.get("ParentShardId"),
                                  shard.get("AdjacentParentShardId")} & set(ids)
               for shard in shards}
    ordered: list[str] = []
    done: set[str] = set()
    while len(done) < len(parents):  # each pass takes at least one shard
        left = [shard_id for shard_id in ids if shard_id not in done]
        ready = [shard_id for shard_id in left if parents[shard_id] <= done]
        ready = ready or left  # a cycle, which Kinesis never lists: the listing's order
        ordered += ready
        done.update(ready)
    return ordered


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
    except UnicodeEncodeError:  # e.g. a lone surrogate, or an ASCII-only terminal
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _lines(record: dict[str, Any], as_json: bool) -> str:
    events = record["logEvents"]
    if not as_json:
        return "".join(event["message"] + "\n" for event in events)
    # What json.dumps(..., ensure_ascii=False) gives for each event's object, built from its
    # parts: three times faster. The timestamp was checked to be an int.
    prefix = (f'{{"logGroup": {_json_string(record["logGroup"])}, '
              f'"logStream": {_json_string(record["logStream"])}, "id": ')
    return "".join(
        f'{prefix}{_json_string(event["id"])}, "timestamp": {event["timestamp"]}, '
        f'"message": {_json_string(event["message"])}}}\n'
        for event in events)


def _silence(out: TextIO) -> None:
    """Points ``out``'s descriptor at /dev/null after a reader went away (``| head``), so
    that the interpreter's last flush does not fail with another BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def dump(sources: list[str], *, as_json: bool, group_prefix: str | None, out: TextIO,
         err: TextIO, s3_client_factory: Callable[[], Any] | None = None,
         kinesis_client_factory: Callable[[], Any] | None = None,
         max_records: int = DEFAULT_MAX_RECORDS, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Prints the events of every record in ``sources``; returns the exit status.

    A source is a file, a directory (walked recursively), ``s3://BUCKET/PREFIX`` or
    ``kinesis://STREAM`` (read for at most ``max_records`` Kinesis records and ``timeout``
    seconds). ``group_prefix`` keeps only records whose logGroup starts with it. 0 if every
    source was read completely (or up to ``max_records``), 1 if any could not be (each named
    in one line on ``err``).
    """
    failed = False
    clients: dict[str, Any] = {}

    def error(name: str, reason: object) -> None:
        nonlocal failed
        failed = True
        err.write(f"kinesyslog: error: {name}: {reason}\n")
        err.flush()

    def note(text: str) -> None:
        err.write(f"kinesyslog: {text}\n")
        err.flush()

    def client(service: str, factory: Callable[[], Any]) -> Any:
        if service not in clients:
            try:
                clients[service] = factory()
            except Exception as exc:  # boto3's configuration errors (profile, region…)
                raise SourceError(f"no {service} client: {exc}") from None
        return clients[service]

    def parts(source: str) -> Iterator[tuple[str, Records]]:
        if source.startswith(S3_SCHEME):
            return _s3_objects(client("S3", s3_client_factory or make_s3_client), source)
        if source.startswith(KINESIS_SCHEME):
            return _kinesis_records(
                client("Kinesis", kinesis_client_factory or make_kinesis_client), source,
                max_records=max_records, timeout=timeout, note=note)
        return _local(source)

    try:
        for source in sources:
            try:
                for name, records in parts(source):
                    try:
                        for record in records():
                            if record.get("messageType") == CONTROL_MESSAGE:
                                continue
                            if group_prefix and not record["logGroup"].startswith(group_prefix):
                                continue
                            _write(out, _lines(record, as_json))
                    except (SourceError, DumpError) as exc:
                        error(name, exc)
            except SourceError as exc:
                error(source, exc)
        out.flush()
    except BrokenPipeError:
        _silence(out)
    return 1 if failed else 0
