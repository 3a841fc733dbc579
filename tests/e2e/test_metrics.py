"""/metrics and /healthz of the real relay: counters from every process in one scrape."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.relay_process import Relay, free_ports, send_tcp, send_udp, wait_for
from tests.proxy_encoder import pack_v1, pack_v2

pytestmark = pytest.mark.e2e

LEGACY_METRICS = {
    "kinesyslog_batch_bytes": "histogram", "kinesyslog_batch_record_failed": "counter",
    "kinesyslog_batch_records": "histogram", "kinesyslog_http_requests": "counter",
    "kinesyslog_listener_count": "gauge", "kinesyslog_message_bytes": "counter",
    "kinesyslog_message_count": "counter", "kinesyslog_record_bytes": "histogram",
    "kinesyslog_spool_age": "gauge", "kinesyslog_spool_count": "gauge",
}


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample; labels must match exactly (in any order)."""
    total = None
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            total = float(match.group(3))
    assert total is not None, f"no sample {name}{labels}"
    return total


def raw_get(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_metrics_and_health(tmp_path: Path) -> None:
    port, metrics_port = free_ports(), free_ports()
    relay = Relay(["--output-dir", str(tmp_path / "out"), "--spool-dir", str(tmp_path / "s"),
                   "--address", "127.0.0.1", "--udp-port", str(port), "--tcp-port", str(port),
                   "--prometheus-port", str(metrics_port), "--flush-interval", "0.2",
                   "--max-message-size", "1024"]).start()
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        assert fetch(f"{base}/healthz") == (200, "ok\n")
        send_udp("127.0.0.1", port, [b"<13>udp %d" % i for i in range(7)] + [b""])
        send_tcp("127.0.0.1", port, b"".join(b"<13>tcp %d\n" % i for i in range(5))
                 + b"<13>" + b"x" * 2000 + b"\n" + b"30 <13>incomplete")

        def delivered() -> bool:
            text = fetch(f"{base}/metrics")[1]
            return re.search(r'kinesyslog_records_delivered_total\{destination="directory"\} '
                             r"[1-9]", text) is not None

        wait_for(delivered, 20, interval=0.2, message="records delivered in the metrics")
        wait_for(lambda: "kinesyslog_message_count_total{" in fetch(f"{base}/metrics")[1], 10,
                 interval=0.2)
        status, text = fetch(f"{base}/metrics")
        assert status == 200
        for name, kind in LEGACY_METRICS.items():  # multiprocess mode names counters *_total
            assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.MULTILINE), name
        labels = {"format": "syslog", "port": str(port)}
        assert sample(text, "kinesyslog_message_count_total", transport="udp", **labels) == 7
        assert sample(text, "kinesyslog_message_count_total", transport="tcp", **labels) == 6
        assert sample(text, "kinesyslog_messages_truncated_total", transport="tcp",
                      port=str(port)) == 1
        assert sample(text, "kinesyslog_messages_dropped_total", reason="empty_datagram") == 1
        assert sample(text, "kinesyslog_messages_dropped_total", reason="incomplete_frame") == 1
        assert sample(text, "kinesyslog_listener_count") == 2
        assert sample(text, "kinesyslog_events_spooled_total") == 13
        directory = {"destination": "directory"}
        assert sample(text, "kinesyslog_records_delivered_total", **directory) >= 1
        assert sample(text, "kinesyslog_record_bytes_count", **directory) >= 1
        assert sample(text, "kinesyslog_batch_records_count", **directory) >= 1
        assert sample(text, "kinesyslog_batch_record_failed_total", **directory) == 0
        assert "127.0.0.1" not in text  # no source addresses in labels
        assert fetch(f"{base}/nothing")[0] == 404
        # An NLB target group with PROXY protocol v2 sends the header before health checks.
        for header in (pack_v2("PROXY", "TCP4", "10.0.0.9", "10.0.0.1", 4000, metrics_port),
                       pack_v2("LOCAL", "UNKNOWN", None, None, None, None),
                       pack_v1("TCP4", "10.0.0.9", "10.0.0.1", 4000, metrics_port)):
            assert raw_get(metrics_port, header + b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n").startswith(b"HTTP/1.0 200 OK")
        assert raw_get(metrics_port, b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x00GET /") == b""
    finally:
        assert relay.stop() == 0, relay.log
