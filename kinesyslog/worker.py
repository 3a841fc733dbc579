"""The forked worker: ring → events → per-stream buffers → records in the spool (gzip
Firehose records, or Kinesis records: kinesis.py).

The worker commits its ring read position only after every event it read is in a durable
spool file. All buffers are flushed together, so a flush leaves nothing read-but-unspooled
and the commit can cover everything read so far.

A spool that cannot be written (disk full, quota, I/O error) is back-pressure, not an exit:
the records built stay in memory, the ring stays uncommitted, nothing more is read (so the
ring fills, TCP senders wait and UDP datagrams are dropped and counted), and the write is
retried with back-off until it succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kinesyslog import constants, metrics
from kinesyslog._fast.events import EventBuffers, IdGenerator, new_id_prefix
from kinesyslog._fast.syslog import TimestampExtractor
from kinesyslog.config import Config
from kinesyslog.kinesis import EventBatch, RecordMaker
from kinesyslog.records import build_records
from kinesyslog.shared import SharedState, errno_name
from kinesyslog.spool import Spool, SpoolWriteError

if TYPE_CHECKING:
    from kinesyslog._fast.ring import Ring

log = logging.getLogger("kinesyslog.worker")
READ_BATCH = 4096
IDLE_SLEEP = 0.005
SPOOL_RETRY_FIRST_DELAY = 0.1
SPOOL_RETRY_MAX_DELAY = 2.0  # a freed disk is noticed within this
SPOOL_ERROR_LOG_INTERVAL = 30.0
FORMAT_NAMES = {constants.KIND_SYSLOG: "syslog", constants.KIND_GELF: "gelf"}


MakeRecords = Callable[[Sequence[EventBatch]], list[bytes]]


def record_maker(config: Config, owner: str) -> tuple[MakeRecords, str]:
    """What turns event batches into spool file contents, and the spool files' suffix."""
    if config.kinesis_stream:
        maker = RecordMaker(owner, config.kinesis_format, config.partition_key,
                            config.kinesis_compress)
        return maker.make, constants.SPOOL_KINESIS_SUFFIX

    def firehose_records(batches: Sequence[EventBatch]) -> list[bytes]:
        return [record for group, source, body, ends in batches
                for record in build_records(owner, group, source, body, ends)]

    return firehose_records, constants.SPOOL_RECORD_SUFFIX


class Worker:
    def __init__(self, config: Config, ring: Ring, owner: str, wake_fd: int,
                 shared: SharedState) -> None:
        self.config = config
        self.shared = shared
        self.ring = ring
        self.owner = owner
        self.wake_fd = wake_fd
        self.spool = Spool(config.spool_dir)
        self.buffers = EventBuffers(TimestampExtractor(config.rfc3164_timezone),
                                    IdGenerator(new_id_prefix()))
        self.make_records, self.spool_suffix = record_maker(config, owner)
        self.flush_size = config.flush_size
        self.flush_age_ms = int(config.flush_interval * 1000)
        self.spool_full = False
        self.draining = False  # shutting down: take everything, whatever the spool holds
        self.records_written = 0
        self.events_written = 0
        # Records built from the buffers that the spool did not take yet, and their events.
        self.unwritten: list[bytes] = []
        self.unwritten_events = 0
        self.retry_delay = 0.0
        self.retry_at = 0.0
        self.error_logged_at = 0.0
        self.failing_since = 0.0
        self.gelf_invalid_seen = 0

    def run(self, parent_pid: int) -> int:
        while True:
            if self.unwritten:  # the spool refused a write: nothing more is read meanwhile
                if os.getppid() != parent_pid:
                    log.error("the listener process is gone while the spool cannot be written; "
                              "the unspooled events stay in the ring for the next start")
                    return 1
                time.sleep(max(0.0, min(self.retry_at - time.monotonic(), IDLE_SLEEP * 20)))
                if time.monotonic() >= self.retry_at:
                    self.flush()
                continue
            read = 0
            if self._spool_has_room():
                read = self.buffers.add_from_ring(self.ring, READ_BATCH, self.flush_size)
                if read:
                    self._count_invalid_gelf()
            if self.buffers.event_count and self._flush_due():
                self.flush()
            if read:
                continue
            listener_gone = os.getppid() != parent_pid
            if (self.ring.producer_closed or listener_gone) and self.ring.pending_bytes == 0:
                if not self.flush():
                    continue  # retried in the loop above
                if listener_gone:
                    log.error("the listener process is gone; worker exits after spooling")
                    return 1
                return 0
            time.sleep(IDLE_SLEEP)

    def _count_invalid_gelf(self) -> None:
        invalid = self.buffers.gelf_invalid_json
        if invalid != self.gelf_invalid_seen:
            metrics.GELF_INVALID_JSON.inc(invalid - self.gelf_invalid_seen)
            self.gelf_invalid_seen = invalid

    def _flush_due(self) -> bool:
        if self.buffers.total_bytes >= self.flush_size:
            return True
        return time.time() * 1000 - self.buffers.oldest_receive_ms >= self.flush_age_ms

    def _spool_has_room(self) -> bool:
        """Checks the spool against --spool-max-size (its size is kept in SharedState)."""
        if self.draining:
            return True
        spooled = self.shared.spool_bytes()
        limit = self.config.spool_max_size
        if not self.spool_full and spooled >= limit:
            self.spool_full = True
            log.warning("spool holds %d bytes, over --spool-max-size %d: pausing intake "
                        "(TCP waits, UDP is dropped) until uploads drain it", spooled, limit)
        elif self.spool_full and spooled < limit * constants.SPOOL_RESUME_FRACTION:
            self.spool_full = False
            log.info("spool drained to %d bytes: intake resumes", spooled)
        return not self.spool_full

    def flush(self) -> bool:
        """Spools every buffer durably, then commits the ring position. False when the spool
        refused a write: the records wait in memory for the retry, the ring uncommitted."""
        if not self.unwritten:
            prefix = self.config.group_prefix
            batches = [(f"{prefix}/{FORMAT_NAMES[kind]}/{port}", source.decode(), body,
                        memoryview(ends).cast("q"))
                       for (kind, port, source), body, ends in self.buffers.take()]
            self.unwritten = self.make_records(batches)
            self.unwritten_events = sum(len(ends) for _, _, _, ends in batches)
        records = self.unwritten
        if records:
            try:
                self.spool.write_records(records, self.spool_suffix)
            except SpoolWriteError as error:
                self._spool_write_failed(error)
                return False
            if self.retry_delay:
                self._spool_writable_again()
            for record in records:
                metrics.RECORD_BYTES.labels(self.config.destination).observe(len(record))
            metrics.EVENTS_SPOOLED.inc(self.unwritten_events)
            self.events_written += self.unwritten_events
            self.records_written += len(records)
            self.shared.spool_written(sum(len(record) for record in records))
            self.unwritten = []
            self.unwritten_events = 0
        self.ring.commit()
        if records:
            self._wake_uploader()
        return True

    def _spool_write_failed(self, error: SpoolWriteError) -> None:
        written = self.unwritten[:error.written]
        del self.unwritten[:error.written]  # those are in the spool; the rest is retried
        self.records_written += len(written)
        self.shared.spool_written(sum(len(record) for record in written))
        if written:
            self._wake_uploader()
        name = errno_name(error.errno or 0)
        metrics.SPOOL_WRITE_ERRORS.labels(name).inc()
        self.shared.spool_write_failed(error.errno or 0)
        now = time.monotonic()
        if not self.retry_delay:
            self.failing_since = now
        self.retry_delay = min(SPOOL_RETRY_MAX_DELAY,
                               max(SPOOL_RETRY_FIRST_DELAY, 2 * self.retry_delay))
        self.retry_at = now + self.retry_delay
        if now - self.error_logged_at >= SPOOL_ERROR_LOG_INTERVAL:
            self.error_logged_at = now
            log.error("cannot write to the spool %s (%s: %s): %d record(s) wait in memory and "
                      "intake is paused (TCP senders wait, UDP is dropped and counted) until "
                      "it can; retrying every %.1f s at most", self.config.spool_dir, name,
                      error.strerror, len(self.unwritten), SPOOL_RETRY_MAX_DELAY)

    def _spool_writable_again(self) -> None:
        log.info("the spool can be written again after %.1f s; intake resumes",
                 time.monotonic() - self.failing_since)
        self.shared.spool_write_succeeded()
        self.retry_delay = 0.0
        self.error_logged_at = 0.0

    def _wake_uploader(self) -> None:
        # A full pipe holds wake-ups already: the uploader will look anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_fd, b"\x01")


def worker_main(config: Config, ring: Ring, owner: str, wake_fd: int, parent_pid: int,
                shared: SharedState) -> int:
    # The listener decides when the worker stops (by closing the ring's producer side);
    # terminal Ctrl-C and systemd's SIGTERM to the whole group must not cut a flush short.
    # SIGUSR1 from the listener: shutdown has begun. The spool cap must not stop the worker
    # then, or messages the listener already read could not reach the ring.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # TLS reloads are the listener's business
    worker = Worker(config, ring, owner, wake_fd, shared)

    def drain(signum: int, frame: object) -> None:
        worker.draining = True

    signal.signal(signal.SIGUSR1, drain)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked by the parent
    code = worker.run(parent_pid)
    log.info("worker done: %d events in %d records spooled", worker.events_written,
             worker.records_written)
    return code
