"""The fake's Kinesis Data Streams side (tests/fake_firehose.py) against a real boto3 client:
shards by MD5 of the partition key, sequence numbers, per-record faults, Kinesis' limits."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from tests.fake_firehose import (
    PROVISIONED_THROUGHPUT_EXCEEDED,
    THROTTLING,
    Delay,
    FakeFirehose,
    Partial,
    Throttle,
)

ACCOUNT = "123456789012"
MIB = 1024 * 1024


@pytest.fixture
def fake(aws_env: dict[str, str]) -> Iterator[FakeFirehose]:
    with FakeFirehose(kinesis_streams={"logs": 4, "one": 1}) as server:
        yield server


def kinesis(fake: FakeFirehose, *, validate: bool = True, read_timeout: float = 10.0) -> Any:
    return boto3.Session().client(
        "kinesis", endpoint_url=fake.url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2,
                      read_timeout=read_timeout, parameter_validation=validate))


def shard_of(key: str, shards: list[dict[str, Any]]) -> str:
    """Kinesis' rule, from ListShards' ranges: the shard whose range holds MD5(key)."""
    hash_key = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest(), "big")
    found = [shard["ShardId"] for shard in shards
             if int(shard["HashKeyRange"]["StartingHashKey"]) <= hash_key
             <= int(shard["HashKeyRange"]["EndingHashKey"])]
    assert len(found) == 1
    return found[0]


def entries(keys: list[str]) -> list[dict[str, Any]]:
    return [{"Data": f"record {i}".encode(), "PartitionKey": key} for i, key in enumerate(keys)]


def test_records_go_to_the_shard_of_their_key(fake: FakeFirehose) -> None:
    client = kinesis(fake)
    shards = client.list_shards(StreamName="logs")["Shards"]
    assert [s["ShardId"] for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    assert [int(s["HashKeyRange"]["StartingHashKey"]) for s in shards] == [
        i * 2**126 for i in range(4)]
    assert int(shards[-1]["HashKeyRange"]["EndingHashKey"]) == 2**128 - 1
    keys = [f"10.0.0.{i}" for i in range(30)] + ["é✓ key", "x" * 256]
    answer = client.put_records(StreamName="logs", Records=entries(keys))
    assert answer["FailedRecordCount"] == 0
    assert answer["EncryptionType"] == "NONE"
    expected = [shard_of(key, shards) for key in keys]
    assert [r["ShardId"] for r in answer["Records"]] == expected
    assert len(set(expected)) == 4
    stored = fake.records
    assert [(r.stream, r.partition_key, r.shard_id) for r in stored] == [
        ("logs", key, shard) for key, shard in zip(keys, expected)]
    assert [r.data for r in stored] == [e["Data"] for e in entries(keys)]
    assert [r.sequence_number for r in stored] == [
        r["SequenceNumber"] for r in answer["Records"]]
    # ExplicitHashKey overrides the key's hash; StreamARN names the stream as well.
    arn = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/logs"
    answer = client.put_records(StreamARN=arn, Records=[
        {"Data": b"x", "PartitionKey": "10.0.0.0", "ExplicitHashKey": str(2**128 - 1)}])
    assert answer["Records"][0]["ShardId"] == "shardId-000000000003"
    assert fake.records[-1].explicit_hash_key == str(2**128 - 1)
    assert [c.operation for c in fake.calls] == ["ListShards", "PutRecords", "PutRecords"]


def test_sequence_numbers_increase_per_shard(fake: FakeFirehose) -> None:
    client = kinesis(fake)
    keys = [f"host-{i}" for i in range(40)]
    for _ in range(3):
        client.put_records(StreamName="logs", Records=entries(keys))
    assert fake.wait_for_records(120, timeout=5)
    by_shard: dict[str, list[int]] = {}
    for record in fake.records:
        assert len(record.sequence_number) == 56
        by_shard.setdefault(record.shard_id, []).append(int(record.sequence_number))
    assert len(by_shard) == 4
    for numbers in by_shard.values():
        assert numbers == sorted(set(numbers))


def test_partial_fails_exactly_those_positions(fake: FakeFirehose) -> None:
    message = (f"Rate exceeded for shard shardId-000000000001 in stream logs under account "
               f"{ACCOUNT}.")
    fake.script("PutRecords", Partial({1, 3}, PROVISIONED_THROUGHPUT_EXCEEDED, message))
    client = kinesis(fake)
    keys = [f"k{i}" for i in range(5)]
    answer = client.put_records(StreamName="logs", Records=entries(keys))
    assert answer["FailedRecordCount"] == 2
    results = answer["Records"]
    assert [i for i, r in enumerate(results) if "ErrorCode" in r] == [1, 3]
    assert results[1] == {"ErrorCode": PROVISIONED_THROUGHPUT_EXCEEDED, "ErrorMessage": message}
    assert all("SequenceNumber" in results[i] for i in (0, 2, 4))
    assert [r.partition_key for r in fake.records] == ["k0", "k2", "k4"]
    assert [(c.outcome, c.records, c.stored) for c in fake.calls] == [("partial", 5, 3)]


def test_throttle_fails_records_beyond_the_shards_share(fake: FakeFirehose) -> None:
    fake.script("PutRecords", Throttle(per_shard_records_per_call=2))
    answer = kinesis(fake).put_records(StreamName="one", Records=entries(["a"] * 5))
    assert answer["FailedRecordCount"] == 3
    assert [r.get("ErrorCode") for r in answer["Records"]] == [
        None, None, *[PROVISIONED_THROUGHPUT_EXCEEDED] * 3]
    assert answer["Records"][2]["ErrorMessage"] == (
        f"Rate exceeded for shard shardId-000000000000 in stream one under account {ACCOUNT}.")
    assert len(fake.records) == 2


def _records(count: int, data_bytes: int, key: str = "k") -> list[dict[str, Any]]:
    return [{"Data": b"d" * data_bytes, "PartitionKey": key} for _ in range(count)]


@pytest.mark.parametrize(("records", "code"), [
    pytest.param([], "ValidationException", id="no-record"),
    pytest.param(_records(501, 1), "ValidationException", id="501-records"),
    pytest.param(_records(1, 1, ""), "ValidationException", id="empty-key"),
    pytest.param(_records(1, 1, "k" * 257), "ValidationException", id="257-char-key"),
    pytest.param(_records(1, MIB + 1), "ValidationException", id="data-over-1-MiB"),
    pytest.param(_records(1, MIB), "InvalidArgumentException", id="data-and-key-over-1-MiB"),
    pytest.param(_records(1, MIB - 511, "é" * 256), "InvalidArgumentException",
                 id="utf8-key-counts-its-bytes"),
    pytest.param(_records(6, MIB - 1), "InvalidArgumentException", id="call-over-5-MiB"),
    pytest.param([{"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": str(2**128)}],
                 "InvalidArgumentException", id="explicit-hash-key-out-of-range"),
])
def test_limits_are_refused(fake: FakeFirehose, records: list[dict[str, Any]],
                            code: str) -> None:
    client = kinesis(fake, validate=False)
    with pytest.raises(ClientError) as raised:
        client.put_records(StreamName="logs", Records=records)
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fake.records == []
    assert [(c.operation, c.outcome, c.stored) for c in fake.calls] == [
        ("PutRecords", code, 0)]


def test_limits_themselves_are_accepted(fake: FakeFirehose) -> None:
    client = kinesis(fake)
    for records in (_records(500, 1, "k" * 256), _records(1, MIB - 512, "é" * 256),
                    _records(5, MIB - 1)):
        answer = client.put_records(StreamName="logs", Records=records)
        assert answer["FailedRecordCount"] == 0
    assert len(fake.records) == 506


def test_describe_stream_summary(fake: FakeFirehose) -> None:
    client = kinesis(fake)
    summary = client.describe_stream_summary(StreamName="logs")["StreamDescriptionSummary"]
    assert summary["StreamARN"] == f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/logs"
    assert (summary["StreamStatus"], summary["OpenShardCount"]) == ("ACTIVE", 4)
    assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        client.describe_stream_summary(StreamName="nope")
    assert raised.value.response["Error"]["Message"] == (
        f"Stream nope under account {ACCOUNT} not found.")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.put_records(StreamName="nope", Records=entries(["k"]))
    fake.script("DescribeStreamSummary", THROTTLING)
    with pytest.raises(ClientError, match="ThrottlingException"):
        client.describe_stream_summary(StreamName="logs")


def test_a_lost_answer_still_stores(fake: FakeFirehose) -> None:
    since = time.monotonic()
    fake.script("PutRecords", Delay(30))
    client = kinesis(fake, read_timeout=0.5)
    with pytest.raises(ReadTimeoutError):
        client.put_records(StreamName="logs", Records=entries(["a", "b"]))
    assert [r.partition_key for r in fake.records] == ["a", "b"]
    assert fake.first_accepted_after(since, "PutRecords") is None
    client.put_records(StreamName="logs", Records=entries(["c"]))
    assert [c.outcome for c in fake.calls] == ["late", "ok"]
    assert fake.first_accepted_after(since, "PutRecords") == fake.calls[1].at
    assert fake.first_accepted_after(since) is None  # no PutRecordBatch
