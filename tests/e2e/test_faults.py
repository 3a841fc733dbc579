"""The real relay against a fault-injecting Firehose: partial failures, throttling, 5xx."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    octet_counted,
    send_tcp,
    send_udp,
    wait_for,
)
from tests.e2e.test_metrics import fetch
from tests.fake_firehose import (
    INTERNAL_ERROR,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    Accept,
    FakeFirehose,
    Partial,
)

pytestmark = pytest.mark.e2e


def args_for(spool: Path, port: int, *extra: str) -> list[str]:
    return ["--stream", "test-stream", "--region", "us-east-1", "--spool-dir", str(spool),
            "--address", "127.0.0.1", "--tcp-port", str(port), "--udp-port", str(port),
            "--flush-size", "65536", "--flush-interval", "0.2", *extra]


def delivered_messages(fake: FakeFirehose) -> list[str]:
    return [event["message"] for _, _, event in events_of(decode_records(b"".join(fake.data())))]


def test_every_record_exactly_once_through_faults(fake_firehose: FakeFirehose,
                                                  tmp_path: Path) -> None:
    cycle = [Partial({0, 2}), THROTTLING, INTERNAL_ERROR, Accept(), Partial(range(0, 500, 3)),
             SERVICE_UNAVAILABLE, Accept()]
    fake_firehose.set_policy("PutRecordBatch", lambda number: cycle[number % len(cycle)])
    spool = tmp_path / "spool"
    port = free_ports()
    relay = Relay(args_for(spool, port, "--shutdown-timeout", "90"),
                  env={"AWS_ENDPOINT_URL": fake_firehose.url}).start()
    expected: list[bytes] = []
    try:
        for connection in range(3):
            batch = [b"<13>1 - h app - - - conn %d msg %05d %s" % (connection, i, b"z" * 200)
                     for i in range(4000)]
            send_tcp("127.0.0.1", port, octet_counted(batch) if connection % 2 else
                     b"".join(m + b"\n" for m in batch))
            expected += batch
        datagrams = [b"<13>udp datagram %d" % i for i in range(200)]
        send_udp("127.0.0.1", port, datagrams)
        expected += datagrams
    finally:
        assert relay.stop(timeout=120) == 0, relay.log

    delivered = delivered_messages(fake_firehose)
    assert len(delivered) == len(set(delivered)), "a record was delivered twice"
    assert sorted(delivered) == sorted(m.decode() for m in expected)
    assert not list(spool.glob("record-*.gz")), "every acknowledged file is deleted"
    outcomes = {call.outcome for call in fake_firehose.calls if call.operation == "PutRecordBatch"}
    assert {"ok", "partial", "ThrottlingException", "InternalFailure"} <= outcomes


def test_outage_keeps_every_file_until_acknowledged(fake_firehose: FakeFirehose,
                                                    tmp_path: Path) -> None:
    fake_firehose.set_policy("PutRecordBatch", lambda number: INTERNAL_ERROR)
    spool = tmp_path / "spool"
    port = free_ports()
    env = {"AWS_ENDPOINT_URL": fake_firehose.url}
    messages = [b"<13>1 - h app - - - during outage %04d" % i for i in range(3000)]
    relay = Relay(args_for(spool, port, "--shutdown-timeout", "1"), env=env).start()
    try:
        send_tcp("127.0.0.1", port, b"".join(m + b"\n" for m in messages))
    finally:
        assert relay.stop() == 0, relay.log
    assert fake_firehose.records == []
    assert any(call.outcome == "InternalFailure" for call in fake_firehose.calls)
    spooled = [e["message"] for path in sorted(spool.glob("record-*.gz"))
               for _, _, e in events_of(decode_records(path.read_bytes()))]
    assert sorted(spooled) == sorted(m.decode() for m in messages)

    fake_firehose.set_policy("PutRecordBatch", None)
    relay = Relay(args_for(spool, port), env=env).start()
    assert relay.stop() == 0, relay.log
    assert sorted(delivered_messages(fake_firehose)) == sorted(m.decode() for m in messages)
    assert not list(spool.glob("record-*.gz"))


def test_missing_stream_exits_78_before_binding(fake_firehose: FakeFirehose,
                                                 tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(["--stream", "no-such-stream", "--region", "us-east-1", "--spool-dir",
                   str(tmp_path), "--tcp-port", str(port), "--address", "127.0.0.1"],
                  env={"AWS_ENDPOINT_URL": fake_firehose.url}).start(wait_ready=False)
    assert relay.wait(60) == 78
    errors = [line for line in relay.lines if "error" in line.lower()]
    assert len(errors) == 1 and "--stream no-such-stream" in errors[0], relay.log
    assert "Traceback" not in relay.log
    assert "listening" not in relay.log


class BlockingSender(threading.Thread):
    """Sends numbered incompressible messages over one TCP connection; sendall blocks while
    the relay applies back-pressure."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.sent = 0
        self.error: BaseException | None = None

    def message(self, number: int) -> bytes:
        return b"<13>1 - h app - - - seq=%07d %s" % (number, os.urandom(400).hex().encode())

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=120) as sock:
                while self.sent < self.count:
                    batch = [self.message(self.sent + i) for i in range(100)]
                    sock.sendall(b"".join(m + b"\n" for m in batch))
                    self.sent += len(batch)
        except BaseException as error:  # reported by the test
            self.error = error


def test_spool_full_pauses_tcp_and_drops_udp(fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    fake_firehose.set_policy("PutRecordBatch", lambda number: INTERNAL_ERROR)
    spool = tmp_path / "spool"
    port, metrics_port = free_ports(), free_ports()
    relay = Relay(args_for(spool, port, "--spool-max-size", str(1024 * 1024), "--flush-size",
                           str(1024 * 1024), "--shutdown-timeout", "60",
                           "--prometheus-port", str(metrics_port)),
                  env={"AWS_ENDPOINT_URL": fake_firehose.url}).start()
    sender = BlockingSender(port, 150_000)  # ~125 MB: more than the spool cap and the ring
    try:
        sender.start()
        wait_for(lambda: "pausing intake" in relay.log, 60, message="spool cap reached")

        def stalled() -> bool:
            before = sender.sent
            time.sleep(1.0)
            return sender.sent == before and sender.sent < sender.count

        wait_for(stalled, 60, interval=0, message="TCP sender blocked by back-pressure")
        status, reason = fetch(f"http://127.0.0.1:{metrics_port}/healthz")
        assert status == 503 and "over --spool-max-size" in reason
        send_udp("127.0.0.1", port, [b"<13>udp while full %d" % i for i in range(50)])
        fake_firehose.set_policy("PutRecordBatch", None)  # Firehose recovers
        sender.join(120)
        assert not sender.is_alive() and sender.error is None, sender.error
    finally:
        assert relay.stop(timeout=120) == 0, relay.log
    dropped = int(re.findall(r"(\d+) UDP dropped", relay.log)[-1])
    assert dropped > 0
    delivered = delivered_messages(fake_firehose)
    assert len(delivered) == len(set(delivered))
    tcp = sorted(int(m.split("seq=")[1][:7]) for m in delivered if "seq=" in m)
    assert tcp == list(range(sender.count))
    assert sum(m.startswith("<13>udp while full") for m in delivered) == 50 - dropped


def test_role_arn_is_assumed_for_firehose_calls(fake_firehose: FakeFirehose,
                                                tmp_path: Path) -> None:
    port = free_ports()
    role = "arn:aws:iam::210987654321:role/kinesyslog-writer"
    relay = Relay(args_for(tmp_path / "spool", port, "--role-arn", role, "--external-id",
                           "ext-42", "--role-session-name", "relay-test"),
                  env={"AWS_ENDPOINT_URL": fake_firehose.url}).start()
    try:
        send_tcp("127.0.0.1", port, b"<13>as the assumed role\n")
    finally:
        assert relay.stop() == 0, relay.log
    assert delivered_messages(fake_firehose) == ["<13>as the assumed role"]
    assert [(p["RoleArn"], p["RoleSessionName"], p["ExternalId"])
            for p in fake_firehose.assumed_roles] == [(role, "relay-test", "ext-42")]
    keys = {operation: key for operation, key in fake_firehose.access_keys}
    assert keys["AssumeRole"] == "testing"  # the source credentials assume the role
    assert keys["PutRecordBatch"] == "ASIAFAKEASSUMEDROLE1"
    assert keys["DescribeDeliveryStream"] == "ASIAFAKEASSUMEDROLE1"
