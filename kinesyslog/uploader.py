"""The uploader process: spooled records → Firehose PutRecordBatch (or --output-dir).

A spool file is deleted only after Firehose returned a RecordId for its record. Failed
records stay spooled and are retried oldest first after a capped exponential back-off with
jitter. After a call in which every record failed (an outage, throttling, 5xx), the next
calls carry one record only, a cheap probe, until one succeeds: an outage of any length
costs Firehose a small request every few seconds, and delivery resumes at full speed within
one back-off (RETRY_MAX_DELAY) of Firehose's return. boto3 is imported only in Firehose
mode: --output-dir makes no AWS access at all.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from kinesyslog import metrics
from kinesyslog.constants import (
    EX_CONFIG,
    FIREHOSE_CONNECT_TIMEOUT,
    FIREHOSE_MAX_BATCH_BYTES,
    FIREHOSE_MAX_BATCH_RECORDS,
    FIREHOSE_MAX_RECORD_BYTES,
    FIREHOSE_READ_TIMEOUT,
    GZIP_MAGIC,
    GZIP_MIN_MEMBER_BYTES,
    OUTPUT_DIR_OWNER,
    OWNER_CACHE_FILE,
    QUARANTINE_RETRY_DELAY,
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    RETRY_PERMANENT_DELAY,
    SPOOL_LEGACY_PREFIX,
    SPOOL_TEMP_PREFIX,
    STARTUP_CHECK_TIMEOUT,
    UPLOADER_RESCAN_INTERVAL,
)
from kinesyslog.shared import SharedState, errno_name
from kinesyslog.spool import Spool, fsync_directory

log = logging.getLogger("kinesyslog.uploader")
SPOOL_GAUGE_INTERVAL = 1.0  # how old the spool size the other processes read may be
FAILURE_LOG_INTERVAL = 30.0  # one warning per kind of failure at most this often

# Error codes that retrying cannot fix: the data stays spooled, retried every
# RETRY_PERMANENT_DELAY.
_CREDENTIAL_ERRORS = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "ExpiredTokenException", "ExpiredToken", "IncompleteSignature",
    "MissingAuthenticationToken", "NoCredentialsError", "PartialCredentialsError",
})
_PERMANENT_ERRORS = _CREDENTIAL_ERRORS | {"ResourceNotFoundException"}


def is_permanent_error(code: str) -> bool:
    return code.startswith("AccessDenied") or code in _PERMANENT_ERRORS


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


class StreamCheckError(Exception):
    """A configuration the uploader cannot work with; the message is one line naming the fix."""


# --- AWS clients and start-up checks -----------------------------------------------------

def _session(settings: UploaderSettings) -> Any:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except ProfileNotFound:
        raise StreamCheckError(
            f"--profile {settings.profile}: no such profile in the AWS config or credentials "
            "file; fix --profile or create the profile") from None
    if not session.region_name:
        raise StreamCheckError("no AWS region is configured: pass --region or set "
                               "AWS_DEFAULT_REGION (or give the --profile a region)")
    if settings.role_arn:
        return _assumed_role_session(session, settings)
    return session


def _assumed_role_session(source: Any, settings: UploaderSettings) -> Any:
    """A session whose credentials come from sts:AssumeRole with the source session's
    credentials, fetched on first use and refreshed by botocore before they expire."""
    import socket

    import boto3
    import botocore.session
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    source_credentials = source.get_credentials()
    if source_credentials is None:
        raise StreamCheckError(f"--role-arn {settings.role_arn}: no AWS credentials to assume "
                               "it with; configure the instance role, --profile or the "
                               "AWS_* variables")
    extra_args = {"RoleSessionName": settings.role_session_name
                  or f"kinesyslog-{socket.gethostname()}"[:64]}
    if settings.external_id:
        extra_args["ExternalId"] = settings.external_id
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=source._session.create_client, source_credentials=source_credentials,
        role_arn=settings.role_arn, extra_args=extra_args)
    assumed = botocore.session.Session()
    assumed._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials)
    return boto3.Session(botocore_session=assumed, region_name=source.region_name)


def _client(session: Any, service: str, settings: UploaderSettings, connect_timeout: float,
            read_timeout: float) -> Any:
    from botocore.config import Config

    # One attempt per call ("max_attempts" would count retries only): the uploader retries.
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    # --endpoint-url is Firehose's only; without it boto3 reads AWS_ENDPOINT_URL[_<SERVICE>].
    endpoint_url = settings.endpoint_url if service == "firehose" else None
    try:
        return session.client(service, config=config, endpoint_url=endpoint_url)
    except ValueError as error:  # botocore: "Invalid endpoint: …"
        raise StreamCheckError(f"--endpoint-url {endpoint_url}: {error}; give a URL such as "
                               "https://firehose.us-east-1.amazonaws.com") from None


def make_session_clients(settings: UploaderSettings) -> tuple[Any, Any]:
    """(Firehose client for uploads, STS client for the start-up identity check)."""
    session = _session(settings)
    return (
        _client(session, "firehose", settings, FIREHOSE_CONNECT_TIMEOUT, FIREHOSE_READ_TIMEOUT),
        _client(session, "sts", settings, STARTUP_CHECK_TIMEOUT, STARTUP_CHECK_TIMEOUT),
    )


def check_stream(firehose: Any, stream: str) -> str | None:
    """Describes the delivery stream. Raises StreamCheckError when nothing could ever be
    delivered; returns a warning when the check itself failed (the relay starts anyway)."""
    from botocore import exceptions

    region = firehose.meta.region_name
    try:
        response = firehose.describe_delivery_stream(DeliveryStreamName=stream)
    except exceptions.ClientError as error:
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise StreamCheckError(
                f"--stream {stream}: delivery stream not found in region {region}; "
                "create it or fix --stream/--region") from None
        if code.startswith("AccessDenied"):
            raise StreamCheckError(
                f"--stream {stream}: access denied ({message}); allow "
                "firehose:DescribeDeliveryStream and firehose:PutRecordBatch on the stream "
                "for the credentials in use (--profile)") from None
        if code in _CREDENTIAL_ERRORS:
            raise StreamCheckError(
                f"AWS rejected the credentials ({code}: {message}); fix --profile or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance role") from None
        if code in ("ValidationException", "InvalidArgumentException"):
            raise StreamCheckError(f"--stream {stream}: {message}; fix --stream") from None
        return (f"could not check delivery stream {stream} in region {region} ({code}: "
                f"{message}); records are spooled until Firehose accepts them")
    except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError,
            exceptions.CredentialRetrievalError) as error:
        raise StreamCheckError(
            f"no usable AWS credentials ({error}): use --profile, set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run with an instance role") from None
    except exceptions.BotoCoreError as error:
        return (f"could not check delivery stream {stream} in region {region} ({error}); "
                "records are spooled until Firehose answers")
    status = response.get("DeliveryStreamDescription", {}).get("DeliveryStreamStatus")
    if status != "ACTIVE":
        return f"delivery stream {stream} is {status}; records are spooled until it is ACTIVE"
    return None


def get_owner(sts: Any, spool_dir: Path) -> str:
    """The AWS account id that owns the records (STS GetCallerIdentity).

    The last id read is kept in the spool directory, so that a relay that starts while AWS
    is unreachable still labels its records with the right account."""
    from botocore.exceptions import BotoCoreError, ClientError

    cache = spool_dir / OWNER_CACHE_FILE
    try:
        owner = str(sts.get_caller_identity()["Account"])
    except (BotoCoreError, ClientError, KeyError) as error:
        try:
            owner = cache.read_text().strip()
        except OSError:
            owner = OUTPUT_DIR_OWNER
        log.warning("could not read the AWS account id (sts:GetCallerIdentity: %s); records "
                    "name owner %s", error, owner)
        return owner
    try:
        if not cache.exists() or cache.read_text().strip() != owner:
            temporary = cache.with_name(f"{SPOOL_TEMP_PREFIX}{OWNER_CACHE_FILE}")
            temporary.write_text(owner + "\n")
            os.replace(temporary, cache)
    except OSError as error:  # a full disk must not stop the relay; only the cache is stale
        log.warning("could not keep the account id in %s: %s", cache, error)
    return owner


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore exception, else its class name."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(error).__name__


# --- Sinks ---------------------------------------------------------------------------------

Batch = Sequence[tuple[Path, bytes]]


class Sink(Protocol):
    consumes_files: bool  # True: a delivered record's spool file is gone already
    last_error: str

    def send(self, batch: Batch) -> list[str | None]:
        """Per record: None if delivered, else an error code."""
        ...


class FirehoseSink:
    consumes_files = False

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.last_error = ""

    def send(self, batch: Batch) -> list[str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.put_record_batch(
                DeliveryStreamName=self.stream, Records=[{"Data": data} for _, data in batch])
        except (BotoCoreError, ClientError, OSError) as error:
            self.last_error = str(error)
            return [error_code(error)] * len(batch)
        entries = response.get("RequestResponses") or []
        results: list[str | None] = []
        for index in range(len(batch)):
            entry = entries[index] if index < len(entries) else {}
            if entry.get("RecordId"):
                results.append(None)
            else:
                results.append(entry.get("ErrorCode") or "MissingRecordId")
                self.last_error = entry.get("ErrorMessage") or "no RecordId in the response"
        return results


class DirectorySink:
    """--output-dir: each record file is moved into the directory, atomically."""

    consumes_files = True

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.last_error = ""

    def send(self, batch: Batch) -> list[str | None]:
        results: list[str | None] = []
        for path, data in batch:
            try:
                self._move(path, data)
            except OSError as error:
                self.last_error = f"{path}: {error}"
                results.append(errno.errorcode.get(error.errno or 0, type(error).__name__))
            else:
                results.append(None)
        try:
            fsync_directory(self.directory)
        except OSError as error:
            log.warning("could not fsync --output-dir %s: %s", self.directory, error)
        return results

    def _move(self, path: Path, data: bytes) -> None:
        target = self.directory / path.name
        try:
            os.replace(path, target)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
        # Another file system: write a copy under a temporary name, then rename it.
        temporary = self.directory / f"{SPOOL_TEMP_PREFIX}{os.getpid()}-{path.name}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)
        os.unlink(path)


# --- The upload loop -----------------------------------------------------------------------

class InvalidRecordError(Exception):
    """A spool file that cannot be a Firehose record."""


def read_record(path: Path) -> bytes:
    """The record in ``path``; InvalidRecordError if it is not one, OSError if unreadable."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > FIREHOSE_MAX_RECORD_BYTES:
            raise InvalidRecordError(
                f"{size} bytes, over the {FIREHOSE_MAX_RECORD_BYTES} bytes of a Firehose record")
        data = file.read(FIREHOSE_MAX_RECORD_BYTES + 1)
    if len(data) > FIREHOSE_MAX_RECORD_BYTES:
        raise InvalidRecordError(f"over the {FIREHOSE_MAX_RECORD_BYTES} bytes of a record")
    if len(data) < GZIP_MIN_MEMBER_BYTES:
        raise InvalidRecordError(f"{len(data)} bytes, too short for a gzip record")
    if not data.startswith(GZIP_MAGIC):
        raise InvalidRecordError("not a gzip record (bad magic bytes)")
    if path.name.startswith(SPOOL_LEGACY_PREFIX):
        # 2.0.1 did not fsync its files: after a crash one may be cut short.
        from isal import igzip

        try:
            with igzip.GzipFile(fileobj=BytesIO(data)) as member:
                while member.read(1 << 20):
                    pass
        except (OSError, EOFError, ValueError) as error:
            raise InvalidRecordError(f"a damaged record of kinesyslog 2.0.1: {error}") from None
    return data


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
        # Zero samples, so that alerts on these counters see 0 rather than no data.
        for counter in (metrics.BATCH_RECORD_FAILED, metrics.RECORDS_DELIVERED,
                        metrics.RECORDS_QUARANTINED):
            counter.inc(0)

    def step(self) -> float:
        """Sends one batch if one is due; returns seconds until it wants to run again."""
        now = self.clock()
        if now < self._not_before:
            return self._not_before - now
        if not self._retry and not self._queue:
            self._forget_stuck(now)
            self._queue.extend(p for p in self.spool.pending() if p not in self._stuck)
        batch = self._take_batch(1 if self._probing else FIREHOSE_MAX_BATCH_RECORDS)
        if not batch:
            return UPLOADER_RESCAN_INTERVAL
        started = time.monotonic()
        results = self.sink.send(batch)
        metrics.UPLOAD_SECONDS.observe(time.monotonic() - started)
        metrics.BATCH_RECORDS.observe(len(batch))
        metrics.BATCH_BYTES.observe(sum(len(data) for _, data in batch))
        self.batches += 1
        failed: list[Path] = []
        codes: list[str] = []
        for (path, _), code in zip(batch, results):
            if code is None:
                self.delivered += 1
                if not self.sink.consumes_files:
                    self.spool.delete(path)
            else:
                failed.append(path)
                codes.append(code)
        metrics.RECORDS_DELIVERED.inc(len(batch) - len(failed))
        self._probing = len(failed) == len(batch)
        if not failed:
            self._failures = 0
            return 0.0
        self.failed_attempts += len(failed)
        metrics.BATCH_RECORD_FAILED.inc(len(failed))
        for code, count in Counter(codes).items():
            metrics.UPLOAD_ERRORS.labels(code).inc(count)
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

    def _take_batch(self, max_records: int) -> list[tuple[Path, bytes]]:
        batch: list[tuple[Path, bytes]] = []
        size = 0
        while len(batch) < max_records:
            source = self._retry if self._retry else self._queue
            if not source:
                break
            path = source.popleft()
            try:
                data = read_record(path)
            except FileNotFoundError:
                continue  # gone (deleted by hand): nothing to send
            except (InvalidRecordError, OSError) as error:
                self._quarantine(path, str(error))
                continue
            if size + len(data) > FIREHOSE_MAX_BATCH_BYTES:
                source.appendleft(path)
                break
            batch.append((path, data))
            size += len(data)
        return batch

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantined += 1
        metrics.RECORDS_QUARANTINED.inc()
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
            log.error("Firehose refuses the records (%s: %s): retrying cannot fix this; fix the "
                      "stream or the permissions. The records stay spooled and are retried every "
                      "%.0f s", summary, detail, delay)
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
        self.consumes_files = sink.consumes_files

    @property
    def last_error(self) -> str:
        return self.sink.last_error

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


def _open_sink(settings: UploaderSettings) -> tuple[Sink, str]:
    """The sink and the records' owner; raises StreamCheckError for a fatal configuration."""
    if settings.output_dir is not None:
        try:
            return DirectorySink(settings.output_dir), OUTPUT_DIR_OWNER
        except OSError as error:
            raise StreamCheckError(f"--output-dir {settings.output_dir}: {error.strerror}; "
                                   "create it or fix its permissions") from None
    if not settings.stream:
        raise StreamCheckError("--stream is required unless --output-dir is given")
    session = _session(settings)
    checker = _client(session, "firehose", settings,
                      min(FIREHOSE_CONNECT_TIMEOUT, STARTUP_CHECK_TIMEOUT), STARTUP_CHECK_TIMEOUT)
    warning = check_stream(checker, settings.stream)
    if warning:
        log.warning("%s", warning)
    sts = _client(session, "sts", settings, STARTUP_CHECK_TIMEOUT, STARTUP_CHECK_TIMEOUT)
    owner = get_owner(sts, settings.spool_dir)
    firehose = _client(session, "firehose", settings, FIREHOSE_CONNECT_TIMEOUT,
                       FIREHOSE_READ_TIMEOUT)
    return FirehoseSink(firehose, settings.stream), owner


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
        if isinstance(sink, FirehoseSink):
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
