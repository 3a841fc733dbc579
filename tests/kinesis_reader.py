"""Reads what reached a Kinesis data stream, the way consumers do, independently of the relay:
GetRecords on every shard, and de-aggregation by the AWS library aws-kinesis-agg."""

from __future__ import annotations

import base64
import gzip
import importlib
import json
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

GZIP_MAGIC = b"\x1f\x8b\x08"
MAX_GET_RECORDS_CALLS = 1000  # per shard: far more than any test writes


def _import_aws_kinesis_agg() -> tuple[ModuleType, ModuleType, ModuleType]:
    # Its modules put their own folder and site-packages at the front of sys.path (to import
    # their generated protobuf code by a top-level name), where graypy's top-level "tests"
    # package would then hide ours: keep sys.path as it was.
    saved = sys.path[:]
    try:
        return (importlib.import_module("aws_kinesis_agg.deaggregator"),
                importlib.import_module("aws_kinesis_agg.aggregator"),
                importlib.import_module("aws_kinesis_agg.messages_pb2"))
    finally:
        sys.path[:] = saved


aws_deaggregator, aws_aggregator, aws_messages = _import_aws_kinesis_agg()


def aws_deaggregate(partition_key: str, data: bytes) -> list[tuple[str, bytes, bool]]:
    """(partition key, data, aggregated) of each user record, as aws-kinesis-agg finds them in
    a Lambda event (it passes a record with a wrong MD5 or protobuf on whole, not aggregated)."""
    event = {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": partition_key,
                         "sequenceNumber": "4959033827149025660855969253836157109592157598913",
                         "approximateArrivalTimestamp": 1545084650.987,
                         "data": base64.b64encode(data).decode()}}
    return [(r["kinesis"]["partitionKey"], base64.b64decode(r["kinesis"]["data"]),
             bool(r["kinesis"].get("aggregated")))
            for r in aws_deaggregator.deaggregate_records([event])]


@dataclass(frozen=True)
class StreamRecord:
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


def read_stream(kinesis: Any, stream: str) -> list[StreamRecord]:
    """Every record of every shard from TRIM_HORIZON, by shard, in sequence order."""
    records: list[StreamRecord] = []
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"],
            ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for _ in range(MAX_GET_RECORDS_CALLS):
            answer = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            records += [StreamRecord(shard["ShardId"], r["SequenceNumber"], r["PartitionKey"],
                                     r["Data"]) for r in answer["Records"]]
            iterator = answer.get("NextShardIterator")
            if not answer["Records"] or not iterator:
                break
        else:
            raise AssertionError(f"shard {shard['ShardId']} did not end")
    for earlier, later in zip(records, records[1:]):
        if earlier.shard_id == later.shard_id:
            assert int(earlier.sequence_number) < int(later.sequence_number)
    return records


@dataclass(frozen=True)
class UserRecord:
    record: StreamRecord  # the Kinesis record it came in
    partition_key: str
    event: dict[str, Any]  # logGroup, logStream, id, timestamp, message


def kpl_events(records: list[StreamRecord], compressed: bool) -> list[UserRecord]:
    """The events of KPL records, each record checked to be aggregated and every user record
    to be an event in JSON (gzipped if ``compressed``)."""
    out = []
    for record in records:
        for key, data, aggregated in aws_deaggregate(record.partition_key, record.data):
            assert aggregated, f"record {record.sequence_number} is not KPL-aggregated"
            if compressed:
                assert data.startswith(GZIP_MAGIC)
                data = gzip.decompress(data)
            event = json.loads(data)
            assert list(event) == ["logGroup", "logStream", "id", "timestamp", "message"]
            out.append(UserRecord(record, key, event))
    return out


def cwl_documents(records: list[StreamRecord]) -> list[tuple[StreamRecord, dict[str, Any]]]:
    """The CloudWatch-Logs-style document of each record (one gzip member each)."""
    out = []
    for record in records:
        assert record.data.startswith(GZIP_MAGIC)
        out.append((record, json.loads(gzip.decompress(record.data))))
    return out
