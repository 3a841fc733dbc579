"""GELF end to end: UDP (plain, zlib, gzip, chunked), TCP and TLS, and a chunk flood."""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import zlib
from pathlib import Path

import pytest

from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    send_tcp,
    send_udp,
    wait_for,
)
from tests.e2e.test_metrics import fetch, sample
from tests.e2e.test_relay import s3_events
from tests.e2e.test_tls_proxy import client_context, pki, send_tls  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def chunks(message_id: bytes, payload: bytes, count: int) -> list[bytes]:
    size = -(-len(payload) // count)
    return [b"\x1e\x0f" + message_id + bytes([number, count])
            + payload[number * size:(number + 1) * size] for number in range(count)]


def document(short: str, timestamp: object = None, **fields: object) -> bytes:
    body: dict[str, object] = {"version": "1.1", "host": "app01", "short_message": short}
    if timestamp is not None:
        body["timestamp"] = timestamp
    body.update(fields)
    return json.dumps(body).encode()


def test_gelf_udp_tcp_tls_to_s3(moto_server, pki, tmp_path: Path) -> None:  # noqa: F811
    port, tls_port = free_ports(), free_ports()
    relay = Relay(["--stream", moto_server.stream, "--region", "us-east-1", "--spool-dir",
                   str(tmp_path / "spool"), "--address", "::", "--gelf", "--udp-port",
                   str(port), "--tcp-port", str(port), "--tls-port", str(tls_port), "--cert",
                   str(pki["server"].cert), "--key", str(pki["server"].key),
                   "--flush-interval", "0.2"], env=moto_server.env).start()
    plain = document("plain udp", 1700000000.123456)
    zlibbed = document("zlib udp", "1700000001.5")
    gzipped = document("gzip udp", 1700000002)
    first = document("chunked one", 1700000003.25, padding="a" * 3000)
    second = document("chunked two", 1700000004, padding="b" * 3000)
    pretty = json.dumps({"version": "1.1", "host": "h", "short_message": "pretty",
                         "timestamp": 1700000005}, indent=2).encode()
    over_tcp = document("tcp nul", 1700000006.001)
    over_tls = document("over tls", 1700000007)
    no_timestamp = document("no timestamp")
    try:
        send_udp("127.0.0.1", port, [plain, zlib.compress(zlibbed), gzip.compress(gzipped)])
        one = chunks(b"A" * 8, zlib.compress(first), 4)
        two = chunks(b"B" * 8, second, 5)
        interleaved = [one[3], two[4], one[0], two[0], one[1], two[2], two[1], one[2], two[3],
                       one[0]]  # out of order, interleaved, one duplicate
        send_udp("::1", port, interleaved)
        send_tcp("127.0.0.1", port, pretty + b"\x00" + over_tcp + b"\n" + no_timestamp + b"\x00")
        send_tls(tls_port, client_context(pki), over_tls + b"\x00")
    finally:
        assert relay.stop() == 0, relay.log
    events = s3_events(moto_server)
    got = {e["message"]: (g, s, e["timestamp"]) for g, s, e in events}
    assert len(got) == len(events) == 9
    group, tls_group = f"/kinesyslog/gelf/{port}", f"/kinesyslog/gelf/{tls_port}"
    assert got[plain.decode()] == (group, "127.0.0.1", 1700000000123)
    assert got[zlibbed.decode()] == (group, "127.0.0.1", 1700000001500)
    assert got[gzipped.decode()] == (group, "127.0.0.1", 1700000002000)
    assert got[first.decode()] == (group, "::1", 1700000003250)
    assert got[second.decode()] == (group, "::1", 1700000004000)
    assert got[pretty.decode()] == (group, "127.0.0.1", 1700000005000)
    assert got[over_tcp.decode()] == (group, "127.0.0.1", 1700000006001)
    assert got[over_tls.decode()] == (tls_group, "127.0.0.1", 1700000007000)
    assert got[no_timestamp.decode()][:2] == (group, "127.0.0.1")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_gelf_chunk_flood_keeps_memory_bounded(tmp_path: Path) -> None:
    port, metrics_port = free_ports(), free_ports()
    out = tmp_path / "out"
    relay = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                   "--address", "127.0.0.1", "--gelf", "--udp-port", str(port),
                   "--prometheus-port", str(metrics_port), "--flush-interval", "0.2"]).start()
    rng = random.Random(7)
    before = peak = rss_kib(relay.pid)
    normal = [document(f"normal {i}", 1700000000 + i) for i in range(200)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for round_number in range(40):
                # 2,000 ids that never complete, 2 KB each: 160 MB if nothing bounded it.
                for _ in range(2000):
                    head = chunks(rng.randbytes(8), os.urandom(2000) * 2, 2)[0]
                    sock.sendto(head, ("127.0.0.1", port))
                for message in normal[round_number * 5:(round_number + 1) * 5]:
                    sock.sendto(message, ("127.0.0.1", port))
                peak = max(peak, rss_kib(relay.pid))
        wait_for(lambda: "kinesyslog_gelf_chunks_dropped_total" in
                 fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1], 10, interval=0.2)
        metrics = fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1]
    finally:
        assert relay.stop() == 0, relay.log
    # The pending-chunk bound is 32 MiB; allow for the interpreter and socket buffers around it.
    assert peak - before < 64 * 1024, f"listener RSS grew by {(peak - before) // 1024} MiB"
    assert sample(metrics, "kinesyslog_gelf_chunks_dropped_total", reason="evicted") > 0
    records = [r for p in out.iterdir() for r in decode_records(p.read_bytes())]
    received = {e["message"] for _, _, e in events_of(records)}
    delivered = [m for m in normal if m.decode() in received]
    # UDP under a flood may lose datagrams in the kernel; the relay itself must not block them.
    assert len(delivered) >= len(normal) * 0.9, f"only {len(delivered)} normal messages"
