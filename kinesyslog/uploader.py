"""The uploader process: spooled records → Firehose PutRecordBatch, Kinesis Data Streams
PutRecords, or --output-dir (sinks.py).

A spool file is deleted only after Firehose returned a RecordId for its record (Kinesis: a
SequenceNumber; each spool file holds one record). Failed
records stay spooled and are retried oldest first after a capped exponential back-off with
jitter. After a call in which every record failed (an outage, throttling, 5xx), the next
calls carry one record only, a cheap probe, until one succeeds: an outage of any length
costs Firehose a small request every few seconds, and delivery resumes at full speed within
one back-off (RETRY_MAX_DELAY) of Firehose's return. Kinesis is handled alike; only its
failed records are retried. botocore is imported only for Firehose and Kinesis: --output-dir
makes no AWS access at all.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import resource
import select
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinesyslog import heap, metrics
from kinesyslog.aws import (
    StreamCheckError,
    check_kinesis_stream,
    check_stream,
    client,
    get_owner,
    is_permanent_error,
    session,
)
from kinesyslog.constants import (
    EX_CONFIG,
    FIREHOSE_CONNECT_TIMEOUT,
    FIREHOSE_READ_TIMEOUT,
    OUTPUT_DIR_OWNER,
    QUARANTINE_RETRY_DELAY,
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    RETRY_PERMANENT_DELAY,
    STARTUP_CHECK_TIMEOUT,
    UPLOADER_RESCAN_INTERVAL,
)
from kinesyslog.shared import SharedState, errno_name
from kinesyslog.sinks import (
    Batch,
    DirectorySink,
    FirehoseSink,
    InvalidRecordError,
    KinesisSink,
    Record,
    Sink,
)
from kinesyslog.spool import Spool

log = logging.getLogger("kinesyslog.uploader")
SPOOL_GAUGE_INTERVAL = 1.0  # how old the spool size the other processes read may be
FAILURE_LOG_INTERVAL = 30.0  # one warning per kind of failure at most this often
# Descriptors kept free besides a batch's spool files, which stay open while its call is
# made (sinks.RequestBody): the spool directory, sockets, logs, pipes, metrics files.
RESERVED_DESCRIPTORS = 64



@dataclass(frozen=True)
class UploaderSettings:
    spool_dir: Path
    output_dir: Path | None
    stream: str | None
    region: str | None
    profile: str | None
    endpoint_url: str | None
    shutdown_timeout: float
    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: str | None = None
    kinesis_stream: str | None = None
    partition_key: str = "source"


# --- The upload loop -----------------------------------------------------------------------

def batch_record_limit(sink_limit: int) -> int:
    """Records per call: the sink's limit, or fewer where RLIMIT_NOFILE would not leave
    RESERVED_DESCRIPTORS free with every spool file of a batch open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sink_limit
    return max(1, min(sink_limit, soft - RESERVED_DESCRIPTORS))


class Uploader:
    """Sends spooled records oldest first; ``step`` does one batch and never sleeps."""

    def __init__(self, spool: Spool, sink: Sink, *, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 shared: SharedState | None = None) -> None:
        self.spool = spool
        self.shared = shared or SharedState()
        self.sink = sink
        self.clock = clock
        self.rand = rand
        self.delivered = 0
        self.failed_attempts = 0  # records sent and not delivered
        self.quarantined = 0
        self.batches = 0
        self._retry: deque[Path] = deque()  # failed records, oldest first
        self._queue: deque[Path] = deque()  # from the last look at the spool
        # Invalid files that could not be moved away (a full disk, say): skipped until then.
        self._stuck: dict[Path, float] = {}
        self._failures = 0  # consecutive batches with a failure
        self._probing = False  # the last call delivered nothing: send one record at a time
        self._not_before = 0.0
        self._last_logged: dict[str, float] = {}
        self.destination = sink.destination
        self.max_batch_records = batch_record_limit(sink.max_batch_records)
        # Zero samples, so that alerts on these counters see 0 rather than no data.
        for counter in (metrics.BATCH_RECORD_FAILED, metrics.RECORDS_DELIVERED,
                        metrics.RECORDS_QUARANTINED):
            counter.labels(self.destination).inc(0)

    def step(self) -> float:
        """Sends one batch if one is due; returns seconds until it wants to run again."""
        now = self.clock()
        if now < self._not_before:
            return self._not_before - now
        if not self._retry and not self._queue:
            self._forget_stuck(now)
            self._queue.extend(p for p in self.spool.pending() if p not in self._stuck)
        batch = self._take_batch(1 if self._probing else self.max_batch_records)
        if not batch:
            return UPLOADER_RESCAN_INTERVAL
        started = time.monotonic()
        results = self.sink.send(batch)
        destination = self.destination
        metrics.UPLOAD_SECONDS.labels(destination).observe(time.monotonic() - started)
        metrics.BATCH_RECORDS.labels(destination).observe(len(batch))
        metrics.BATCH_BYTES.labels(destination).observe(sum(record.size for record in batch))
        self.batches += 1
        failed: list[Path] = []
        codes: list[str] = []
        for record, code in zip(batch, results):
            if code is None:
                self.delivered += 1
                if not self.sink.consumes_files:
                    self.spool.delete(record.path)
            else:
                failed.append(record.path)
                codes.append(code)
        metrics.RECORDS_DELIVERED.labels(destination).inc(len(batch) - len(failed))
        self._probing = len(failed) == len(batch)
        if not failed:
            self._failures = 0
            return 0.0
        self.failed_attempts += len(failed)
        metrics.BATCH_RECORD_FAILED.labels(destination).inc(len(failed))
        for code, count in Counter(codes).items():
            metrics.UPLOAD_ERRORS.labels(code, destination).inc(count)
        self._retry.extendleft(reversed(failed))
        self._failures += 1
        delay = self._backoff(codes)
        self._not_before = self.clock() + delay
        self._log_failure(len(batch), codes, delay)
        return delay

    def publish_spool_gauges(self) -> None:
        """Scans the spool (this process is the only one that does): its size goes to the
        other processes through SharedState, and to kinesyslog_spool_count, _bytes and
        _age (seconds since the oldest was written)."""
        written_before = self.shared.spool_scan_starts()
        count, size, oldest = self.spool.stats()
        self.shared.spool_scanned(size, written_before)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        metrics.SPOOL_COUNT.set(count)
        metrics.SPOOL_BYTES.set(size)
        metrics.SPOOL_AGE.set(age)

    def remaining(self) -> int:
        """Records still awaiting upload (not counting invalid files that could not be moved)."""
        return sum(1 for path in self.spool.pending() if path not in self._stuck)

    def _forget_stuck(self, now: float) -> None:
        """Files whose move to corrupt/ failed are tried again once their delay is over."""
        for path, retry_at in list(self._stuck.items()):
            if now >= retry_at:
                del self._stuck[path]

    def _backoff(self, codes: list[str]) -> float:
        if any(is_permanent_error(code) for code in codes):
            return RETRY_PERMANENT_DELAY
        # Full jitter between the base delay and a cap that doubles with each failure.
        cap = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** min(self._failures, 32))
        return RETRY_BASE_DELAY + self.rand() * (cap - RETRY_BASE_DELAY)

    def _take_batch(self, max_records: int) -> list[Record]:
        batch: list[Record] = []
        size = 0
        while len(batch) < max_records:
            source = self._retry if self._retry else self._queue
            if not source:
                break
            path = source.popleft()
            try:
                record = self.sink.load(path)
            except FileNotFoundError:
                continue  # gone (deleted by hand): nothing to send
            except (InvalidRecordError, OSError) as error:
                self._quarantine(path, str(error))
                continue
            if size + record.size > self.sink.max_batch_bytes:
                source.appendleft(path)
                break
            batch.append(record)
            size += record.size
        return batch

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantined += 1
        metrics.RECORDS_QUARANTINED.labels(self.destination).inc()
        try:
            self.spool.quarantine(path, reason)
        except OSError as error:
            metrics.SPOOL_WRITE_ERRORS.labels(errno_name(error.errno or 0)).inc()
            log.error("spool file %s is not a valid record (%s) and could not be moved away "
                      "(%s); it is skipped, and moved when tried again in %.0f s", path, reason,
                      error, QUARANTINE_RETRY_DELAY)
            self._stuck[path] = self.clock() + QUARANTINE_RETRY_DELAY

    def _log_failure(self, sent: int, codes: list[str], delay: float) -> None:
        summary = ", ".join(f"{count}x {code}" for code, count in Counter(codes).most_common())
        key = ",".join(sorted(set(codes)))
        now = self.clock()
        if now - self._last_logged.get(key, -FAILURE_LOG_INTERVAL) < FAILURE_LOG_INTERVAL:
            log.debug("%d of %d records failed (%s); retry in %.1f s", len(codes), sent,
                      summary, delay)
            return
        self._last_logged[key] = now
        detail = self.sink.last_error
        if any(is_permanent_error(code) for code in codes):
            log.error("%s refuses the records (%s: %s): retrying cannot fix this; fix the "
                      "stream or the permissions. The records stay spooled and are retried every "
                      "%.0f s", self.sink.name, summary, detail, delay)
        else:
            log.warning("%d of %d records failed (%s: %s); retry in %.1f s", len(codes), sent,
                        summary, detail, delay)


# --- The process ---------------------------------------------------------------------------

class _DeadlineReached(BaseException):
    """Raised by SIGALRM in the middle of a send that outlasts the shutdown deadline."""


class _Signals:
    """Signal flags, and a pipe that wakes the loop's select when one arrives."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.deadline: float | None = None  # time.monotonic() at which the uploader gives up
        self.final = False  # SIGUSR1: the worker is done, nothing new will be spooled
        self.sending = False  # the deadline alarm may interrupt what runs now
        self.read_fd, self._write_fd = os.pipe()
        for fd in (self.read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd)
        self._install(signal.SIGINT, signal.SIG_IGN)  # the relay's main process handles them
        self._install(signal.SIGHUP, signal.SIG_IGN)
        self._install(signal.SIGTERM, self._on_terminate)
        self._install(signal.SIGUSR1, self._on_final)
        self._install(signal.SIGALRM, self._on_alarm)

    def _install(self, signum: int, handler: Any) -> None:
        self._previous[signum] = signal.signal(signum, handler)

    def _on_terminate(self, signum: int, frame: Any) -> None:
        self._start_deadline()

    def _on_final(self, signum: int, frame: Any) -> None:
        self.final = True
        self._start_deadline()

    def _start_deadline(self) -> None:
        # Armed here, not in the loop: the loop may be waiting on Firehose right now.
        if self.deadline is None:
            self.deadline = time.monotonic() + self.shutdown_timeout
            signal.setitimer(signal.ITIMER_REAL, max(self.shutdown_timeout, 0.001))

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.sending:
            raise _DeadlineReached

    def drain(self) -> None:
        _drain(self.read_fd)

    def close(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self.read_fd)
        os.close(self._write_fd)


class _InterruptibleSink:
    """Lets the shutdown deadline cut a Firehose call short (the record stays spooled)."""

    def __init__(self, sink: Sink, signals: _Signals) -> None:
        self.sink = sink
        self.signals = signals
        self.destination = sink.destination
        self.name = sink.name
        self.consumes_files = sink.consumes_files
        self.max_batch_records = sink.max_batch_records
        self.max_batch_bytes = sink.max_batch_bytes

    @property
    def last_error(self) -> str:
        return self.sink.last_error

    def load(self, path: Path) -> Record:
        return self.sink.load(path)

    def send(self, batch: Batch) -> list[str | None]:
        deadline = self.signals.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise _DeadlineReached  # the alarm went off before this call began
        self.signals.sending = True
        try:
            return self.sink.send(batch)
        finally:
            self.signals.sending = False


def _drain(fd: int) -> bool:
    """Reads what is waiting on a non-blocking pipe; False once every writer closed it."""
    for _ in range(64):  # bounded: the writers only ever write single bytes
        try:
            if not os.read(fd, 4096):
                return False
        except (BlockingIOError, InterruptedError):
            return True
    return True


def _write_status(fd: int, line: str) -> None:
    os.write(fd, line.replace("\n", " ").encode() + b"\n")


def _set_title() -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle("kinesyslog: uploader")


def _return_freed_memory() -> None:
    """Collects the start-up's garbage and gives the free heap back to the system."""
    gc.collect()
    heap.trim()


def _open_sink(settings: UploaderSettings) -> tuple[Sink, str]:
    """The sink and the records' owner; raises StreamCheckError for a fatal configuration."""
    if settings.output_dir is not None:
        try:
            return DirectorySink(settings.output_dir), OUTPUT_DIR_OWNER
        except OSError as error:
            raise StreamCheckError(f"--output-dir {settings.output_dir}: {error.strerror}; "
                                   "create it or fix its permissions") from None
    service = "kinesis" if settings.kinesis_stream else "firehose"
    stream = settings.kinesis_stream or settings.stream
    if not stream:
        raise StreamCheckError("--stream is required unless --output-dir is given")
    aws_session = session(settings)
    upload_timeouts = (FIREHOSE_CONNECT_TIMEOUT, FIREHOSE_READ_TIMEOUT)
    check_timeouts = (min(FIREHOSE_CONNECT_TIMEOUT, STARTUP_CHECK_TIMEOUT), STARTUP_CHECK_TIMEOUT)
    uploads = client(aws_session, service, settings, *upload_timeouts)
    # A client costs memory as long as it lives: the check uses the uploads client if it can.
    checker = (uploads if check_timeouts == upload_timeouts
               else client(aws_session, service, settings, *check_timeouts))
    check = check_kinesis_stream if service == "kinesis" else check_stream
    warning = check(checker, stream)
    if warning:
        log.warning("%s", warning)
    sts = client(aws_session, "sts", settings, STARTUP_CHECK_TIMEOUT, STARTUP_CHECK_TIMEOUT)
    owner = get_owner(sts, settings.spool_dir)
    del checker, sts
    _return_freed_memory()
    if service == "kinesis":
        return KinesisSink(uploads, stream, settings.partition_key), owner
    return FirehoseSink(uploads, stream), owner


def uploader_main(settings: UploaderSettings, status_fd: int, wake_fd: int,
                  shared: SharedState | None = None) -> int:
    """The uploader process. Writes ``READY <owner>`` or ``FATAL <message>`` to ``status_fd``,
    then uploads until shut down. Returns the exit status."""
    _set_title()
    parent = os.getppid()
    signals = _Signals(settings.shutdown_timeout)
    try:
        try:
            sink, owner = _open_sink(settings)
            spool = Spool(settings.spool_dir)
        except StreamCheckError as error:
            _write_status(status_fd, f"FATAL {error}")
            return EX_CONFIG
        except OSError as error:
            _write_status(status_fd, f"FATAL --spool-dir {settings.spool_dir}: {error.strerror}")
            return EX_CONFIG
        if not isinstance(sink, DirectorySink):
            sink = _InterruptibleSink(sink, signals)
        uploader = Uploader(spool, sink, shared=shared)
        uploader.publish_spool_gauges()  # the spool's size is known before the worker starts
        _write_status(status_fd, f"READY {owner}")
        os.set_blocking(wake_fd, False)
        return _run(uploader, wake_fd, parent, signals)
    finally:
        signals.close()


def _run(uploader: Uploader, wake_fd: int, parent: int, signals: _Signals) -> int:
    watched = [wake_fd, signals.read_fd]
    next_gauges = 0.0
    while True:
        if time.monotonic() >= next_gauges:
            uploader.publish_spool_gauges()
            next_gauges = time.monotonic() + SPOOL_GAUGE_INTERVAL
        if os.getppid() != parent:
            log.error("the relay's main process is gone: the uploader exits, %d record(s) stay "
                      "spooled", uploader.remaining())
            return 1
        if signals.deadline is not None and time.monotonic() >= signals.deadline:
            return _give_up(uploader)
        try:
            delay = uploader.step()
        except _DeadlineReached:
            return _give_up(uploader)
        if signals.final and not uploader.remaining():
            log.info("all records uploaded: %d in %d batch(es)", uploader.delivered,
                     uploader.batches)
            return 0
        timeout = min(delay, UPLOADER_RESCAN_INTERVAL)
        if signals.deadline is not None:
            timeout = min(timeout, signals.deadline - time.monotonic())
        if timeout > 0:
            readable, _, _ = select.select(watched, [], [], timeout)
            if wake_fd in readable and not _drain(wake_fd):
                watched.remove(wake_fd)  # the worker is gone; the rescan still finds files
            if signals.read_fd in readable:
                signals.drain()


def _give_up(uploader: Uploader) -> int:
    left = uploader.remaining()
    if left:
        log.warning("shutdown timeout reached: %d record(s) stay spooled for the next start", left)
    return 0
