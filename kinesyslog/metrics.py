"""Prometheus metrics of every process, and the /metrics and /healthz HTTP endpoint.

prometheus_client's multiprocess mode keeps each process's values in files of one
directory, so one scrape of the listener process shows the counters of all three. It must
be switched on (PROMETHEUS_MULTIPROC_DIR) before prometheus_client is imported: relay.run
does that before it imports this module. Hot paths count in plain ints; DeltaPublisher adds
their growth to the Prometheus objects about once a second. Label values are bounded:
port, transport, format, reason, AWS error code — never a source address.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer

from kinesyslog._fast.proxy import ProxyError
from kinesyslog._fast.proxy import decode as decode_proxy_header
from kinesyslog.constants import PROXY_V1_MAX_LENGTH

SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 524288, 1024000, 2097152, 4194304)
COUNT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500)
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_FIXED_LENGTH = 16  # signature, version/command, family, address length

# kinesyslog 2.0.1's metrics (names and types kept).
BATCH_BYTES = Histogram("kinesyslog_batch_bytes", "Kinesis batch request size",
                        buckets=SIZE_BUCKETS)
BATCH_RECORD_FAILED = Counter("kinesyslog_batch_record_failed",
                              "Kinesis batch record failures")
BATCH_RECORDS = Histogram("kinesyslog_batch_records", "Kinesis batch record count",
                          buckets=COUNT_BUCKETS)
HTTP_REQUESTS = Counter("kinesyslog_http_requests", "Total HTTP requests", ["path"])
LISTENER_COUNT = Gauge("kinesyslog_listener_count", "The number of message listeners",
                       multiprocess_mode="livesum")
MESSAGE_BYTES = Counter("kinesyslog_message_bytes", "Message bytes received",
                        ["transport", "port", "format"])
MESSAGE_COUNT = Counter("kinesyslog_message_count", "Message records received",
                        ["transport", "port", "format"])
RECORD_BYTES = Histogram("kinesyslog_record_bytes", "Kinesis record size", buckets=SIZE_BUCKETS)
SPOOL_AGE = Gauge("kinesyslog_spool_age", "Kinesis batch spool record age (seconds)",
                  multiprocess_mode="livemax")
SPOOL_COUNT = Gauge("kinesyslog_spool_count", "Kinesis batch spool record count",
                    multiprocess_mode="livemax")

# What an operator needs besides.
MESSAGES_DROPPED = Counter("kinesyslog_messages_dropped",
                           "Messages received but not relayed", ["reason"])
MESSAGES_TRUNCATED = Counter("kinesyslog_messages_truncated",
                             "Messages cut to --max-message-size", ["transport", "port"])
CONNECTIONS_REJECTED = Counter("kinesyslog_connections_rejected",
                               "Connections closed by the relay", ["reason"])
CONNECTIONS_OPEN = Gauge("kinesyslog_connections_open", "Open TCP and TLS connections",
                         multiprocess_mode="livesum")
RING_FILL = Gauge("kinesyslog_ring_fill_ratio",
                  "Share of the listener-to-worker ring not yet spooled (0-1)",
                  multiprocess_mode="livemax")
SPOOL_BYTES = Gauge("kinesyslog_spool_bytes", "Bytes of records awaiting upload",
                    multiprocess_mode="livemax")
GELF_CHUNKS_DROPPED = Counter("kinesyslog_gelf_chunks_dropped",
                              "GELF chunks or pending messages discarded", ["reason"])
GELF_INVALID_JSON = Counter("kinesyslog_gelf_invalid_json",
                            "GELF messages that are not a JSON object (relayed all the same)")
SPOOL_WRITE_ERRORS = Counter("kinesyslog_spool_write_errors",
                             "Failed writes to the spool directory (retried), by errno",
                             ["errno"])
EVENTS_SPOOLED = Counter("kinesyslog_events_spooled", "Events written into spooled records")
UPLOAD_SECONDS = Histogram("kinesyslog_upload_seconds", "PutRecordBatch call duration",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPLOAD_ERRORS = Counter("kinesyslog_upload_errors",
                        "Records not accepted by Firehose, by AWS error code", ["code"])
RECORDS_DELIVERED = Counter("kinesyslog_records_delivered",
                            "Records acknowledged by Firehose (or written to --output-dir)")
RECORDS_QUARANTINED = Counter("kinesyslog_records_quarantined",
                              "Spool files that were not valid records, moved to corrupt/")


class DeltaPublisher:
    """Adds the growth of plain int counters to Prometheus counters."""

    def __init__(self) -> None:
        self._last: dict[tuple[Any, ...], int] = {}

    def add(self, counter: Any, value: int, *labels: str) -> None:
        key = (id(counter), *labels)
        delta = value - self._last.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._last[key] = value


def render_metrics() -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """Drops a finished child's live gauges (counters stay summed)."""
    multiprocess.mark_process_dead(pid)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the journal."""

    def handle(self) -> None:
        # An AWS NLB target group with PROXY protocol v2 sends the header before its HTTP
        # health checks too: a request may start with one (v1 or v2), which is skipped.
        if self._skip_proxy_header():
            super().handle()

    def _skip_proxy_header(self) -> bool:
        """False when the connection starts with a PROXY header that is not valid."""
        rfile = cast(io.BufferedReader, self.rfile)  # socketserver makes it buffered
        start = rfile.peek(len(PROXY_V2_SIGNATURE))[:len(PROXY_V2_SIGNATURE)]
        if start.startswith(b"PROXY "):
            header = rfile.readline(PROXY_V1_MAX_LENGTH)
        elif start == PROXY_V2_SIGNATURE:
            fixed = rfile.read(PROXY_V2_FIXED_LENGTH)
            header = fixed + rfile.read(int.from_bytes(fixed[14:16], "big"))
        else:
            return True
        try:
            decoded, used = decode_proxy_header(header)
        except ProxyError:
            return False
        return decoded is not None and used == len(header)


def make_app(health: Callable[[], str | None]) -> Callable[..., Iterable[bytes]]:
    """WSGI app: /metrics (Prometheus text format) and /healthz (200 ok / 503 reason)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/metrics", "/"):
            HTTP_REQUESTS.labels("/metrics").inc()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [render_metrics()]
        if path == "/healthz":
            HTTP_REQUESTS.labels("/healthz").inc()
            problem = health()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{problem or 'ok'}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: use /metrics or /healthz\n"]

    return app


def bind_server(address: str, port: int, health: Callable[[], str | None]) -> Any:
    """The bound HTTP server; start_serving() runs it (after every fork: threads and fork
    do not mix)."""
    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    return make_server(address, port, make_app(health), Server, handler_class=_QuietHandler)


def start_serving(server: Any) -> None:
    """Serves in a daemon thread; server.shutdown() stops it."""
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
