"""The request bodies the Firehose and Kinesis sinks build themselves, and what each sink
makes of every kind of spool file (kinesyslog/sinks.py)."""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.serialize import create_serializer

from kinesyslog import kinesis, kpl
from kinesyslog.records import build_records, joined
from kinesyslog.sinks import (
    BASE64_CHUNK,
    BODY_READ_LIMIT,
    DirectorySink,
    FirehoseSink,
    InvalidRecordError,
    KinesisSink,
    Record,
    RequestBody,
    put_record_batch_head,
    put_records_entry_end,
    put_records_head,
)
from tests.fake_firehose import FakeFirehose


def read_all(body: RequestBody) -> bytes:
    """The whole body, read as botocore reads it to sign it; then closed."""
    try:
        return bytes(body.finish().read())
    finally:
        body.close()


def body_of(head: bytes, entries: list[tuple[bytes, bytes]]) -> bytes:
    """The body RequestBody makes of (data, what follows it) pairs, each data in a file."""
    body = RequestBody(head)
    with tempfile.TemporaryDirectory() as directory:
        for index, (data, end) in enumerate(entries):
            path = Path(directory, f"record-{index}")
            path.write_bytes(data)
            body.add_file(path, 0, len(data), end)
    return read_all(body)


def put_record_batch_body(stream: str, records: list[bytes]) -> bytes:
    return body_of(put_record_batch_head(stream), [(data, b'"}') for data in records])


def put_records_body(stream: str, records: list[tuple[bytes, str]]) -> bytes:
    return body_of(put_records_head(stream),
                   [(data, put_records_entry_end(key)) for data, key in records])


def botocore_body(stream: str, records: list[bytes]) -> bytes:
    """What botocore's own JSON serializer makes of the same call."""
    model = botocore.session.get_session().get_service_model("firehose")
    request = create_serializer("json").serialize_to_request(
        {"DeliveryStreamName": stream, "Records": [{"Data": r} for r in records]},
        model.operation_model("PutRecordBatch"))
    body: bytes = request["body"]
    return body


def test_exact_bytes() -> None:
    assert put_record_batch_body("s", [b"\x1f\x8b", b""]) == (
        b'{"DeliveryStreamName": "s", "Records": [{"Data": "H4s="}, {"Data": ""}]}')


def test_the_same_request_as_botocore_serializes() -> None:
    records = [bytes(range(256)) * 40, b"", b"x", "grüße".encode()]
    for stream in ["kinesyslog", 'odd "name" \\ ü']:
        ours = put_record_batch_body(stream, records)
        assert json.loads(ours) == json.loads(botocore_body(stream, records))
        decoded = [base64.b64decode(entry["Data"]) for entry in json.loads(ours)["Records"]]
        assert decoded == records


# Kinesis Data Streams.

def botocore_put_records_body(stream: str, records: list[tuple[bytes, str]]) -> bytes:
    model = botocore.session.get_session().get_service_model("kinesis")
    request = create_serializer("json").serialize_to_request(
        {"StreamName": stream, "Records": [{"Data": d, "PartitionKey": k} for d, k in records]},
        model.operation_model("PutRecords"))
    body: bytes = request["body"]
    return body


def test_put_records_exact_bytes() -> None:
    batch = [(b"\x1f\x8b", "10.0.0.1"), (b"x", 'k"é')]
    assert put_records_body("s", batch) == (
        b'{"StreamName": "s", "Records": [{"Data": "H4s=", "PartitionKey": "10.0.0.1"}, '
        b'{"Data": "eA==", "PartitionKey": "k\\"\\u00e9"}]}')


def test_put_records_the_same_request_as_botocore_serializes() -> None:
    records = [(bytes(range(256)) * 40, "10.0.0.1"), (b"x", "/kinesyslog/syslog/514"),
               ("grüße".encode(), 'odd "key" \\ ü')]
    for stream in ["logs", "a.b_c-d"]:
        ours = put_records_body(stream, records)
        assert json.loads(ours) == json.loads(botocore_put_records_body(stream, records))


def test_record_size_counts_the_key_in_utf8() -> None:
    assert Record(Path("f"), 3, "é").size == 5
    assert Record(Path("f"), 3).size == 3


def kpl_record_data(path: Path) -> bytes:
    return kinesis.decode_spooled(path.read_bytes())[1]


@pytest.fixture
def kinds_of_spool_files(tmp_path: Path) -> dict[str, Path]:
    gzip_record = build_records("1", "/kinesyslog/syslog/514", "10.0.0.9",
                                *joined([b'{"id": "1", "timestamp": 1, "message": "m"}']))[0]
    kpl_record = kinesis.RecordMaker("1", "kpl", "source", False).make(
        [("/kinesyslog/syslog/514", "10.0.0.9", *joined(
            [b'{"id": "1", "timestamp": 1, "message": "m"}']))])[0]
    files = {"firehose": (gzip_record, ".gz"), "cwl": (kinesis.encode_spooled("10.0.0.9",
                                                                             gzip_record), ".kds"),
             "kpl": (kpl_record, ".kds"), "broken": (b"KDS1\x00\x05ab", ".kds")}
    paths = {}
    for name, (content, suffix) in files.items():
        paths[name] = tmp_path / f"record-{len(paths):020d}-000000{suffix}"
        paths[name].write_bytes(content)
    return paths


def test_kinesis_sink_loads_every_kind(kinds_of_spool_files: dict[str, Path]) -> None:
    sink = KinesisSink(botocore.session.get_session().create_client(
        "kinesis", region_name="us-east-1"), "logs", "source")
    files = kinds_of_spool_files
    gzip_size = files["firehose"].stat().st_size
    # left by --stream: its key from its header
    assert sink.load(files["firehose"]) == Record(files["firehose"], gzip_size, "10.0.0.9")
    header = files["cwl"].stat().st_size - gzip_size  # KDS1, the key's length, the key
    assert header == 4 + 2 + len("10.0.0.9")
    assert sink.load(files["cwl"]) == Record(files["cwl"], gzip_size, "10.0.0.9", header)
    kpl_record = sink.load(files["kpl"])
    assert kpl_record.partition_key == "10.0.0.9"
    assert files["kpl"].read_bytes().endswith(kpl_data := kpl_record_data(files["kpl"]))
    assert kpl_data.startswith(kpl.MAGIC) and kpl_record.data_size == len(kpl_data)
    with pytest.raises(InvalidRecordError, match="cut short in its partition key"):
        sink.load(files["broken"])


def test_firehose_sink_sends_cwl_but_not_kpl(kinds_of_spool_files: dict[str, Path]) -> None:
    sink = FirehoseSink(botocore.session.get_session().create_client(
        "firehose", region_name="us-east-1"), "s")
    files = kinds_of_spool_files
    gzip_size = files["firehose"].stat().st_size
    assert sink.load(files["cwl"]) == Record(files["cwl"], gzip_size, "",
                                             files["cwl"].stat().st_size - gzip_size)
    assert sink.load(files["firehose"]).partition_key == ""
    with pytest.raises(InvalidRecordError, match="only --kinesis-stream can send it"):
        sink.load(files["kpl"])


def test_directory_sink_moves_kinesis_files_whole(kinds_of_spool_files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")
    files = kinds_of_spool_files
    content = files["kpl"].read_bytes()
    record = sink.load(files["kpl"])
    assert record == Record(files["kpl"], len(content))
    assert sink.send([record]) == [None]
    assert (tmp_path / "out" / files["kpl"].name).read_bytes() == content


# Records are read again from their spool files when sent; one gone or changed meanwhile is
# left out of the call (and retried), the others are delivered.

@pytest.fixture
def fake(aws_env: dict[str, str]) -> Iterator[FakeFirehose]:
    with FakeFirehose(kinesis_streams={"logs": 2}) as server:
        yield server


def client_of(fake: FakeFirehose, service: str) -> Any:
    return botocore.session.Session().create_client(
        service, endpoint_url=fake.url, region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}))


def gzip_records(count: int) -> list[bytes]:
    return [build_records("1", "/kinesyslog/syslog/514", f"10.0.0.{i}",
                          *joined([b'{"id": "1", "timestamp": 1, "message": "m%d"}' % i]))[0]
            for i in range(count)]


def spool_files(directory: Path, contents: list[bytes], suffix: str) -> list[Path]:
    paths = [directory / f"record-{i:020d}-000000{suffix}" for i in range(len(contents))]
    for path, content in zip(paths, contents):
        path.write_bytes(content)
    return paths


def test_firehose_sink_reads_each_record_again_when_it_sends(fake: FakeFirehose,
                                                             tmp_path: Path) -> None:
    records = gzip_records(4)
    paths = spool_files(tmp_path, records, ".gz")
    sink = FirehoseSink(client_of(fake, "firehose"), "test-stream")
    batch = [sink.load(path) for path in paths]
    assert [record.size for record in batch] == [len(record) for record in records]
    paths[1].unlink()
    paths[2].write_bytes(records[2] + b"longer")
    assert sink.send(batch) == [None, "ENOENT", "InvalidRecord", None]
    assert fake.data() == [records[0], records[3]]
    assert [call.records for call in fake.calls if call.operation == "PutRecordBatch"] == [2]
    assert sink.send(batch[1:3]) == ["ENOENT", "InvalidRecord"]  # nothing to send: no call
    assert len(fake.calls) == 1


def test_kinesis_sink_reads_each_record_again_when_it_sends(fake: FakeFirehose,
                                                            tmp_path: Path) -> None:
    records = gzip_records(3)
    paths = spool_files(tmp_path, [kinesis.encode_spooled(f"key {i}", record)
                                   for i, record in enumerate(records)], ".kds")
    sink = KinesisSink(client_of(fake, "kinesis"), "logs", "source")
    batch = [sink.load(path) for path in paths]
    assert batch[0] == Record(paths[0], len(records[0]), "key 0", 4 + 2 + len("key 0"))
    paths[1].write_bytes(b"KDS1\x00\x05ab")  # cut short: no longer a record
    assert sink.send(batch) == [None, "InvalidRecord", None]
    assert [(stored.partition_key, stored.data) for stored in fake.records] == [
        ("key 0", records[0]), ("key 2", records[2])]


def test_records_are_encoded_a_chunk_at_a_time(tmp_path: Path) -> None:
    """Data longer than one chunk, of every length modulo 3, at an offset in its file: the
    body is the one made from the data in memory."""
    data = [random.Random(size).randbytes(size) for size in
            (3 * BASE64_CHUNK, 3 * BASE64_CHUNK + 1, 2 * BASE64_CHUNK + 2, 1, 2, 3)]
    paths = spool_files(tmp_path, [b"KDS1\x00\x01k" + d for d in data], ".kds")
    end = put_records_entry_end("k")
    body = RequestBody(put_records_head("s"))
    for path, d in zip(paths, data):
        body.add_file(path, 7, len(d), end)
    entries = b", ".join(b'{"Data": "' + base64.b64encode(d) + b'", "PartitionKey": "k"}'
                         for d in data)
    assert read_all(body) == b'{"StreamName": "s", "Records": [' + entries + b"]}"


def test_a_file_that_changed_adds_nothing(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(2 * BASE64_CHUNK)
    [path] = spool_files(tmp_path, [data], ".gz")
    body = RequestBody(put_record_batch_head("s"))
    with pytest.raises(InvalidRecordError, match="changed"):
        body.add_file(path, 0, len(data) - 1, b'"}')
    with pytest.raises(FileNotFoundError):
        body.add_file(tmp_path / "gone", 0, 3, b'"}')
    body.add_file(path, 0, len(data), b'"}')
    assert read_all(body) == (b'{"DeliveryStreamName": "s", "Records": [{"Data": "'
                              + base64.b64encode(data) + b'"}]}')


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_body_reads_the_same_in_pieces_of_any_size_and_after_seeking(
        tmp_path: Path) -> None:
    """botocore reads the body whole to sign it, seeks back, and urllib3 reads it again in
    blocks; a retry seeks to 0."""
    data = [random.Random(size).randbytes(size) for size in (BASE64_CHUNK + 5, 0, 1, 2, 7)]
    paths = spool_files(tmp_path, data, ".gz")
    body = RequestBody(put_record_batch_head("s"))
    for path, d in zip(paths, data):
        body.add_file(path, 0, len(d), b'"}')
    body.finish()
    whole = bytes(body.read())
    assert whole == put_record_batch_body("s", data)
    assert len(body) == len(whole) and body.tell() == len(whole)
    assert body.read() == b"" and body.read(10) == b""
    for size in (1, 2, 3, 4, 5, 7, 64, 4095, 16384, 1 << 20):
        assert body.seek(0) == 0
        pieces = list(iter(functools.partial(body.read, size), b""))  # as botocore reads it
        assert b"".join(pieces) == whole, size
        assert all(len(piece) == min(size, BODY_READ_LIMIT) for piece in pieces[:-1])
    # botocore's 1 MiB reads come back shorter: no buffer larger than the limit is made.
    assert len(whole) > BODY_READ_LIMIT
    body.seek(0)
    assert len(body.read(1 << 20)) == BODY_READ_LIMIT
    assert body.seek(-10, io.SEEK_END) == len(whole) - 10
    assert body.read() == whole[-10:]
    body.seek(100)
    assert body.seek(5, io.SEEK_CUR) == 105
    assert body.read(1000) == whole[105:1105]
    with pytest.raises(ValueError):
        body.seek(-1)
    body.close()


def test_the_body_holds_its_files_open_until_closed(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(1000)
    [path] = spool_files(tmp_path, [data], ".gz")
    before = open_descriptors()
    body = RequestBody(put_record_batch_head("s"))
    body.add_file(path, 0, len(data), b'"}')
    path.unlink()  # the entry reads what was added
    assert open_descriptors() == before + 1
    assert bytes(body.finish().read()) == put_record_batch_body("s", [data])
    body.close()
    assert open_descriptors() == before


def test_a_file_cut_short_while_the_call_is_made_fails_the_call(fake: FakeFirehose,
                                                                tmp_path: Path) -> None:
    records = gzip_records(2)
    paths = spool_files(tmp_path, records, ".gz")
    firehose = client_of(fake, "firehose")
    sink = FirehoseSink(firehose, "test-stream")
    batch = [sink.load(path) for path in paths]
    before = open_descriptors()

    def cut_short(**_: Any) -> None:  # after the body was made, before it is read
        os.truncate(paths[1], 10)

    firehose.meta.events.register("before-sign.firehose.PutRecordBatch", cut_short)
    assert sink.send(batch) == ["SpoolFileChangedError"] * 2
    assert "cut short" in sink.last_error
    assert fake.data() == []
    assert open_descriptors() == before
    firehose.meta.events.unregister("before-sign.firehose.PutRecordBatch", cut_short)
    assert sink.send(batch[:1]) == [None]  # the next call is not disturbed
    assert fake.data() == [records[0]]
