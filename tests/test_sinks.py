"""The PutRecordBatch body the Firehose sink builds itself (kinesyslog/sinks.py)."""

from __future__ import annotations

import base64
import json

import botocore.session
from botocore.serialize import create_serializer

from kinesyslog.sinks import put_record_batch_body


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
