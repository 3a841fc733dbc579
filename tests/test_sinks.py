"""The request bodies the Firehose and Kinesis sinks build themselves, and what each sink
makes of every kind of spool file (kinesyslog/sinks.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import botocore.session
import pytest
from botocore.serialize import create_serializer

from kinesyslog import kinesis, kpl
from kinesyslog.records import build_records, joined
from kinesyslog.sinks import (
    DirectorySink,
    FirehoseSink,
    InvalidRecordError,
    KinesisSink,
    Record,
    put_record_batch_body,
    put_records_body,
)


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
    batch = [Record(Path("a"), b"\x1f\x8b", "10.0.0.1"), Record(Path("b"), b"x", 'k"é')]
    assert put_records_body("s", batch) == (
        b'{"StreamName": "s", "Records": [{"Data": "H4s=", "PartitionKey": "10.0.0.1"}, '
        b'{"Data": "eA==", "PartitionKey": "k\\"\\u00e9"}]}')


def test_put_records_the_same_request_as_botocore_serializes() -> None:
    records = [(bytes(range(256)) * 40, "10.0.0.1"), (b"x", "/kinesyslog/syslog/514"),
               ("grüße".encode(), 'odd "key" \\ ü')]
    for stream in ["logs", "a.b_c-d"]:
        ours = put_records_body(stream, [Record(Path("f"), d, k) for d, k in records])
        assert json.loads(ours) == json.loads(botocore_put_records_body(stream, records))


def test_record_size_counts_the_key_in_utf8() -> None:
    assert Record(Path("f"), b"abc", "é").size == 5
    assert Record(Path("f"), b"abc").size == 3


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
    firehose = sink.load(files["firehose"])  # left by --stream: its key from its header
    assert firehose.partition_key == "10.0.0.9" and firehose.data == files["firehose"].read_bytes()
    assert sink.load(files["cwl"]) == firehose.__class__(files["cwl"], firehose.data, "10.0.0.9")
    kpl_record = sink.load(files["kpl"])
    assert kpl_record.partition_key == "10.0.0.9" and kpl_record.data.startswith(kpl.MAGIC)
    with pytest.raises(InvalidRecordError, match="cut short in its partition key"):
        sink.load(files["broken"])


def test_firehose_sink_sends_cwl_but_not_kpl(kinds_of_spool_files: dict[str, Path]) -> None:
    sink = FirehoseSink(botocore.session.get_session().create_client(
        "firehose", region_name="us-east-1"), "s")
    files = kinds_of_spool_files
    assert sink.load(files["cwl"]).data == files["firehose"].read_bytes()
    assert sink.load(files["firehose"]).partition_key == ""
    with pytest.raises(InvalidRecordError, match="only --kinesis-stream can send it"):
        sink.load(files["kpl"])


def test_directory_sink_moves_kinesis_files_whole(kinds_of_spool_files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")
    files = kinds_of_spool_files
    content = files["kpl"].read_bytes()
    record = sink.load(files["kpl"])
    assert record.data == content
    assert sink.send([record]) == [None]
    assert (tmp_path / "out" / files["kpl"].name).read_bytes() == content
