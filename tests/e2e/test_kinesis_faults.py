"""The real relay against a fault-injecting Kinesis (tests/fake_firehose.py): partial
failures, per-shard throttling, 5xx, dropped connections, lost answers and SIGKILL. Nothing
is lost; only records that failed are sent again; duplicates only where an answer was lost."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_port,
    free_ports,
    send_tcp,
    wait_for,
)
from tests.e2e.test_metrics import fetch, sample
from tests.fake_firehose import (
    INTERNAL_ERROR,
    PROVISIONED_THROUGHPUT_EXCEEDED,
    SERVICE_UNAVAILABLE,
    Accept,
    Delay,
    Drop,
    FakeFirehose,
    Partial,
    Throttle,
)

pytestmark = pytest.mark.e2e

STREAM = "logs"
SENDERS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
SEQUENCE = re.compile(r"(\S+) seq=(\d+)")
RATE_EXCEEDED = ("Rate exceeded for shard shardId-000000000001 in stream logs under account "
                 "123456789012.")


@pytest.fixture
def fake_kinesis(aws_env: dict[str, str]):
    with FakeFirehose(kinesis_streams={STREAM: 4}) as server:
        yield server


def relay_args(spool: Path, port: int, *extra: str) -> list[str]:
    return ["--kinesis-stream", STREAM, "--region", "us-east-1", "--spool-dir", str(spool),
            "--address", "127.0.0.1", "--tcp-port", str(port), "--flush-size", "65536",
            "--flush-interval", "0.2", *extra]


def stored_messages(fake: FakeFirehose) -> list[str]:
    messages = []
    for record in fake.records:
        assert record.stream == STREAM
        documents = decode_records(record.data)  # one each: cwl records are one gzip member
        assert [document["logStream"] for document in documents] == [record.partition_key]
        messages += [event["message"] for _, _, event in events_of(documents)]
    return messages


def send_from(source: str, port: int, messages: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"".join(m + b"\n" for m in messages))


def test_only_failed_records_are_sent_again(fake_kinesis: FakeFirehose, tmp_path: Path) -> None:
    cycle = [Partial({0, 2}, PROVISIONED_THROUGHPUT_EXCEEDED, RATE_EXCEEDED),
             Throttle(per_shard_records_per_call=2), INTERNAL_ERROR, Accept(),
             Partial(range(0, 500, 3), "InternalFailure", "Internal service failure."),
             SERVICE_UNAVAILABLE, Drop(), Accept()]
    fake_kinesis.set_policy("PutRecords", lambda number: cycle[number % len(cycle)])
    spool = tmp_path / "spool"
    port, metrics_port = free_ports(), free_port()
    relay = Relay(relay_args(spool, port, "--shutdown-timeout", "90", "--prometheus-port",
                             str(metrics_port)), env={"AWS_ENDPOINT_URL": fake_kinesis.url}
                  ).start()
    expected: list[bytes] = []
    try:
        for source in SENDERS:
            batch = [b"<13>1 - h app - - - %s msg %05d %s" % (source.encode(), i, b"z" * 200)
                     for i in range(3000)]
            send_from(source, port, batch)
            expected += batch
        wait_for(lambda: len(stored_messages(fake_kinesis)) == len(expected), 90, interval=0.5,
                 message="every message stored")
        text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1]
    finally:
        assert relay.stop(timeout=120) == 0, relay.log

    delivered = stored_messages(fake_kinesis)
    assert len(delivered) == len(set(delivered)), "a record was stored twice"
    assert sorted(delivered) == sorted(m.decode() for m in expected)
    data = [record.data for record in fake_kinesis.records]
    assert len(data) == len(set(data)), "a record that was stored was sent again"
    assert not list(spool.glob("record-*")), "every acknowledged file is deleted"
    calls = [call for call in fake_kinesis.calls if call.operation == "PutRecords"]
    assert {"ok", "partial", "InternalFailure", "dropped"} <= {call.outcome for call in calls}
    # Records sent = records stored + records that failed in a call that answered.
    failed = sum(call.records - call.stored for call in calls)
    assert sum(call.records for call in calls) == len(data) + failed

    kinesis = {"destination": "kinesis"}
    assert sample(text, "kinesyslog_upload_errors_total", code=PROVISIONED_THROUGHPUT_EXCEEDED,
                  **kinesis) > 0
    assert sample(text, "kinesyslog_batch_record_failed_total", **kinesis) > 0
    delivered_by_metric = sample(text, "kinesyslog_records_delivered_total", **kinesis)
    by_shard = {shard: count for shard, count in re.findall(
        r'^kinesyslog_kinesis_shard_records_total\{shard="([^"]+)"\} (\S+)$', text, re.M)}
    assert sum(float(count) for count in by_shard.values()) == delivered_by_metric == len(data)
    assert set(by_shard) == {record.shard_id for record in fake_kinesis.records}
    assert 0 < sample(text, "kinesyslog_kinesis_hot_key_share") <= 1
    assert "the busiest partition key, '127.0.0." in relay.log


def test_lost_answer_duplicates_only_that_call(fake_kinesis: FakeFirehose,
                                                tmp_path: Path) -> None:
    """The answer to the first call never comes (the relay's read timeout ends the wait):
    its records were stored and are sent again; nothing else is duplicated."""
    fake_kinesis.script("PutRecords", Delay(3600))
    spool = tmp_path / "spool"
    port = free_ports()
    messages = [b"<13>1 - h app - - - lost answer %04d" % i for i in range(500)]
    relay = Relay(relay_args(spool, port, "--shutdown-timeout", "60"),
                  env={"AWS_ENDPOINT_URL": fake_kinesis.url}).start()
    try:
        send_tcp("127.0.0.1", port, b"".join(m + b"\n" for m in messages))
        wait_for(lambda: any(c.outcome == "ok" for c in fake_kinesis.calls
                             if c.operation == "PutRecords"), 60, interval=0.2,
                 message="a call answered after the lost one")
    finally:
        assert relay.stop(timeout=90) == 0, relay.log
    late = [c for c in fake_kinesis.calls if c.operation == "PutRecords" and c.outcome == "late"]
    assert len(late) == 1
    delivered = Counter(stored_messages(fake_kinesis))
    assert set(delivered) == {m.decode() for m in messages}
    duplicated = sum(count - 1 for count in delivered.values())
    first_call_events = len(decode_records(fake_kinesis.records[0].data)[0]["logEvents"])
    assert 0 < duplicated <= first_call_events * late[0].records


MAX_SENT = 60_000  # per sender: bounded, whatever the machine's speed


class Sender(threading.Thread):
    """Numbered messages from one address until halted or MAX_SENT are sent; sendall blocks
    under back-pressure."""

    def __init__(self, source: str, port: int) -> None:
        super().__init__(daemon=True)
        self.source, self.port = source, port
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30,
                                          source_address=(self.source, 0)) as sock:
                while not self.halt.is_set() and self.sent < MAX_SENT:
                    sock.sendall(b"".join(b"<13>1 - h app - - - %s seq=%07d %s\n" % (
                        self.source.encode(), self.sent + i, os.urandom(100).hex().encode())
                        for i in range(200)))
                    self.sent += 200
        except OSError:
            pass  # the relay was killed: the test checks what it had read


def test_sigkill_during_failing_uploads_loses_nothing(fake_kinesis: FakeFirehose,
                                                      tmp_path: Path) -> None:
    cycle = [Partial(range(0, 500, 2), PROVISIONED_THROUGHPUT_EXCEEDED, RATE_EXCEEDED),
             INTERNAL_ERROR, Accept()]
    fake_kinesis.set_policy("PutRecords", lambda number: cycle[number % len(cycle)])
    spool = tmp_path / "spool"
    port = free_ports()
    env = {"AWS_ENDPOINT_URL": fake_kinesis.url}
    relay = Relay(relay_args(spool, port), env=env).start()
    senders = [Sender(source, port) for source in SENDERS]
    try:
        for sender in senders:
            sender.start()
        wait_for(lambda: sum(s.sent for s in senders) >= 30_000 and len(fake_kinesis.records) > 20,
                 120, message="messages flowing and some records stored")
        children = relay.children()
        for pid in [relay.pid, *children.values()]:
            os.kill(pid, signal.SIGKILL)
        relay.wait(30)
    finally:
        for sender in senders:
            sender.halt.set()
            sender.join(10)
        relay.kill()

    fake_kinesis.set_policy("PutRecords", None)
    relay = Relay(relay_args(spool, port), env=env).start()
    assert relay.stop(timeout=120) == 0, relay.log  # replays the ring, uploads the spool
    received: dict[str, set[int]] = {source: set() for source in SENDERS}
    for message in stored_messages(fake_kinesis):
        source, sequence = SEQUENCE.search(message).groups()
        received[source].add(int(sequence))
    for source in SENDERS:
        # TCP keeps order: everything up to the last message the relay took must be there.
        highest = max(received[source])
        assert highest >= 1000, "the relay should have read plenty before the kill"
        missing = set(range(highest + 1)) - received[source]
        assert not missing, f"{source}: {len(missing)} lost, e.g. {sorted(missing)[:10]}"
    assert not list(spool.glob("record-*"))
