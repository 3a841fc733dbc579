"""`kinesyslog dump`: print the events of records in files, directories and S3 prefixes.

A record is one gzip member holding one JSON document (records.py). Sources hold records
back to back: an S3 object written by Firehose (one PutRecordBatch's records concatenated),
a spool file (``record-*.gz``, or 2.0.1's ``firehose_event-*``), an ``--output-dir`` file.
Also accepted: a newline after a member (Firehose's AppendDelimiterToRecord), and an object
gzipped once more by Firehose's own S3 compression.

Output: one message per line, written as it is, so a message that contains a newline spans
several lines (``--json`` keeps every event on one line); or with ``as_json`` one JSON object
per line: ``{"logGroup", "logStream", "id", "timestamp", "message"}`` in that order.

A source that cannot be read or decoded gets one error line on ``err`` naming it (and where
in it the problem is); the events before the problem have been printed, the rest of that
source is skipped, the other sources are still dumped, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from kinesyslog.constants import (
    DUMP_CHUNK_SIZE,
    GZIP_MAGIC,
    OWNER_CACHE_FILE,
    RING_FILE_NAME,
    SPOOL_LEGACY_TEMP_PREFIX,
)

S3_SCHEME = "s3://"
CONTROL_MESSAGE = "CONTROL_MESSAGE"  # CloudWatch Logs' health checks; they carry no logs
_GZIP_WBITS = 31
_MAX_NESTING = 1  # a gzip member holding records: Firehose's S3 compression over our records
_SKIPPED_NAMES = frozenset((RING_FILE_NAME, OWNER_CACHE_FILE))
_json_string = json.JSONEncoder(ensure_ascii=False).encode

Loader = Callable[[], bytes]


class DumpError(ValueError):
    """Data that is not a sequence of records; the message says where and why."""


class SourceError(Exception):
    """A source (file, directory, S3 object or prefix) that could not be read."""


def iter_records(data: bytes) -> Iterator[dict[str, Any]]:
    """The records in ``data``, concatenated gzip members each holding one JSON record.

    Each record is checked to have a string ``logGroup`` and ``logStream`` and a list of
    ``logEvents`` with a string ``id``, an integer ``timestamp`` and a string ``message``.
    Raises DumpError at the first member that is not such a record.
    """
    return _iter_records(memoryview(data), 0)


def _iter_records(data: memoryview, depth: int) -> Iterator[dict[str, Any]]:
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
                yield from _iter_records(memoryview(document), depth + 1)
            except DumpError as error:
                raise DumpError(f"in the gzip member at byte {position}: {error}") from None
            continue
        yield _parse_record(document, where)


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


def _parse_record(document: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(document)
    except ValueError as error:
        raise DumpError(f"{where}: not a JSON document ({error})") from None
    if not isinstance(record, dict):
        raise DumpError(f"{where}: not a JSON object")
    for field in ("logGroup", "logStream"):
        if not isinstance(record.get(field), str):
            raise DumpError(f"{where}: no {field} string")
    events = record.get("logEvents")
    if not isinstance(events, list):
        raise DumpError(f"{where}: no logEvents list")
    for index, event in enumerate(events):
        if not (isinstance(event, dict) and isinstance(event.get("id"), str)
                and type(event.get("timestamp")) is int
                and isinstance(event.get("message"), str)):
            raise DumpError(f"{where}: event {index + 1} lacks a string id, an integer "
                            "timestamp or a string message")
    return record


def make_s3_client(*, region: str | None = None, profile: str | None = None,
                   endpoint_url: str | None = None) -> Any:
    """An S3 client from the normal boto3 chain (boto3 is imported only when needed)."""
    import boto3

    session = boto3.Session(profile_name=profile, region_name=region)
    return session.client("s3", endpoint_url=endpoint_url)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SourceError(error.strerror or str(error)) from None


def _walk(directory: str) -> Iterator[tuple[str, Loader]]:
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
            yield entry.path, partial(_read_file, entry.path)


def _raise(error: Exception) -> bytes:
    raise error


def _local(path: str) -> Iterator[tuple[str, Loader]]:
    if Path(path).is_dir():
        yield from _walk(path)
    else:
        yield path, partial(_read_file, path)


def _s3_objects(client: Any, uri: str) -> Iterator[tuple[str, Loader]]:
    """Every object under the S3 prefix, in key order (Firehose's keys sort by time)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise SourceError("no bucket in the S3 URI (expected s3://BUCKET/PREFIX)")

    def load(key: str) -> bytes:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise SourceError(str(error)) from None

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/"):  # a "folder" made in the console
                    yield f"{S3_SCHEME}{bucket}/{key}", partial(load, key)
    except (BotoCoreError, ClientError) as error:
        raise SourceError(str(error)) from None


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
         err: TextIO, s3_client_factory: Callable[[], Any] | None = None) -> int:
    """Prints the events of every record in ``sources``; returns the exit status.

    A source is a file, a directory (walked recursively) or ``s3://BUCKET/PREFIX``.
    ``group_prefix`` keeps only records whose logGroup starts with it. 0 if every source
    was read completely, 1 if any could not be (each named in one line on ``err``).
    """
    failed = False
    client: Any = None

    def error(name: str, reason: object) -> None:
        nonlocal failed
        failed = True
        err.write(f"kinesyslog: error: {name}: {reason}\n")
        err.flush()

    def files(source: str) -> Iterator[tuple[str, Loader]]:
        nonlocal client
        if not source.startswith(S3_SCHEME):
            return _local(source)
        if client is None:
            try:
                client = (s3_client_factory or make_s3_client)()
            except Exception as exc:  # boto3's configuration errors (profile, region…)
                raise SourceError(f"no S3 client: {exc}") from None
        return _s3_objects(client, source)

    try:
        for source in sources:
            try:
                for name, load in files(source):
                    try:
                        for record in iter_records(load()):
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
