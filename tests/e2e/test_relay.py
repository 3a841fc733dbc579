"""End to end: the real relay against a real moto_server Firehose, read back from S3."""

from __future__ import annotations

import calendar
import gzip
import json
import socket
import time
from pathlib import Path

import boto3
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

pytestmark = pytest.mark.e2e


def s3_events(moto) -> list[tuple[str, str, dict]]:
    return events_of(s3_records(moto))


def s3_records(moto) -> list[dict]:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=moto.bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=moto.bucket, Key=item["Key"])["Body"].read()
            records.extend(decode_records(body))
    for record in records:
        assert record["owner"] == "123456789012"
        assert record["subscriptionFilters"] == [record["logGroup"]]
        assert record["messageType"] == "DATA_MESSAGE"
    return records


def relay_args(moto, spool: Path, port: int, *extra: str) -> list[str]:
    return ["--stream", moto.stream, "--region", "us-east-1", "--spool-dir", str(spool),
            "--tcp-port", str(port), "--udp-port", str(port), "--flush-interval", "0.5",
            "--shutdown-timeout", "20", *extra]


def test_udp_tcp_ipv6_to_s3(moto_server, tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(relay_args(moto_server, tmp_path / "spool", port, "--address", "::"),
                  env=moto_server.env).start()
    try:
        rfc5424 = b"<13>1 2026-11-21T10:00:00.123456Z host app 1 - - rfc5424 over udp"
        rfc3164 = b"<13>Nov  2 03:04:05 host app: rfc3164 over udp6"
        send_udp("127.0.0.1", port, [rfc5424 + b"\n"])
        send_udp("::1", port, [rfc3164])
        lf = [b"<14>2026-11-21T10:00:01+01:00 host app: tcp lf %d" % i for i in range(50)]
        send_tcp("127.0.0.1", port, b"".join(m + b"\r\n" for m in lf))
        counted = [b"<14>1 - host app - - - counted\nwith newline %d" % i for i in range(50)]
        send_tcp("::1", port, octet_counted(counted))
        before = int(time.time() * 1000)
        send_tcp("::1", port, b"no timestamp at all\x00")
        invalid_utf8 = b"<13>bad \xff\xfe bytes \xc3\xa9"
        send_tcp("127.0.0.1", port, invalid_utf8 + b"\n")
    finally:
        assert relay.stop() == 0, relay.log
    after = int(time.time() * 1000)

    events = s3_events(moto_server)
    by_message = {}
    for group, stream, event in events:
        assert len(event["id"]) == 56 and event["id"].isdigit()
        assert event["message"] not in by_message, f"duplicate: {event['message']}"
        by_message[event["message"]] = (group, stream, event["timestamp"])
    assert len({e["id"] for _, _, e in events}) == len(events)

    udp_group = f"/kinesyslog/syslog/{port}"
    assert by_message[rfc5424.decode()] == (udp_group, "127.0.0.1", 1795255200123)
    year = time.gmtime().tm_year
    expected_3164 = calendar.timegm((year, 11, 2, 3, 4, 5)) * 1000
    if expected_3164 > time.time() * 1000 + 2 * 86400 * 1000:
        expected_3164 = calendar.timegm((year - 1, 11, 2, 3, 4, 5)) * 1000
    assert by_message[rfc3164.decode()] == (udp_group, "::1", expected_3164)
    for i, message in enumerate(lf):
        assert by_message[message.decode()] == (udp_group, "127.0.0.1",
                                                1795251601000), i
    for message in counted:
        group, stream, timestamp = by_message[message.decode()]
        assert (group, stream) == (udp_group, "::1")
        assert before - 60_000 <= timestamp <= after
    group, stream, timestamp = by_message["no timestamp at all"]
    assert stream == "::1" and before <= timestamp <= after
    assert by_message["<13>bad \\xff\\xfe bytes \u00e9"][1] == "127.0.0.1"
    assert len(by_message) == 2 + len(lf) + len(counted) + 2


def test_messages_of_one_connection_arrive_once_and_in_order(moto_server,
                                                              tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(relay_args(moto_server, tmp_path / "spool", port, "--flush-size", "65536"),
                  env=moto_server.env).start()
    messages = [b"<13>1 - h a - - - ordered message %06d %s" % (i, b"x" * (i % 300))
                for i in range(20000)]
    try:
        send_tcp("127.0.0.1", port, b"".join(m + b"\n" for m in messages))
    finally:
        assert relay.stop() == 0, relay.log
    records = s3_records(moto_server)
    assert len(records) > 3, "--flush-size 65536 must cut several records"
    # S3 objects carry no order; event ids count up in the order the worker read the ring.
    events = sorted((e for record in records for e in record["logEvents"]),
                    key=lambda event: event["id"])
    assert [e["message"] for e in events] == [m.decode() for m in messages]
    for record in records:  # and each record holds a run of consecutive ids
        in_record = [e["id"] for e in record["logEvents"]]
        assert in_record == sorted(in_record)


def test_restart_after_firehose_unreachable(moto_server, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_ports()
    # A first run online learns the account id; the offline run labels its records with it.
    assert Relay(relay_args(moto_server, spool, port), env=moto_server.env).start().stop() == 0
    unreachable = {**moto_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_ports()}"}
    relay = Relay(relay_args(moto_server, spool, port, "--shutdown-timeout", "2"),
                  env=unreachable).start()
    messages = [b"<13>1 - h a - - - spooled while offline %d" % i for i in range(300)]
    try:
        assert "could not check" in relay.log.lower() or "warning" in relay.log.lower()
        send_tcp("127.0.0.1", port, b"".join(m + b"\n" for m in messages))
    finally:
        assert relay.stop() == 0, relay.log
    assert list(spool.glob("record-*.gz")), "records must stay spooled"
    assert s3_events(moto_server) == []

    relay = Relay(relay_args(moto_server, spool, port), env=moto_server.env).start()
    try:
        wait_for(lambda: not list(spool.glob("record-*.gz")), 30, message="spool drained")
    finally:
        assert relay.stop() == 0, relay.log
    received = sorted(e["message"] for _, _, e in s3_events(moto_server))
    assert received == sorted(m.decode() for m in messages)


def test_legacy_and_corrupt_spool_files(moto_server, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    legacy = {"owner": "123456789012", "logGroup": "/kinesyslog/syslog/514",
              "logStream": "192.0.2.7", "subscriptionFilters": ["/kinesyslog/syslog/514"],
              "messageType": "DATA_MESSAGE",
              "logEvents": [{"id": "1" * 56, "timestamp": 1519247270240, "message": "legacy"}]}
    (spool / "firehose_event-abc123").write_bytes(gzip.compress(json.dumps(legacy).encode()))
    (spool / "record-00000000000000000001-000001.gz").write_bytes(b"not a gzip record")
    port = free_ports()
    relay = Relay(relay_args(moto_server, spool, port), env=moto_server.env).start()
    try:
        wait_for(lambda: not (spool / "firehose_event-abc123").exists(), 30,
                 message="legacy file uploaded")
    finally:
        assert relay.stop() == 0, relay.log
    assert [e["message"] for _, _, e in s3_events(moto_server)] == ["legacy"]
    assert (spool / "corrupt" / "record-00000000000000000001-000001.gz").exists()


def test_output_dir_mode_needs_no_aws(tmp_path: Path) -> None:
    port = free_ports()
    out = tmp_path / "out"
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "",
           "AWS_SECRET_ACCESS_KEY": ""}
    relay = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                   "--udp-port", str(port), "--address", "127.0.0.1"], env=env).start()
    try:
        send_udp("127.0.0.1", port, [b"<13>hello output dir"])
    finally:
        assert relay.stop() == 0, relay.log
    records = [r for path in sorted(out.iterdir()) for r in decode_records(path.read_bytes())]
    assert [(r["owner"], r["logGroup"], r["logStream"]) for r in records] == [
        ("000000000000", f"/kinesyslog/syslog/{port}", "127.0.0.1")]
    assert [e["message"] for e in records[0]["logEvents"]] == ["<13>hello output dir"]


def test_dead_child_stops_relay(tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(["--output-dir", str(tmp_path / "out"), "--spool-dir", str(tmp_path / "s"),
                   "--tcp-port", str(port), "--address", "127.0.0.1"]).start()
    try:
        children = relay.children()
        assert set(children) == {"worker", "uploader"}
        import os
        import signal

        os.kill(children["uploader"], signal.SIGKILL)
        code = relay.wait(30)
    finally:
        relay.kill()
    assert code != 0
    assert "uploader process exited unexpectedly" in relay.log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_damaged_ring_is_set_aside(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "ring.mmap").write_bytes(b"this is not a ring" * 1000)
    port = free_ports()
    relay = Relay(["--output-dir", str(tmp_path / "out"), "--spool-dir", str(spool),
                   "--udp-port", str(port), "--address", "127.0.0.1"]).start()
    try:
        send_udp("127.0.0.1", port, [b"<13>after a damaged ring"])
    finally:
        assert relay.stop() == 0, relay.log
    assert "ring file" in relay.log and "damaged" in relay.log
    assert (spool / "corrupt" / "ring.mmap").read_bytes().startswith(b"this is not a ring")
    records = [r for p in (tmp_path / "out").iterdir() for r in decode_records(p.read_bytes())]
    assert [e["message"] for _, _, e in events_of(records)] == ["<13>after a damaged ring"]
