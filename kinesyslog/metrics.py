"""Prometheus metrics of every process, and the /metrics and /healthz HTTP endpoint.

setup() makes the metric objects, in prometheus_client's multiprocess mode when the relay
serves metrics (each process keeps its values in files of one directory, so one scrape of
the listener process shows the counters of all three). Hot paths count in plain ints;
DeltaPublisher adds their growth to the Prometheus objects about once a second. Label values
are bounded: port, transport, format, reason, AWS error code — never a source address.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
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
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer

from kinesyslog._fast.proxy import ProxyError
from kinesyslog._fast.proxy import decode as decode_proxy_header
from kinesyslog.constants import PROXY_V1_MAX_LENGTH

SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 524288, 1024000, 2097152, 4194304)
COUNT_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500)
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_FIXED_LENGTH = 16  # signature, version/command, family, address length

class Metrics:
    """Every metric object, made by setup(). They are registered nowhere: /metrics reads the
    multiprocess directory, where each process writes its values."""

    def __init__(self) -> None:
        # kinesyslog 2.0.1's metrics (names and types kept).
        # The upload side's have a "destination" label: firehose, kinesis or directory.
        self.BATCH_BYTES = _Histogram("kinesyslog_batch_bytes", "Kinesis batch request size",
                                      ["destination"], buckets=SIZE_BUCKETS)
        self.BATCH_RECORD_FAILED = _Counter("kinesyslog_batch_record_failed",
                                            "Kinesis batch record failures", ["destination"])
        self.BATCH_RECORDS = _Histogram("kinesyslog_batch_records",
                                        "Kinesis batch record count", ["destination"],
                                        buckets=COUNT_BUCKETS)
        self.HTTP_REQUESTS = _Counter("kinesyslog_http_requests", "Total HTTP requests",
                                      ["path"])
        self.LISTENER_COUNT = _Gauge("kinesyslog_listener_count",
                                     "The number of message listeners",
                                     multiprocess_mode="livesum")
        self.MESSAGE_BYTES = _Counter("kinesyslog_message_bytes", "Message bytes received",
                                      ["transport", "port", "format"])
        self.MESSAGE_COUNT = _Counter("kinesyslog_message_count", "Message records received",
                                      ["transport", "port", "format"])
        self.RECORD_BYTES = _Histogram("kinesyslog_record_bytes", "Kinesis record size",
                                       ["destination"], buckets=SIZE_BUCKETS)
        self.SPOOL_AGE = _Gauge("kinesyslog_spool_age",
                                "Kinesis batch spool record age (seconds)",
                                multiprocess_mode="livemax")
        self.SPOOL_COUNT = _Gauge("kinesyslog_spool_count", "Kinesis batch spool record count",
                                  multiprocess_mode="livemax")

        # What an operator needs besides.
        self.MESSAGES_DROPPED = _Counter("kinesyslog_messages_dropped",
                                         "Messages received but not relayed", ["reason"])
        self.MESSAGES_TRUNCATED = _Counter("kinesyslog_messages_truncated",
                                           "Messages cut to --max-message-size",
                                           ["transport", "port"])
        self.CONNECTIONS_REJECTED = _Counter("kinesyslog_connections_rejected",
                                             "Connections closed by the relay", ["reason"])
        self.CONNECTIONS_OPEN = _Gauge("kinesyslog_connections_open",
                                       "Open TCP and TLS connections",
                                       multiprocess_mode="livesum")
        self.RING_FILL = _Gauge("kinesyslog_ring_fill_ratio",
                                "Share of the listener-to-worker ring not yet spooled (0-1)",
                                multiprocess_mode="livemax")
        self.SPOOL_BYTES = _Gauge("kinesyslog_spool_bytes", "Bytes of records awaiting upload",
                                  multiprocess_mode="livemax")
        self.GELF_CHUNKS_DROPPED = _Counter("kinesyslog_gelf_chunks_dropped",
                                            "GELF chunks or pending messages discarded",
                                            ["reason"])
        self.GELF_INVALID_JSON = _Counter(
            "kinesyslog_gelf_invalid_json",
            "GELF messages that are not a JSON object (relayed all the same)")
        self.SPOOL_WRITE_ERRORS = _Counter(
            "kinesyslog_spool_write_errors",
            "Failed writes to the spool directory (retried), by errno", ["errno"])
        self.EVENTS_SPOOLED = _Counter("kinesyslog_events_spooled",
                                       "Events written into spooled records")
        self.UPLOAD_SECONDS = _Histogram("kinesyslog_upload_seconds",
                                         "PutRecordBatch or PutRecords call duration",
                                         ["destination"],
                                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.UPLOAD_ERRORS = _Counter("kinesyslog_upload_errors",
                                      "Records not accepted by Firehose or Kinesis, by AWS error "
                                      "code", ["code", "destination"])
        self.RECORDS_DELIVERED = _Counter(
            "kinesyslog_records_delivered",
            "Records acknowledged by Firehose or Kinesis (or written to --output-dir)",
            ["destination"])
        self.RECORDS_QUARANTINED = _Counter(
            "kinesyslog_records_quarantined",
            "Spool files that were not valid records, moved to corrupt/", ["destination"])

        # Kinesis Data Streams only. Shards are few (a stream's own count), keys are not: the
        # busiest key is named in the log, its share of the bytes is the metric.
        self.KINESIS_SHARD_RECORDS = _Counter(
            "kinesyslog_kinesis_shard_records", "Kinesis records acknowledged, by shard",
            ["shard"])
        self.KINESIS_SHARD_BYTES = _Counter(
            "kinesyslog_kinesis_shard_bytes",
            "Bytes (data and partition key) of Kinesis records acknowledged, by shard",
            ["shard"])
        self.KINESIS_HOT_KEY_SHARE = _Gauge(
            "kinesyslog_kinesis_hot_key_share",
            "Share (0-1) of the bytes sent in the last minute that carried the busiest "
            "partition key", multiprocess_mode="livemax")
        self.KINESIS_HOT_KEY_BYTES = _Gauge(
            "kinesyslog_kinesis_hot_key_bytes_per_second",
            "Bytes per second sent in the last minute under the busiest partition key (a shard "
            "takes 1 MiB/s)", multiprocess_mode="livemax")


def _Counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    return Counter(name, documentation, labels, registry=None)


def _Gauge(name: str, documentation: str, labels: Sequence[str] = (), *,
           multiprocess_mode: str) -> Gauge:
    return Gauge(name, documentation, labels, registry=None,
                 multiprocess_mode=multiprocess_mode)  # type: ignore[arg-type]


def _Histogram(name: str, documentation: str, labels: Sequence[str] = (), *,
               buckets: Sequence[float]) -> Histogram:
    return Histogram(name, documentation, labels, registry=None, buckets=buckets)


_current: Metrics | None = None


def setup(multiprocess_dir: Path | None) -> None:
    """Makes the metric objects. With a directory, in prometheus_client's multiprocess mode,
    so that one scrape of the listener shows the values of all three processes: call it in
    the listener before the worker and uploader are forked. Nothing else depends on import
    order: using a metric before setup() raises."""
    global _current
    if multiprocess_dir is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    prometheus_values.ValueClass = prometheus_values.get_value_class()
    _current = Metrics()


def _metrics() -> Metrics:
    if _current is None:
        raise RuntimeError("kinesyslog.metrics used before kinesyslog.metrics.setup()")
    return _current


def __getattr__(name: str) -> Any:
    """metrics.RECORD_BYTES and the others: the objects setup() made."""
    if name.isupper():
        return getattr(_metrics(), name)
    raise AttributeError(f"module 'kinesyslog.metrics' has no attribute {name!r}")


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
            _metrics().HTTP_REQUESTS.labels("/metrics").inc()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [render_metrics()]
        if path == "/healthz":
            _metrics().HTTP_REQUESTS.labels("/healthz").inc()
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
