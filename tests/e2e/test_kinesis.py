"""End to end: the real relay into a real moto_server Kinesis data stream of several shards,
read back with GetRecords (and aws-kinesis-agg for KPL records), message by message."""

from __future__ import annotations

import hashlib
import re
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.relay_process import Relay, free_ports, send_udp
from tests.kinesis_reader import StreamRecord, cwl_documents, kpl_events, read_stream

pytestmark = pytest.mark.e2e

STREAM = "logs"
SHARDS = 4
TCP_SENDERS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
UDP_SENDER = "127.0.0.4"
MESSAGES = 300  # per TCP sender: ~120 KB each, over several flushes of --flush-size 64 KiB
UDP_MESSAGES = 50
RANDOM_KEY = re.compile(r"^[0-9a-f]{32}$")


def kinesis_client(moto) -> Any:
    return boto3.client("kinesis", endpoint_url=moto.endpoint_url, region_name="us-east-1")


@pytest.fixture
def kinesis_stream(moto_server) -> Any:
    kinesis = kinesis_client(moto_server)
    kinesis.create_stream(StreamName=STREAM, ShardCount=SHARDS)
    return moto_server


def shard_of(kinesis: Any, key: str) -> str:
    """The shard whose hash key range holds MD5(key): Kinesis' rule."""
    hashed = int(hashlib.md5(key.encode()).hexdigest(), 16)
    for shard in kinesis.list_shards(StreamName=STREAM)["Shards"]:
        low, high = shard["HashKeyRange"]["StartingHashKey"], shard["HashKeyRange"]["EndingHashKey"]
        if int(low) <= hashed <= int(high):
            return shard["ShardId"]
    raise AssertionError(f"no shard for {key!r}")


def send_from(source: str, port: int, messages: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"".join(m + b"\n" for m in messages))


def send_udp_from(source: str, port: int, messages: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for message in messages:
            sock.sendto(message, ("127.0.0.1", port))


def expected_messages() -> dict[str, list[str]]:
    sent = {source: [f"<13>1 2026-12-07T10:00:00.{i:03d}Z host app - - - {source} message "
                     f"{i:04d} " + "x" * 300 for i in range(MESSAGES)] for source in TCP_SENDERS}
    sent[UDP_SENDER] = [f"<13>1 2026-12-07T10:00:01Z host app - - - udp {i}"
                        for i in range(UDP_MESSAGES)]
    return sent


def run_relay(moto, tmp_path: Path, *options: str) -> tuple[dict[str, list[str]], int]:
    port = free_ports()
    relay = Relay(["--kinesis-stream", STREAM, *options, "--region", "us-east-1",
                   "--address", "127.0.0.1", "--spool-dir", str(tmp_path / "spool"),
                   "--tcp-port", str(port), "--udp-port", str(port), "--flush-interval", "0.5",
                   "--flush-size", "65536", "--shutdown-timeout", "20"],
                  env=moto.env).start()
    sent = expected_messages()
    try:
        for source in TCP_SENDERS:
            send_from(source, port, [m.encode() for m in sent[source]])
        send_udp_from(UDP_SENDER, port, [m.encode() for m in sent[UDP_SENDER]])
    finally:
        assert relay.stop() == 0, relay.log
    assert "data stream logs in region us-east-1: ACTIVE, 4 open shard(s)" in relay.log
    return sent, port


def check_arrived(sent: dict[str, list[str]], port: int,
                  events: list[tuple[StreamRecord, str, dict[str, Any]]], ordered: bool) -> None:
    """Every message once, with its group and stream; in order per sender if ``ordered``
    (records by shard and sequence number, events in record order)."""
    received: dict[str, list[str]] = defaultdict(list)
    for _, _, event in events:
        assert event["logGroup"] == f"/kinesyslog/syslog/{port}"
        received[event["logStream"]].append(event["message"])
    assert sorted(received) == sorted(sent)
    for source, messages in sent.items():
        if ordered:
            assert received[source] == messages, source
        else:
            assert sorted(received[source]) == sorted(messages), source


def check_key(kinesis: Any, mode: str, record: StreamRecord, key: str,
              event: dict[str, Any]) -> None:
    if mode == "source":
        assert key == event["logStream"]
    elif mode == "group":
        assert key == event["logGroup"]
    else:
        assert RANDOM_KEY.match(key), key
    assert record.shard_id == shard_of(kinesis, record.partition_key)


@pytest.mark.parametrize("mode", ["source", "group", "random"])
def test_cwl_records(kinesis_stream, tmp_path: Path, mode: str) -> None:
    sent, port = run_relay(kinesis_stream, tmp_path, "--partition-key", mode)
    kinesis = kinesis_client(kinesis_stream)
    records = read_stream(kinesis, STREAM)
    events = []
    for record, document in cwl_documents(records):
        assert document["owner"] == "123456789012"
        assert document["subscriptionFilters"] == [document["logGroup"]]
        for event in document["logEvents"]:
            event = {"logGroup": document["logGroup"], "logStream": document["logStream"],
                     **event}
            check_key(kinesis, mode, record, record.partition_key, event)
            events.append((record, record.partition_key, event))
    check_arrived(sent, port, events, ordered=mode != "random")
    assert len(records) > len(sent)  # several records per sender: the order is across records
    if mode == "random":
        assert len({record.partition_key for record in records}) == len(records)


@pytest.mark.parametrize("mode,compress", [("source", False), ("group", False),
                                           ("random", False), ("source", True)])
def test_kpl_records(kinesis_stream, tmp_path: Path, mode: str, compress: bool) -> None:
    options = ["--kinesis-format", "kpl", "--partition-key", mode]
    sent, port = run_relay(kinesis_stream, tmp_path, *options,
                           *(["--kinesis-compress"] if compress else []))
    kinesis = kinesis_client(kinesis_stream)
    records = read_stream(kinesis, STREAM)
    user_records = kpl_events(records, compressed=compress)
    events = []
    for user_record in user_records:
        # Every user record of an aggregated record has its key: the KCL keeps them all.
        assert user_record.partition_key == user_record.record.partition_key
        check_key(kinesis, mode, user_record.record, user_record.partition_key,
                  user_record.event)
        assert len(user_record.event["id"]) == 56
        events.append((user_record.record, user_record.partition_key, user_record.event))
    check_arrived(sent, port, events, ordered=mode != "random")
    assert len(records) >= len({key for _, key, _ in events})
    assert max(len(record.data) + len(record.partition_key) for record in records) <= 1 << 20


def test_missing_stream_exits_78(moto_server, tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(["--kinesis-stream", "nope", "--region", "us-east-1", "--spool-dir",
                   str(tmp_path / "spool"), "--tcp-port", str(port)], env=moto_server.env)
    relay.start(wait_ready=False)
    assert relay.wait(30) == 78
    assert ("--kinesis-stream nope: data stream not found in region us-east-1; create it or "
            "fix --kinesis-stream/--region") in relay.log


def test_service_endpoint_variable(kinesis_stream, tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL_KINESIS (and _STS) instead of --endpoint-url or AWS_ENDPOINT_URL."""
    env = {key: value for key, value in kinesis_stream.env.items() if key != "AWS_ENDPOINT_URL"}
    env["AWS_ENDPOINT_URL_KINESIS"] = env["AWS_ENDPOINT_URL_STS"] = kinesis_stream.endpoint_url
    port = free_ports()
    relay = Relay(["--kinesis-stream", STREAM, "--region", "us-east-1", "--address", "127.0.0.1",
                   "--spool-dir", str(tmp_path / "spool"), "--udp-port", str(port),
                   "--flush-interval", "0.2"], env=env).start()
    try:
        send_udp("127.0.0.1", port, [b"<13>via the service's own endpoint variable"])
    finally:
        assert relay.stop() == 0, relay.log
    records = read_stream(kinesis_client(kinesis_stream), STREAM)
    documents = [document for _, document in cwl_documents(records)]
    assert [e["message"] for d in documents for e in d["logEvents"]] == [
        "<13>via the service's own endpoint variable"]
