"""What the listener process tells the outside: Prometheus metrics, the statistics log line,
systemd's status line and /healthz."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kinesyslog import metrics
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.listeners import Listener, udp_kernel_drops
from kinesyslog.shared import SharedState
from kinesyslog.systemd import Notifier

log = logging.getLogger("kinesyslog")
GELF_CHUNK_DROP_REASONS = ("expired", "evicted", "invalid", "duplicates", "empty", "oversized")


class ListenerReport:
    """Turns the listener's plain counters into metrics and log lines; answers /healthz."""

    def __init__(self, config: Config, listener: Listener, ring: Ring, shared: SharedState,
                 notifier: Notifier, processes_running: Callable[[], str | None]) -> None:
        """processes_running: None while every process runs, else what is wrong."""
        self.config = config
        self.listener = listener
        self.counters = listener.counters
        self.ring = ring
        self.shared = shared
        self.notifier = notifier
        self.processes_running = processes_running
        self.publisher = metrics.DeltaPublisher()
        self.status_seen = (time.monotonic(), 0)

    def report_status(self) -> None:
        """systemctl status shows the current throughput."""
        now, messages = time.monotonic(), self.counters.messages
        then, before = self.status_seen
        self.status_seen = (now, messages)
        rate = (messages - before) / max(now - then, 1e-9)
        self.notifier.status(f"{rate:.0f} messages/s, {messages} received, "
                             f"{self.counters.connections_open} connections, ring "
                             f"{100 * self.ring.uncommitted_bytes // self.ring.capacity}% full")

    def publish_metrics(self) -> None:
        add = self.publisher.add
        counters = self.counters
        message_format = self.config.message_format
        for stats in list(counters.ports.values()):
            port = str(stats.port)
            add(metrics.MESSAGE_COUNT, stats.messages, stats.transport, port, message_format)
            add(metrics.MESSAGE_BYTES, stats.message_bytes, stats.transport, port,
                message_format)
            add(metrics.MESSAGES_TRUNCATED, stats.truncated, stats.transport, port)
        add(metrics.MESSAGES_DROPPED, counters.udp_dropped_ring_full, "ring_full")
        add(metrics.MESSAGES_DROPPED, counters.incomplete_dropped, "incomplete_frame")
        add(metrics.MESSAGES_DROPPED, counters.empty_datagrams, "empty_datagram")
        for reason, count in list(counters.rejected.items()):
            add(metrics.CONNECTIONS_REJECTED, count, reason.value)
        add(metrics.MESSAGES_DROPPED, counters.gelf_corrupt, "gelf_corrupt")
        kernel_drops = udp_kernel_drops(self.listener.sockets)
        if kernel_drops is not None:
            add(metrics.MESSAGES_DROPPED, kernel_drops, "udp_kernel")
        chunks = self.listener.gelf_chunks
        if chunks is not None:
            for chunk_reason in GELF_CHUNK_DROP_REASONS:
                add(metrics.GELF_CHUNKS_DROPPED, getattr(chunks, chunk_reason), chunk_reason)
        metrics.CONNECTIONS_OPEN.set(counters.connections_open)
        metrics.LISTENER_COUNT.set(len(self.listener.sockets))
        metrics.RING_FILL.set(self.ring.uncommitted_bytes / self.ring.capacity)

    def health(self) -> str | None:
        """None when healthy, else the reason (called from the metrics server's threads)."""
        problem = self.processes_running()
        if problem is not None:
            return problem
        problem = self.shared.spool_write_problem()
        if problem is not None:
            return problem
        spooled = self.shared.spool_bytes()
        if spooled >= self.config.spool_max_size:
            return (f"the spool holds {spooled} bytes, over --spool-max-size "
                    f"{self.config.spool_max_size}: Firehose uploads are not keeping up")
        return None

    def log_stats(self) -> None:
        c = self.counters
        closed = ", ".join(f"{count} {reason.value}"
                           for reason, count in sorted(c.rejected.items(),
                                                       key=lambda item: item[0].value))
        log.info("received %d messages (%d bytes), %d truncated, %d UDP dropped (ring full), "
                 "%d incomplete dropped, %d connections open, connections closed by the "
                 "relay: %s, ring %d%% full",
                 c.messages, c.message_bytes, c.truncated, c.udp_dropped_ring_full,
                 c.incomplete_dropped, c.connections_open, closed or "none",
                 100 * self.ring.uncommitted_bytes // self.ring.capacity)
