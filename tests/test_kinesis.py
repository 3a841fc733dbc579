"""Kinesis Data Streams records (kinesyslog/kinesis.py): the spool file format, partition keys,
the records the worker makes in each format, and the hot-key window. KPL records are also
checked with the AWS library aws-kinesis-agg."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from kinesyslog import kinesis, records
from kinesyslog.kinesis import (
    KeyLoad,
    RecordMaker,
    cwl_partition_key,
    decode_spooled,
    encode_spooled,
    partition_key,
)
from kinesyslog.kpl import deaggregate
from kinesyslog.records import build_records, joined
from tests.kinesis_reader import aws_deaggregate

GROUP = "/kinesyslog/syslog/514"
RANDOM_KEY = re.compile(r"^[0-9a-f]{32}$")


def event(number: int, message: str = "hello") -> bytes:
    return json.dumps({"id": f"{number:056d}", "timestamp": 1519247270240 + number,
                       "message": message}).encode()


def batch(source: str, events: list[bytes], group: str = GROUP) -> kinesis.EventBatch:
    body, ends = joined(events)
    return group, source, body, ends


def spooled(contents: list[bytes]) -> list[tuple[str, bytes]]:
    return [decode_spooled(content) for content in contents]


def user_records(contents: list[bytes]) -> list[list[tuple[str, bytes]]]:
    """Per Kinesis record, its user records, checked to be the same by aws-kinesis-agg and
    to carry the record's own partition key."""
    out = []
    for key, data in spooled(contents):
        ours = deaggregate(key, data)
        assert [(k, d, True) for k, d in ours] == aws_deaggregate(key, data)
        assert {k for k, _ in ours} == {key}
        out.append(ours)
    return out


# The spool file.

def test_spool_file_exact_bytes() -> None:
    assert encode_spooled("10.0.0.1", b"\x1f\x8bdata") == b"KDS1\x00\x0810.0.0.1\x1f\x8bdata"
    assert encode_spooled("é", b"x") == b"KDS1\x00\x02\xc3\xa9x"
    assert decode_spooled(b"KDS1\x00\x0810.0.0.1\x1f\x8bdata") == ("10.0.0.1", b"\x1f\x8bdata")


@pytest.mark.parametrize(("content", "reason"), [
    (b"KDS2\x00\x01kx", "bad magic"),
    (b"KDS1\x00", "cut short in its header"),
    (b"KDS1\x00\x09short", "cut short in its partition key"),
    (b"KDS1\x00\x01\xffx", "not UTF-8"),
    (b"KDS1\x00\x00x", "partition key of 0 characters"),
    (b"KDS1\x01\x01" + b"k" * 257 + b"x", "partition key of 257 characters"),
    (b"KDS1\x00\x01k", "without data"),
    (b"KDS1\x00\x01k" + b"x" * (1024 * 1024), "1048577 bytes with the partition key"),
])
def test_spool_file_refused(content: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_spooled(content)


def test_largest_record_is_accepted() -> None:
    content = encode_spooled("k", b"x" * (1024 * 1024 - 1))
    assert decode_spooled(content) == ("k", b"x" * (1024 * 1024 - 1))


# Partition keys.

def test_partition_keys() -> None:
    assert partition_key("source", GROUP, "10.0.0.1") == "10.0.0.1"
    assert partition_key("group", GROUP, "10.0.0.1") == GROUP
    assert partition_key("source", GROUP, "") == "-"
    assert partition_key("source", GROUP, "s" * 300) == "s" * 256
    first, second = partition_key("random", GROUP, "a"), partition_key("random", GROUP, "a")
    assert RANDOM_KEY.match(first) and RANDOM_KEY.match(second) and first != second


def test_key_of_a_firehose_record() -> None:
    record = build_records("1", GROUP, '10.0.0."9', *joined([event(1)]))[0]
    assert cwl_partition_key("source", record) == '10.0.0."9'
    assert cwl_partition_key("group", record) == GROUP
    assert RANDOM_KEY.match(cwl_partition_key("random", record))
    assert RANDOM_KEY.match(cwl_partition_key("source", b"\x1f\x8b\x08 not gzip at all"))


# Records in the cwl format.

def test_cwl_records_are_firehose_records_with_a_key() -> None:
    events = [event(i) for i in range(3)]
    made = RecordMaker("123456789012", "cwl", "source", False).make(
        [batch("10.0.0.1", events), batch("10.0.0.2", events[:1])])
    assert spooled(made) == [
        ("10.0.0.1", build_records("123456789012", GROUP, "10.0.0.1", *joined(events))[0]),
        ("10.0.0.2", build_records("123456789012", GROUP, "10.0.0.2", *joined(events[:1]))[0]),
    ]
    document = json.loads(gzip.decompress(spooled(made)[0][1]))
    assert document["logStream"] == "10.0.0.1"
    assert [e["id"] for e in document["logEvents"]] == [f"{i:056d}" for i in range(3)]


def test_cwl_records_by_group_and_random() -> None:
    batches = [batch("10.0.0.1", [event(1)]), batch("10.0.0.2", [event(2)])]
    assert [key for key, _ in spooled(RecordMaker("1", "cwl", "group", False).make(batches))] \
        == [GROUP, GROUP]
    keys = [key for key, _ in spooled(RecordMaker("1", "cwl", "random", False).make(batches))]
    assert all(RANDOM_KEY.match(key) for key in keys) and len(set(keys)) == 2


# Records in the kpl format.

def test_kpl_user_record_exact_bytes() -> None:
    made = RecordMaker("1", "kpl", "source", False).make(
        [batch("10.0.0.1", [b'{"id": "7", "timestamp": 5, "message": "a\\nb"}'])])
    assert user_records(made) == [[("10.0.0.1", b'{"logGroup": "/kinesyslog/syslog/514", '
                                    b'"logStream": "10.0.0.1", "id": "7", "timestamp": 5, '
                                    b'"message": "a\\nb"}')]]


def test_kpl_by_source_one_aggregate_per_sender() -> None:
    events = [event(i) for i in range(5)]
    made = RecordMaker("1", "kpl", "source", False).make(
        [batch("10.0.0.1", events), batch("10.0.0.2", events[:2])])
    found = user_records(made)
    assert [[json.loads(data)["id"] for _, data in record] for record in found] == [
        [f"{i:056d}" for i in range(5)], [f"{i:056d}" for i in range(2)]]
    assert [record[0][0] for record in found] == ["10.0.0.1", "10.0.0.2"]


def test_kpl_by_group_puts_senders_together_in_order() -> None:
    made = RecordMaker("1", "kpl", "group", False).make(
        [batch("10.0.0.1", [event(1), event(2)]), batch("10.0.0.2", [event(3)]),
         batch("10.0.0.1", [event(4)], group="/kinesyslog/gelf/12201")])
    found = user_records(made)
    assert [record[0][0] for record in found] == [GROUP, "/kinesyslog/gelf/12201"]
    assert [(json.loads(d)["logStream"], json.loads(d)["id"][-1]) for _, d in found[0]] == [
        ("10.0.0.1", "1"), ("10.0.0.1", "2"), ("10.0.0.2", "3")]


def test_kpl_random_keys_change_with_each_record() -> None:
    message = "m" * 100_000
    events = [event(i, message) for i in range(25)]  # about 2.5 MB: three records
    made = RecordMaker("1", "kpl", "random", False).make([batch("10.0.0.1", events)])
    found = user_records(made)
    assert len(found) == 3
    keys = [record[0][0] for record in found]
    assert all(RANDOM_KEY.match(key) for key in keys) and len(set(keys)) == 3
    ids = [json.loads(data)["id"] for record in found for _, data in record]
    assert ids == [f"{i:056d}" for i in range(25)]
    assert all(len(content) - 6 <= 1024 * 1024 for content in made)


def test_kpl_compressed_user_records() -> None:
    made = RecordMaker("1", "kpl", "source", True).make(
        [batch("10.0.0.1", [event(1), event(2)])])
    documents = [json.loads(gzip.decompress(data)) for _, data in user_records(made)[0]]
    assert documents == [{"logGroup": GROUP, "logStream": "10.0.0.1", "id": f"{i:056d}",
                          "timestamp": 1519247270240 + i, "message": "hello"} for i in (1, 2)]


def test_kpl_event_too_large_for_a_record_is_shortened() -> None:
    """A 900 KiB message of control characters is 5.4 MB once JSON-escaped."""
    before = records.truncated_events
    message = "\x01" * (900 * 1024)
    huge = json.dumps({"id": "1", "timestamp": 1, "message": message}).encode()
    made = RecordMaker("1", "kpl", "source", False).make(
        [batch("10.0.0.1", [event(0), huge, event(2)])])
    found = [data for record in user_records(made) for _, data in record]
    messages = [json.loads(data)["message"] for data in found]
    assert messages[0] == messages[2] == "hello"
    assert message.startswith(messages[1]) and 150_000 < len(messages[1]) < len(message)
    assert all(len(content) - 6 <= 1024 * 1024 for content in made)
    assert records.truncated_events == before + 1


def test_kpl_compressed_event_of_the_largest_size_stays_whole() -> None:
    message = "".join(chr(1 + (i * 7919) % 31) for i in range(900 * 1024))
    huge = json.dumps({"id": "1", "timestamp": 1, "message": message}).encode()
    made = RecordMaker("1", "kpl", "source", True).make([batch("10.0.0.1", [huge])])
    [[(_, data)]] = user_records(made)
    assert json.loads(gzip.decompress(data))["message"] == message


def test_unknown_format_or_key_mode() -> None:
    with pytest.raises(ValueError, match="format"):
        RecordMaker("1", "json", "source", False)
    with pytest.raises(ValueError, match="partition key mode"):
        RecordMaker("1", "cwl", "host", False)


# The hot key.

def test_key_load_window() -> None:
    load = KeyLoad(window=60)
    assert load.busiest(0) == ("", 0.0, 0.0)
    load.add(0, "a", 600)
    load.add(10, "b", 300)
    load.add(20, "b", 400)
    assert load.busiest(30) == ("b", 700 / 60, 700 / 1300)
    assert load.busiest(60) == ("b", 700 / 60, 1.0)  # a's bytes left the window
    assert load.busiest(81) == ("", 0.0, 0.0)
