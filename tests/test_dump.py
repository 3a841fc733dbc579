"""`kinesyslog dump`: records from files, directories and S3 prefixes (a real moto_server)."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from kinesyslog.constants import DUMP_CHUNK_SIZE
from kinesyslog.dump import DumpError, dump, iter_records
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
             factory: Any = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = dump([str(s) for s in sources], as_json=as_json, group_prefix=group, out=out,
                  err=err, s3_client_factory=factory)
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
