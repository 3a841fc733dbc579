"""`kinesyslog dump`: records from files, directories, S3 prefixes and Kinesis data streams
(a scripted client, and a real moto_server)."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kinesyslog import kpl
from kinesyslog.constants import DUMP_CHUNK_SIZE
from kinesyslog.dump import DumpError, dump, iter_kinesis_records, iter_records
from kinesyslog.kinesis import EventBatch, RecordMaker, decode_spooled, encode_spooled
from kinesyslog.records import build_records, joined
from kinesyslog.spool import Spool
from tests.conftest import MotoServer

OWNER = "123456789012"
GROUP = "/kinesyslog/syslog/514"


def event(number: int, message: str) -> dict[str, Any]:
    return {"id": f"{number:056d}", "timestamp": 1_519_247_270_000 + number, "message": message}


def record(stream: str, events: list[dict[str, Any]], group: str = GROUP) -> bytes:
    """One record as the relay builds it (ISA-L gzip)."""
    [built] = build_records(OWNER, group, stream,
                            *joined([json.dumps(e).encode() for e in events]))
    return built


def document(stream: str, events: list[dict[str, Any]], group: str = GROUP) -> dict[str, Any]:
    return {"owner": OWNER, "logGroup": group, "logStream": stream,
            "subscriptionFilters": [group], "messageType": "DATA_MESSAGE", "logEvents": events}


def member(value: object) -> bytes:
    """A record gzipped by the standard library, as another writer would."""
    return gzip.compress(json.dumps(value).encode(), mtime=0)


def run_dump(*sources: str | Path, as_json: bool = False, group: str | None = None,
             factory: Any = None, kinesis: Any = None, **limits: Any) -> tuple[int, str, str]:
    """dump()'s (status, out, err); ``kinesis`` is the Kinesis client, ``limits`` max_records
    and timeout."""
    out, err = io.StringIO(), io.StringIO()
    status = dump([str(s) for s in sources], as_json=as_json, group_prefix=group, out=out,
                  err=err, s3_client_factory=factory,
                  kinesis_client_factory=None if kinesis is None else lambda: kinesis,
                  **limits)
    return status, out.getvalue(), err.getvalue()


# iter_records


def test_concatenated_members_from_isal_and_gzip() -> None:
    first = [event(1, "<13>1 one"), event(2, "two")]
    second = [event(3, "three")]
    data = record("192.0.2.7", first) + member(document("2001:db8::1", second))
    assert list(iter_records(data)) == [document("192.0.2.7", first),
                                        document("2001:db8::1", second)]


def test_empty_data_holds_no_records() -> None:
    assert list(iter_records(b"")) == []


def test_newline_delimiters_between_members_are_skipped() -> None:
    one, two = document("a", [event(1, "x")]), document("b", [event(2, "y")])
    assert list(iter_records(member(one) + b"\n" + member(two) + b"\n")) == [one, two]


def test_an_object_gzipped_again_by_firehose_is_unpacked() -> None:
    one, two = document("a", [event(1, "x")]), document("b", [event(2, "y")])
    inner = record("a", [event(1, "x")]) + record("b", [event(2, "y")])
    assert list(iter_records(gzip.compress(inner, mtime=0))) == [one, two]


def test_a_member_larger_than_a_read_chunk_is_followed_correctly() -> None:
    noise = random.Random(5).randbytes(DUMP_CHUNK_SIZE * 2).hex()  # does not compress
    big = record("a", [event(1, noise)])
    assert len(big) > 2 * DUMP_CHUNK_SIZE
    small = record("b", [event(2, "after")])
    records = list(iter_records(big + small + big))
    assert [r["logEvents"][0]["message"] for r in records] == [noise, "after", noise]


def test_truncated_member_yields_the_records_before_it_then_fails() -> None:
    one = record("a", [event(1, "first")])
    two = record("b", [event(2, "second")])
    records = iter_records(one + two[:-5])
    assert next(records)["logEvents"][0]["message"] == "first"
    with pytest.raises(DumpError) as failure:
        next(records)
    assert str(failure.value) == f"record 2 (byte {len(one)}): truncated gzip data"


def test_data_that_is_not_gzip() -> None:
    with pytest.raises(DumpError) as failure:
        list(iter_records(b'{"logGroup": "plain json"}'))
    assert str(failure.value) == "record 1 (byte 0): not gzip data"


def test_trailing_garbage_after_a_member() -> None:
    one = record("a", [event(1, "x")])
    with pytest.raises(DumpError) as failure:
        list(iter_records(one + b"junk"))
    assert str(failure.value) == f"record 2 (byte {len(one)}): not gzip data"


def test_damaged_checksum() -> None:
    data = bytearray(member(document("a", [event(1, "x")])))
    data[-8] ^= 0xFF  # the CRC-32
    with pytest.raises(DumpError) as failure:
        list(iter_records(bytes(data)))
    assert str(failure.value) == ("record 1 (byte 0): damaged gzip data "
                                  "(Error -3 while decompressing data: incorrect data check)")


@pytest.mark.parametrize(("value", "reason"), [
    ([1, 2], "not a JSON object"),
    ({"logStream": "s", "logEvents": []}, "no logGroup string"),
    ({"logGroup": "g", "logStream": 7, "logEvents": []}, "no logStream string"),
    ({"logGroup": "g", "logStream": "s"}, "no logEvents list"),
    ({"logGroup": "g", "logStream": "s", "logEvents": [{"id": "1", "message": "m"}]},
     "event 1 lacks a string id, an integer timestamp or a string message"),
    ({"logGroup": "g", "logStream": "s",
      "logEvents": [event(1, "ok"), {"id": "2", "timestamp": True, "message": "m"}]},
     "event 2 lacks a string id, an integer timestamp or a string message"),
])
def test_records_missing_fields(value: object, reason: str) -> None:
    with pytest.raises(DumpError) as failure:
        list(iter_records(member(value)))
    assert str(failure.value) == f"record 1 (byte 0): {reason}"


def test_bad_json() -> None:
    with pytest.raises(DumpError) as failure:
        list(iter_records(gzip.compress(b'{"logGroup": ', mtime=0)))
    assert str(failure.value).startswith("record 1 (byte 0): not a JSON document (Expecting")


# dump on local files


def test_spool_file_plain(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    [path] = spool.write_records([record("192.0.2.7", [event(1, "<13>1 a"), event(2, "b")])])
    assert path.name.startswith("record-")
    assert run_dump(path) == (0, "<13>1 a\nb\n", "")


def test_json_output_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("192.0.2.7", [event(1, 'quote " ü\nline')]))
    status, out, err = run_dump(path, as_json=True)
    assert (status, err) == (0, "")
    assert out == ('{"logGroup": "/kinesyslog/syslog/514", "logStream": "192.0.2.7", '
                   '"id": "00000000000000000000000000000000000000000000000000000001", '
                   '"timestamp": 1519247270001, "message": "quote \\" ü\\nline"}\n')


def test_json_lines_equal_json_dumps_of_each_event(tmp_path: Path) -> None:
    messages = ["", "plain", 'q"b\\s/', "\x00\x1f\x7f", "\u2028 \U0001f600 \ufeffBOM", "\\xff"]
    group, stream = '/g "quoted" \u00e9', "2001:db8::1"
    path = tmp_path / "object"
    path.write_bytes(member(document(stream, [event(n, m) for n, m in enumerate(messages)],
                                     group=group)))
    status, out, _ = run_dump(path, as_json=True)
    assert status == 0
    assert out.split("\n") == [  # not splitlines(): U+2028 is not a line end here
        *(json.dumps({"logGroup": group, "logStream": stream, **event(n, m)}, ensure_ascii=False)
          for n, m in enumerate(messages)), ""]


def test_plain_output_writes_messages_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "two\nlines"), event(2, "tab\there")]))
    assert run_dump(path) == (0, "two\nlines\ntab\there\n", "")


def test_group_prefix_filter(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "syslog")], group="/kinesyslog/syslog/514")
                     + record("s", [event(2, "gelf")], group="/kinesyslog/gelf/12201")
                     + record("s", [event(3, "other")], group="/other/syslog/514"))
    assert run_dump(path, group="/kinesyslog/gelf")[1] == "gelf\n"
    assert run_dump(path, group="/kinesyslog/")[1] == "syslog\ngelf\n"
    assert run_dump(path)[1] == "syslog\ngelf\nother\n"


def test_control_messages_are_skipped(tmp_path: Path) -> None:
    control = {**document("", [event(1, "CWL CONTROL MESSAGE: Checking health")], group=""),
               "messageType": "CONTROL_MESSAGE"}
    path = tmp_path / "object"
    path.write_bytes(member(control) + record("s", [event(2, "data")]))
    assert run_dump(path) == (0, "data\n", "")


def test_directory_mix(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.write_records([record("s", [event(1, "spooled 1")])])
    spool.write_records([record("s", [event(2, "spooled 2")])])
    directory = spool.directory
    (directory / "firehose_event-abc").write_bytes(member(document("s", [event(3, "legacy")])))
    # Files that are not records: a record being written, the relay's lock, ring and owner.
    (directory / ".tmp-1-record-x.gz").write_bytes(b"partial")
    (directory / "_temp_firehose_event-abc").write_bytes(b"partial")
    (directory / ".lock").write_bytes(b"")
    (directory / "ring.mmap").write_bytes(b"\0" * 64)
    (directory / "owner").write_text(OWNER)
    (directory / "corrupt").mkdir()
    (directory / "corrupt" / "record-bad.gz").write_bytes(b"not gzip")
    (directory / "output" / "2024").mkdir(parents=True)
    (directory / "output" / "2024" / "file").write_bytes(record("s", [event(4, "output")]))
    status, out, err = run_dump(directory)
    assert status == 1
    # Sorted by name at each level: corrupt/, firehose_event-abc, output/, record-*.
    assert out == "legacy\noutput\nspooled 1\nspooled 2\n"
    assert err == (f"kinesyslog: error: {directory}/corrupt/record-bad.gz: "
                   "record 1 (byte 0): not gzip data\n")


def test_a_clean_directory_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(record("s", [event(1, "one")]))
    (tmp_path / "b").write_bytes(b"")  # empty: no records, not an error
    assert run_dump(tmp_path) == (0, "one\n", "")


def test_corrupt_and_missing_sources_do_not_stop_the_others(tmp_path: Path) -> None:
    one = record("s", [event(1, "before")])
    truncated = tmp_path / "truncated"
    truncated.write_bytes(one + record("s", [event(2, "lost")])[:30])
    good = tmp_path / "good"
    good.write_bytes(record("s", [event(3, "good")]))
    missing = tmp_path / "missing"
    status, out, err = run_dump(truncated, missing, good)
    assert status == 1
    assert out == "before\ngood\n"
    assert err.splitlines() == [
        f"kinesyslog: error: {truncated}: record 2 (byte {len(one)}): truncated gzip data",
        f"kinesyslog: error: {missing}: No such file or directory",
    ]


def test_unencodable_text_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "caf\u00e9")]))
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    assert dump([str(path)], as_json=False, group_prefix=None, out=out, err=io.StringIO()) == 0
    out.flush()
    assert raw.getvalue() == b"caf\\xe9\n"


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_the_dump_quietly(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "x")]))
    err = io.StringIO()
    assert dump([str(path), str(path)], as_json=False, group_prefix=None, out=ClosedPipe(),
                err=err) == 0
    assert err.getvalue() == ""


def test_s3_client_errors_are_reported_per_source(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "local")]))

    def no_client() -> Any:
        raise RuntimeError("The config profile (nope) could not be found")

    status, out, err = run_dump("s3://bucket/prefix", path, factory=no_client)
    assert (status, out) == (1, "local\n")
    assert err == ("kinesyslog: error: s3://bucket/prefix: no S3 client: "
                   "The config profile (nope) could not be found\n")


# dump on S3 (moto_server)


def s3_client(moto: MotoServer, calls: list[dict[str, Any]] | None = None,
              page_size: int | None = None) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=moto.endpoint_url)
    if page_size is not None:
        def small_pages(params: dict[str, Any], **_: Any) -> None:
            params["MaxKeys"] = page_size
        client.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    if calls is not None:
        def count(params: dict[str, Any], **_: Any) -> None:
            calls.append(dict(params))
        client.meta.events.register("provide-client-params.s3.ListObjectsV2", count)
    return client


def test_s3_prefix_with_pagination(moto_server: MotoServer) -> None:
    client = s3_client(moto_server)
    for n in range(5):
        client.put_object(Bucket=moto_server.bucket, Key=f"logs/2024/{n}",
                          Body=record(f"192.0.2.{n}", [event(n, f"message {n}")]))
    client.put_object(Bucket=moto_server.bucket, Key="other/x",
                      Body=record("s", [event(9, "outside the prefix")]))
    calls: list[dict[str, Any]] = []
    status, out, err = run_dump(f"s3://{moto_server.bucket}/logs/", as_json=True,
                                factory=lambda: s3_client(moto_server, calls, page_size=2))
    assert (status, err) == (0, "")
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        f"message {n}" for n in range(5)]
    assert json.loads(out.splitlines()[3])["logStream"] == "192.0.2.3"
    # 2 + 2 + 1 keys: each page after the first continues where the previous one ended.
    assert [("ContinuationToken" in call, call["MaxKeys"]) for call in calls] == [
        (False, 2), (True, 2), (True, 2)]


def test_s3_corrupt_object_and_missing_bucket(moto_server: MotoServer) -> None:
    client = s3_client(moto_server)
    client.put_object(Bucket=moto_server.bucket, Key="a", Body=record("s", [event(1, "a")]))
    client.put_object(Bucket=moto_server.bucket, Key="b", Body=b"\x1f\x8b\x08 broken")
    client.put_object(Bucket=moto_server.bucket, Key="c", Body=record("s", [event(3, "c")]))
    status, out, err = run_dump("s3://no-such-bucket/x", f"s3://{moto_server.bucket}",
                                factory=lambda: s3_client(moto_server))
    assert (status, out) == (1, "a\nc\n")
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("kinesyslog: error: s3://no-such-bucket/x: An error occurred "
                               "(NoSuchBucket) when calling the ListObjectsV2 operation")
    assert lines[1].startswith(f"kinesyslog: error: s3://{moto_server.bucket}/b: record 1 "
                               "(byte 0): ")


def test_s3_objects_delivered_by_firehose(moto_server: MotoServer) -> None:
    import boto3

    firehose = boto3.client("firehose", endpoint_url=moto_server.endpoint_url)
    records = [record("192.0.2.7", [event(1, "one"), event(2, "two")]),
               record("198.51.100.1", [event(3, "three")])]
    response = firehose.put_record_batch(DeliveryStreamName=moto_server.stream,
                                         Records=[{"Data": data} for data in records])
    assert response["FailedPutCount"] == 0
    status, out, err = run_dump(f"s3://{moto_server.bucket}/",
                                factory=lambda: s3_client(moto_server))
    assert (status, out, err) == (0, "one\ntwo\nthree\n", "")


# Kinesis records: spool files (kinesis.py's format)

GELF_GROUP = "/kinesyslog/gelf/12201"


def batch(stream: str, events: list[dict[str, Any]], group: str = GROUP) -> EventBatch:
    """What the worker hands RecordMaker for one log stream."""
    return (group, stream, *joined([json.dumps(e).encode() for e in events]))


def kinesis_records(record_format: str, batches: list[EventBatch],
                    compress: bool = False) -> list[bytes]:
    """Spool file contents as the relay makes them, partition key per source."""
    return RecordMaker(OWNER, record_format, "source", compress).make(batches)


def json_line(stream: str, e: dict[str, Any], group: str = GROUP) -> str:
    return json.dumps({"logGroup": group, "logStream": stream, **e}, ensure_ascii=False)


def write_kds(directory: Path, contents: list[bytes]) -> list[Path]:
    directory.mkdir(exist_ok=True)
    paths = []
    for number, content in enumerate(contents):
        path = directory / f"record-{number:020d}-{number:06d}.kds"
        path.write_bytes(content)
        paths.append(path)
    return paths


def plain_event(stream: str, e: dict[str, Any], group: str = GROUP) -> bytes:
    """One event's JSON as a Kinesis record of its own (no aggregation, no gzip)."""
    return json.dumps({"logGroup": group, "logStream": stream, **e}).encode()


def test_kinesis_spool_files_in_cwl_format(tmp_path: Path) -> None:
    batches = [batch("192.0.2.7", [event(1, "<13>1 one"), event(2, "two\nlines")]),
               batch("2001:db8::1", [event(3, "caf\u00e9")], group=GELF_GROUP)]
    contents = kinesis_records("cwl", batches)
    assert len(contents) == 2
    assert decode_spooled(contents[0])[1][:3] == b"\x1f\x8b\x08"
    write_kds(tmp_path / "spool", contents)
    assert run_dump(tmp_path / "spool") == (0, "<13>1 one\ntwo\nlines\ncaf\u00e9\n", "")
    assert run_dump(tmp_path / "spool", as_json=True) == (0, "".join(
        line + "\n" for line in (json_line("192.0.2.7", event(1, "<13>1 one")),
                                 json_line("192.0.2.7", event(2, "two\nlines")),
                                 json_line("2001:db8::1", event(3, "caf\u00e9"), GELF_GROUP))
    ), "")
    assert run_dump(tmp_path / "spool", group="/kinesyslog/gelf") == (0, "caf\u00e9\n", "")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
def test_kinesis_spool_files_in_kpl_format(tmp_path: Path, compress: bool) -> None:
    batches = [batch("192.0.2.7", [event(1, "<13>1 one"), event(2, 'quote " \u2028')]),
               batch("198.51.100.1", [event(3, "three")], group=GELF_GROUP),
               batch("192.0.2.7", [event(4, "four")])]
    contents = kinesis_records("kpl", batches, compress)
    assert len(contents) == 2  # one aggregated record per partition key
    key, data = decode_spooled(contents[0])
    user_records = kpl.deaggregate(key, data)
    assert (key, len(user_records)) == ("192.0.2.7", 3)
    assert all((data[:3] == b"\x1f\x8b\x08") is compress for _, data in user_records)
    [first, second] = write_kds(tmp_path / "spool", contents)
    assert run_dump(tmp_path / "spool", as_json=True) == (0, "".join(
        line + "\n" for line in (json_line("192.0.2.7", event(1, "<13>1 one")),
                                 json_line("192.0.2.7", event(2, 'quote " \u2028')),
                                 json_line("192.0.2.7", event(4, "four")),
                                 json_line("198.51.100.1", event(3, "three"), GELF_GROUP))
    ), "")
    assert run_dump(second, first) == (0, "three\n<13>1 one\nquote \" \u2028\nfour\n", "")
    assert run_dump(tmp_path / "spool", group="/kinesyslog/syslog") == (
        0, "<13>1 one\nquote \" \u2028\nfour\n", "")


def test_kinesis_spool_files_among_firehose_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.write_records([record("s", [event(1, "firehose")])])
    directory = spool.directory
    write_kds(directory, kinesis_records("kpl", [batch("k", [event(2, "kpl")])], True))
    control = {**document("", [event(3, "CWL CONTROL MESSAGE: Checking health")], group=""),
               "messageType": "CONTROL_MESSAGE"}
    (directory / "record-99999999999999999999-000000.kds").write_bytes(
        encode_spooled("k", member(control)))
    # Recognised by its magic bytes, whatever its name.
    (directory / "copied").write_bytes(encode_spooled("k", plain_event("k", event(4, "plain"))))
    (directory / ".tmp-1-record-x.kds").write_bytes(b"KDS1 partial")
    # Sorted by name: copied, record-000…0.kds, record-<time>.gz, record-999….kds.
    assert run_dump(directory) == (0, "plain\nkpl\nfirehose\n", "")


@pytest.mark.parametrize(("data", "expected"), [
    (plain_event("s", event(1, "plain")),
     [{"logGroup": GROUP, "logStream": "s", "logEvents": [
         {"logGroup": GROUP, "logStream": "s", **event(1, "plain")}]}]),
    (gzip.compress(plain_event("s", event(2, "gzipped")), mtime=0),
     [{"logGroup": GROUP, "logStream": "s", "logEvents": [
         {"logGroup": GROUP, "logStream": "s", **event(2, "gzipped")}]}]),
    (record("s", [event(3, "cwl"), event(4, "cwl 2")]),
     [document("s", [event(3, "cwl"), event(4, "cwl 2")])]),
], ids=["plain event", "gzipped event", "cwl record"])
def test_plain_kinesis_records(data: bytes, expected: list[dict[str, Any]]) -> None:
    assert list(iter_kinesis_records(data)) == expected


def aggregated(*user_records: bytes) -> bytes:
    aggregator = kpl.Aggregator()
    for user_record in user_records:
        assert aggregator.add("k", user_record) == []
    [made] = aggregator.flush()
    return made.data


GOOD = plain_event("s", event(1, "good"))


@pytest.mark.parametrize(("content", "out", "reason"), [
    (b"KDS1\x00", "", "a Kinesis spool record cut short in its header"),
    (b"\x1f\x8b\x08 not a spool file", "", "not a Kinesis spool record (bad magic bytes)"),
    (encode_spooled("k", kpl.MAGIC + bytes(16)), "",
     "a broken KPL aggregated record (aggregated record with a wrong MD5)"),
    (encode_spooled("k", b"garbage"), "",
     "not a JSON document (Expecting value: line 1 column 1 (char 0))"),
    (encode_spooled("k", b'{"logGroup": "g", "id": "1", "timestamp": 1, "message": "m"}'), "",
     "no logStream string"),
    (encode_spooled("k", aggregated(GOOD, json.dumps(
        {"logGroup": "g", "logStream": "s", "id": "2", "message": "m"}).encode(), GOOD)),
     "good\n", "user record 2: an event that lacks a string id, an integer timestamp or a "
     "string message"),
    (encode_spooled("k", aggregated(gzip.compress(GOOD)[:-4])), "",
     "user record 1: record 1 (byte 0): truncated gzip data"),
], ids=["short header", "bad magic", "bad md5", "not json", "no stream", "bad event",
        "truncated gzip"])
def test_broken_kinesis_spool_files(tmp_path: Path, content: bytes, out: str,
                                    reason: str) -> None:
    broken = tmp_path / "record-1.kds"
    broken.write_bytes(content)
    after = write_kds(tmp_path / "after",
                      [encode_spooled("k", plain_event("s", event(9, "after")))])
    assert run_dump(broken, *after) == (1, out + "after\n",
                                        f"kinesyslog: error: {broken}: {reason}\n")


# kinesis:// with a scripted client


def client_error(code: str, operation: str = "GetRecords") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} here"}}, operation)


class ScriptedKinesis:
    """A Kinesis client: ListShards returns ``pages`` in turn; a shard's GetRecords calls get
    the next item of ``answers[shard]`` (raised if an exception); a shard not in ``answers``
    does not exist. Every call is kept in ``calls``."""

    def __init__(self, pages: list[list[dict[str, Any]]],
                 answers: dict[str, Iterator[dict[str, Any] | Exception]]) -> None:
        self.pages = pages
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_shards(self, **params: Any) -> dict[str, Any]:
        self.calls.append(("ListShards", params))
        page = int(params.get("NextToken", 0))
        answer: dict[str, Any] = {"Shards": self.pages[page]}
        if page + 1 < len(self.pages):
            answer["NextToken"] = str(page + 1)
        return answer

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        self.calls.append(("GetShardIterator", params))
        if params["ShardId"] not in self.answers:
            raise client_error("ResourceNotFoundException", "GetShardIterator")
        return {"ShardIterator": params["ShardId"]}

    def get_records(self, **params: Any) -> dict[str, Any]:
        self.calls.append(("GetRecords", params))
        item = next(self.answers[params["ShardIterator"]])
        if isinstance(item, Exception):
            raise item
        return item

    def called(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == operation]


def shard(shard_id: str, parent: str | None = None,
          adjacent: str | None = None) -> dict[str, Any]:
    listed: dict[str, Any] = {"ShardId": shard_id}
    if parent:
        listed["ParentShardId"] = parent
    if adjacent:
        listed["AdjacentParentShardId"] = adjacent
    return listed


def answer(shard_id: str, *messages: tuple[int, str], behind: int = 0,
           closed: bool = False) -> dict[str, Any]:
    """A GetRecords answer holding one plain record per (sequence number, message)."""
    result: dict[str, Any] = {
        "Records": [{"SequenceNumber": str(sequence), "PartitionKey": "k",
                     "Data": plain_event("s", event(sequence, message))}
                    for sequence, message in messages],
        "MillisBehindLatest": behind}
    if not closed:
        result["NextShardIterator"] = shard_id
    return result


def test_kinesis_lists_every_page_and_reads_parents_first() -> None:
    client = ScriptedKinesis(
        pages=[[shard("shard-2", parent="shard-0", adjacent="shard-1")],
               [shard("shard-0"), shard("shard-1"), shard("shard-3", parent="shard-expired")]],
        answers={
            # A closed shard ends with no NextShardIterator.
            "shard-0": iter([answer("shard-0", (1, "zero a"), behind=9000),
                             answer("shard-0", (2, "zero b"), closed=True)]),
            "shard-1": iter([answer("shard-1", (1, "one")), answer("shard-1")]),
            "shard-2": iter([answer("shard-2", (5, "merged")), answer("shard-2")]),
            # An empty answer behind the stream's tip is not the end of the shard.
            "shard-3": iter([answer("shard-3", behind=500), answer("shard-3", (7, "three")),
                             answer("shard-3")]),
        })
    assert run_dump("kinesis://s", kinesis=client) == (
        0, "zero a\nzero b\none\nthree\nmerged\n", "")
    # Kinesis refuses a StreamName next to a NextToken.
    assert client.called("ListShards") == [{"StreamName": "s"}, {"NextToken": "1"}]
    assert client.called("GetShardIterator") == [
        {"StreamName": "s", "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"}
        for shard_id in ("shard-0", "shard-1", "shard-3", "shard-2")]
    # Each asks for at most the records left of --max-records (10,000).
    assert [(params["ShardIterator"], params["Limit"])
            for params in client.called("GetRecords")] == [
        ("shard-0", 10_000), ("shard-0", 9_999), ("shard-1", 9_998), ("shard-1", 9_997),
        ("shard-3", 9_997), ("shard-3", 9_997), ("shard-3", 9_996), ("shard-2", 9_996),
        ("shard-2", 9_995)]


def test_kinesis_throttled_reads_are_tried_again() -> None:
    client = ScriptedKinesis(
        pages=[[shard("shard-0")]],
        answers={"shard-0": iter([client_error("ProvisionedThroughputExceededException"),
                                  client_error("ProvisionedThroughputExceededException"),
                                  answer("shard-0", (1, "after throttling")),
                                  answer("shard-0")])})
    assert run_dump("kinesis://s", kinesis=client) == (0, "after throttling\n", "")
    assert [params["ShardIterator"] for params in client.called("GetRecords")] == ["shard-0"] * 4


def test_kinesis_timeout_names_the_shards_not_read_to_the_end() -> None:
    client = ScriptedKinesis(
        pages=[[shard("shard-0"), shard("shard-1"), shard("shard-2")]],
        answers={"shard-0": iter([answer("shard-0", (1, "zero")), answer("shard-0")]),
                 "shard-1": itertools.repeat(answer("shard-1", behind=1000)),
                 "shard-2": iter([answer("shard-2", (1, "never read"))])})
    started = time.monotonic()
    status, out, err = run_dump("kinesis://s", kinesis=client, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert (status, out) == (1, "zero\n")
    assert err == ("kinesyslog: error: kinesis://s: --timeout 0.3 s passed before these shards "
                   "were read to the end: shard-1, shard-2\n")


def test_kinesis_timeout_while_throttled() -> None:
    client = ScriptedKinesis(
        pages=[[shard("shard-0")]],
        answers={"shard-0": itertools.repeat(
            client_error("ProvisionedThroughputExceededException"))})
    started = time.monotonic()
    assert run_dump("kinesis://s", kinesis=client, timeout=0.5) == (
        1, "", "kinesyslog: error: kinesis://s: --timeout 0.5 s passed before these shards were "
        "read to the end: shard-0\n")
    assert time.monotonic() - started < 5


def test_kinesis_max_records_stops_the_read() -> None:
    client = ScriptedKinesis(
        pages=[[shard("shard-0"), shard("shard-1"), shard("shard-2")]],
        answers={"shard-0": iter([answer("shard-0", (1, "a"), (2, "b")), answer("shard-0")]),
                 "shard-1": iter([answer("shard-1", (1, "c"), behind=50)]),
                 "shard-2": iter([])})
    assert run_dump("kinesis://s", kinesis=client, max_records=3) == (
        0, "a\nb\nc\n", "kinesyslog: kinesis://s: stopped after 3 records (--max-records); not "
        "read to the end: shard-1, shard-2\n")
    # GetRecords never asks for more than the records left.
    assert [(params["ShardIterator"], params["Limit"])
            for params in client.called("GetRecords")] == [
        ("shard-0", 3), ("shard-0", 1), ("shard-1", 1)]


def test_kinesis_bad_records_and_shards_do_not_stop_the_others() -> None:
    bad = answer("shard-1", (1, "one"), (2, "x"), (3, "three"))
    bad["Records"][1]["Data"] = b"\x1f\x8b\x08 broken"
    client = ScriptedKinesis(
        pages=[[shard("shard-0"), shard("shard-1"), shard("shard-2")]],
        answers={"shard-1": iter([bad, client_error("InternalFailure")]),
                 "shard-2": iter([answer("shard-2", (1, "two")), answer("shard-2")])})
    status, out, err = run_dump("kinesis://s", kinesis=client)
    assert (status, out) == (1, "one\nthree\ntwo\n")
    assert err.splitlines() == [
        "kinesyslog: error: kinesis://s shard shard-0: An error occurred "
        "(ResourceNotFoundException) when calling the GetShardIterator operation: "
        "ResourceNotFoundException here",
        "kinesyslog: error: kinesis://s shard shard-1 sequence 2: record 1 (byte 0): damaged "
        "gzip data (Error -3 while decompressing data: unknown header flags set)",
        "kinesyslog: error: kinesis://s shard shard-1: An error occurred (InternalFailure) "
        "when calling the GetRecords operation: InternalFailure here",
    ]


def test_kinesis_uri_and_client_errors(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(record("s", [event(1, "local")]))

    def no_client() -> Any:
        raise RuntimeError("The config profile (nope) could not be found")

    out, err = io.StringIO(), io.StringIO()
    status = dump(["kinesis://s", str(path)], as_json=False, group_prefix=None, out=out,
                  err=err, kinesis_client_factory=no_client)
    assert (status, out.getvalue()) == (1, "local\n")
    assert err.getvalue() == ("kinesyslog: error: kinesis://s: no Kinesis client: "
                              "The config profile (nope) could not be found\n")
    assert run_dump("kinesis://", kinesis=ScriptedKinesis([[]], {})) == (
        1, "", "kinesyslog: error: kinesis://: no stream name in the Kinesis URI (expected "
        "kinesis://STREAM)\n")


# kinesis:// on moto_server

KINESIS_STREAM = "test-kinesis"


def kinesis_client(moto: MotoServer, calls: list[dict[str, Any]] | None = None,
                   page_size: int | None = None) -> Any:
    import boto3

    client = boto3.client("kinesis", endpoint_url=moto.endpoint_url)
    if calls is not None:
        def count(params: dict[str, Any], **_: Any) -> None:
            calls.append(dict(params))
        client.meta.events.register("provide-client-params.kinesis.ListShards", count)
    if page_size is not None:
        def small_pages(params: dict[str, Any], **_: Any) -> None:
            params["MaxResults"] = page_size
            # moto, unlike Kinesis, wants the stream named next to the NextToken.
            params.setdefault("StreamName", KINESIS_STREAM)
        client.meta.events.register("provide-client-params.kinesis.ListShards", small_pages)
    return client


def create_stream(moto: MotoServer) -> Any:
    client = kinesis_client(moto)
    client.create_stream(StreamName=KINESIS_STREAM, ShardCount=3)
    client.get_waiter("stream_exists").wait(StreamName=KINESIS_STREAM,
                                            WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    return client


def put_records(client: Any, contents: list[bytes]) -> list[tuple[str, str]]:
    """PutRecords of spool file contents; each record's (shard, sequence number)."""
    entries = [decode_spooled(content) for content in contents]
    response = client.put_records(StreamName=KINESIS_STREAM, Records=[
        {"PartitionKey": key, "Data": data} for key, data in entries])
    assert response["FailedRecordCount"] == 0
    return [(put["ShardId"], put["SequenceNumber"]) for put in response["Records"]]


def fill_stream(client: Any) -> tuple[str, list[str]]:
    """Puts records of every format under several partition keys; (what dump --json prints,
    the shards)."""
    made: list[tuple[bytes, list[str]]] = []  # a spool file content, its events' lines
    for number in range(9):
        stream = f"192.0.2.{10 + number}"  # keys that land on each of the 3 shards
        group = GROUP if number % 2 else GELF_GROUP
        events = [event(10 * number + n, f"message {number}.{n} \u00e9") for n in range(3)]
        record_format, compress = [("cwl", False), ("kpl", False), ("kpl", True)][number % 3]
        [content] = kinesis_records(record_format, [batch(stream, events, group)], compress)
        made.append((content, [json_line(stream, e, group) for e in events]))
    shards = [shard_id for shard_id, _ in put_records(client, [content for content, _ in made])]
    assert len(set(shards)) == 3
    # Shard by shard in ListShards' order, each in the order the records were put.
    expected = "".join(line + "\n" for shard_id in sorted(set(shards))
                       for put_shard, (_, lines) in zip(shards, made) if put_shard == shard_id
                       for line in lines)
    return expected, sorted(set(shards))


def test_kinesis_stream_of_every_format(moto_server: MotoServer) -> None:
    expected, _ = fill_stream(create_stream(moto_server))
    calls: list[dict[str, Any]] = []
    status, out, err = run_dump(f"kinesis://{KINESIS_STREAM}", as_json=True,
                                kinesis=kinesis_client(moto_server, calls, page_size=1))
    assert (status, err) == (0, "")
    assert out == expected
    assert [sorted(call) for call in calls] == [["StreamName"], ["NextToken"], ["NextToken"]]
    status, out, err = run_dump(f"kinesis://{KINESIS_STREAM}", group="/kinesyslog/gelf",
                                kinesis=kinesis_client(moto_server))
    assert (status, err) == (0, "")
    assert out == "".join(json.loads(line)["message"] + "\n" for line in expected.splitlines()
                          if json.loads(line)["logGroup"] == GELF_GROUP)


def test_kinesis_stream_max_records(moto_server: MotoServer) -> None:
    client = create_stream(moto_server)
    contents = [encode_spooled("one key", plain_event("s", event(n, f"record {n}")))
                for n in range(10)]
    [shard_id] = {shard_id for shard_id, _ in put_records(client, contents)}
    unfinished = [listed["ShardId"] for listed in client.list_shards(
        StreamName=KINESIS_STREAM)["Shards"] if listed["ShardId"] >= shard_id]
    assert run_dump(f"kinesis://{KINESIS_STREAM}", kinesis=kinesis_client(moto_server),
                    max_records=4) == (
        0, "record 0\nrecord 1\nrecord 2\nrecord 3\n",
        f"kinesyslog: kinesis://{KINESIS_STREAM}: stopped after 4 records (--max-records); "
        f"not read to the end: {', '.join(unfinished)}\n")


def test_kinesis_missing_stream_and_bad_record(moto_server: MotoServer) -> None:
    client = create_stream(moto_server)
    [(_, _), (shard_id, sequence), (_, _)] = put_records(client, [
        encode_spooled("k", plain_event("s", event(1, "before"))),
        encode_spooled("k", b"garbage"),
        encode_spooled("k", plain_event("s", event(2, "after")))])
    status, out, err = run_dump("kinesis://no-such-stream", f"kinesis://{KINESIS_STREAM}",
                                kinesis=kinesis_client(moto_server))
    assert (status, out) == (1, "before\nafter\n")
    assert err.splitlines() == [
        "kinesyslog: error: kinesis://no-such-stream: An error occurred "
        "(ResourceNotFoundException) when calling the ListShards operation: Stream "
        "no-such-stream under account 123456789012 not found.",
        f"kinesyslog: error: kinesis://{KINESIS_STREAM} shard {shard_id} sequence {sequence}: "
        "not a JSON document (Expecting value: line 1 column 1 (char 0))",
    ]


def test_kinesis_dump_command(moto_server: MotoServer) -> None:
    expected, _ = fill_stream(create_stream(moto_server))
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("KINESYSLOG_", "AWS_ENDPOINT_URL"))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kinesyslog", "dump", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**env, **moto_server.env}, stdin=subprocess.DEVNULL)

    result = run("--json", "--timeout", "20", f"kinesis://{KINESIS_STREAM}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == expected
    result = run("kinesis://no-such-stream")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "kinesyslog: error: kinesis://no-such-stream: An error occurred "
        "(ResourceNotFoundException) when calling the ListShards operation: Stream "
        "no-such-stream under account 123456789012 not found.\n")
