"""The uploader against the real fake Firehose over HTTP through boto3 (and once against
moto_server), the directory sink, and uploader_main in forked processes."""

from __future__ import annotations

import ctypes
import errno
import gzip
import json
import logging
import os
import random
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from kinesyslog import sinks as sinks_module
from kinesyslog.aws import (
    StreamCheckError,
    check_kinesis_stream,
    check_stream,
    client,
    get_owner,
    session,
)
from kinesyslog.constants import (
    FIREHOSE_CONNECT_TIMEOUT,
    FIREHOSE_MAX_RECORD_BYTES,
    FIREHOSE_READ_TIMEOUT,
    GZIP_MAGIC,
    OUTPUT_DIR_OWNER,
    RETRY_MAX_DELAY,
    RETRY_PERMANENT_DELAY,
    UPLOADER_RESCAN_INTERVAL,
)
from kinesyslog.records import build_records, joined
from kinesyslog.sinks import DirectorySink, FirehoseSink
from kinesyslog.spool import Spool
from kinesyslog.uploader import RESERVED_DESCRIPTORS, Uploader, UploaderSettings, uploader_main
from tests.conftest import MotoServer
from tests.fake_firehose import (
    ACCESS_DENIED,
    INTERNAL_ERROR,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    UNRECOGNIZED_CLIENT,
    FakeFirehose,
    Hang,
    Partial,
)

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gzip_record(index: int) -> bytes:
    document = {"owner": "123456789012", "logGroup": "/kinesyslog/syslog/514",
                "logStream": "192.0.2.7", "subscriptionFilters": ["/kinesyslog/syslog/514"],
                "messageType": "DATA_MESSAGE",
                "logEvents": [{"id": f"{index:056d}", "timestamp": 1519247270240,
                               "message": f"message {index}"}]}
    return gzip.compress(json.dumps(document).encode(), mtime=0)


def put_files(spool: Spool, records: list[bytes]) -> list[Path]:
    """Record files named as the spool names them, written without fsync: quicker to set up
    (and to delete) than through Spool.write_records when a test needs hundreds."""
    paths = [spool.directory / f"record-{i + 1:020d}-000000.gz" for i in range(len(records))]
    for path, record in zip(paths, records):
        path.write_bytes(record)
    return paths


def sized_record(size: int, seed: int) -> bytes:
    """Passes the uploader's checks (magic, size) without being worth decompressing."""
    return GZIP_MAGIC + random.Random(seed).randbytes(size - len(GZIP_MAGIC))


def firehose_client(url: str, read_timeout: float = 10.0) -> Any:
    # A new session each time: the default one would keep credentials between tests.
    return boto3.Session().client("firehose", endpoint_url=url, region_name="us-east-1",
                        config=Config(connect_timeout=2, read_timeout=read_timeout,
                                      retries={"total_max_attempts": 1, "mode": "standard"}))


def make_uploader(fake: FakeFirehose, spool: Spool, clock: FakeClock, *,
                  rand: float = 0.5, read_timeout: float = 10.0,
                  stream: str = "test-stream") -> Uploader:
    sink = FirehoseSink(firehose_client(fake.url, read_timeout), stream)
    return Uploader(spool, sink, clock=clock, rand=lambda: rand)


def drain(uploader: Uploader, clock: FakeClock, max_steps: int = 100) -> list[float]:
    """Steps, letting the fake clock run through every back-off, until the spool is empty."""
    delays = []
    for _ in range(max_steps):
        if not uploader.spool.pending():
            return delays
        delay = uploader.step()
        delays.append(delay)
        clock.now += delay
    raise AssertionError(f"the spool did not drain in {max_steps} steps: {delays}")


def batch_sizes(fake: FakeFirehose) -> list[int]:
    return [call.records for call in fake.calls if call.operation == "PutRecordBatch"]


# --- Batching and delivery -----------------------------------------------------------------

def test_delivers_in_order_and_deletes(fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(3)]
    paths = spool.write_records(records)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock)
    assert uploader.step() == 0.0
    assert fake_firehose.data() == records
    assert not any(p.exists() for p in paths)
    assert (uploader.delivered, uploader.batches, uploader.failed_attempts,
            uploader.quarantined) == (3, 1, 0, 0)
    assert uploader.step() == UPLOADER_RESCAN_INTERVAL  # nothing left
    assert batch_sizes(fake_firehose) == [3]


def test_legacy_files_go_first(fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ours = spool.write_records([gzip_record(1)])
    legacy = tmp_path / "firehose_event-k2j3h4"
    legacy.write_bytes(gzip_record(0))
    uploader = make_uploader(fake_firehose, spool, FakeClock())
    uploader.step()
    assert fake_firehose.data() == [gzip_record(0), gzip_record(1)]
    assert not legacy.exists() and not ours[0].exists()


def test_600_records_take_two_calls(fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(600)]
    put_files(spool, records)
    clock = FakeClock()
    drain(make_uploader(fake_firehose, spool, clock), clock)
    assert batch_sizes(fake_firehose) == [500, 100]
    assert fake_firehose.data() == records


def test_batches_leave_descriptors_free_under_a_low_open_file_limit(
        fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    """A batch's spool files stay open while its call is made: under a soft RLIMIT_NOFILE of
    300, calls carry 300 - RESERVED_DESCRIPTORS records, and every record arrives."""
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(600)]
    put_files(spool, records)
    clock = FakeClock()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
    try:
        uploader = make_uploader(fake_firehose, spool, clock)
        assert uploader.max_batch_records == 300 - RESERVED_DESCRIPTORS
        drain(uploader, clock)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert batch_sizes(fake_firehose) == [236, 236, 128]
    assert fake_firehose.data() == records
    assert uploader.failed_attempts == 0


def test_big_records_respect_the_4_mib_batch_limit(fake_firehose: FakeFirehose,
                                                   tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [sized_record(1_000_000, seed) for seed in range(9)]
    spool.write_records(records)
    clock = FakeClock()
    drain(make_uploader(fake_firehose, spool, clock), clock)
    assert batch_sizes(fake_firehose) == [4, 4, 1]
    assert {call.outcome for call in fake_firehose.calls} == {"ok"}
    assert fake_firehose.data() == records


def test_partial_failure_keeps_failed_files_and_retries_them_first(
        fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(600)]
    paths = put_files(spool, records)
    fake_firehose.script("PutRecordBatch", Partial({10, 20}))
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, rand=0.0)

    delay = uploader.step()
    assert delay == 0.5
    assert paths[10].exists() and paths[20].exists()
    assert not paths[11].exists()
    assert (uploader.delivered, uploader.failed_attempts) == (498, 2)
    assert uploader.step() == 0.5  # backing off: nothing sent
    assert batch_sizes(fake_firehose) == [500]

    clock.now += delay
    assert uploader.step() == 0.0
    assert batch_sizes(fake_firehose) == [500, 102]
    expected = [r for i, r in enumerate(records[:500]) if i not in (10, 20)]
    assert fake_firehose.data() == [*expected, records[10], records[20], *records[500:]]
    assert spool.pending() == []


@pytest.mark.parametrize("fault", [THROTTLING, SERVICE_UNAVAILABLE, INTERNAL_ERROR],
                         ids=lambda fault: fault.code)
def test_whole_call_failure_keeps_every_file(fake_firehose: FakeFirehose, tmp_path: Path,
                                             fault: Any) -> None:
    spool = Spool(tmp_path)
    paths = spool.write_records([gzip_record(i) for i in range(4)])
    fake_firehose.script("PutRecordBatch", fault)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock)
    delay = uploader.step()
    assert delay > 0
    assert all(p.exists() for p in paths)
    assert fake_firehose.data() == []
    assert uploader.failed_attempts == 4
    clock.now += delay
    assert uploader.step() == 0.0  # a probe: the oldest record alone
    assert fake_firehose.data() == [gzip_record(0)]
    assert uploader.step() == 0.0  # it worked: the rest at once
    assert fake_firehose.data() == [gzip_record(i) for i in range(4)]
    assert batch_sizes(fake_firehose) == [4, 1, 3]
    assert spool.pending() == []


def test_an_outage_is_probed_with_one_record_per_call(fake_firehose: FakeFirehose,
                                                       tmp_path: Path) -> None:
    """While Firehose refuses everything, each attempt carries one record; the first
    success restores full batches, and every record arrives once, in order."""
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(700)]
    put_files(spool, records)
    fake_firehose.set_policy("PutRecordBatch", lambda n: SERVICE_UNAVAILABLE if n < 6 else None)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, rand=1.0)
    delays = []
    while len(fake_firehose.calls) < 6:
        delays.append(uploader.step())
        clock.now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert batch_sizes(fake_firehose) == [500, 1, 1, 1, 1, 1]
    assert uploader.step() == 0.0
    drain(uploader, clock)
    assert batch_sizes(fake_firehose) == [500, 1, 1, 1, 1, 1, 1, 500, 199]
    assert fake_firehose.data() == records


def test_hang_keeps_files_while_the_server_holds_the_request(
        fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    paths = spool.write_records([gzip_record(i) for i in range(2)])
    fake_firehose.script("PutRecordBatch", Hang(20))
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, read_timeout=5.0)
    delays: list[float] = []
    thread = threading.Thread(target=lambda: delays.append(uploader.step()))
    thread.start()
    try:
        assert fake_firehose.hanging.wait(10)
        assert all(p.exists() for p in paths)  # no RecordId yet: nothing deleted
    finally:
        fake_firehose.release()  # answers 503 now
        thread.join(15)
    assert not thread.is_alive()
    assert delays[0] > 0
    assert all(p.exists() for p in paths)
    clock.now += delays[0]
    assert uploader.step() == 0.0  # the probe
    assert uploader.step() == 0.0
    assert fake_firehose.data() == [gzip_record(0), gzip_record(1)]


def test_every_record_arrives_exactly_once_through_a_fault_programme(
        fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [gzip_record(i) for i in range(1200)]
    put_files(spool, records)
    fake_firehose.script(
        "PutRecordBatch", THROTTLING, Partial(range(0, 500, 7)), INTERNAL_ERROR, Hang(10),
        SERVICE_UNAVAILABLE, Partial({0, 1, 2}), Partial(range(0, 500, 2)))
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, read_timeout=0.5, rand=1.0)
    drain(uploader, clock)
    received = fake_firehose.data()
    assert len(received) == len(records)
    assert sorted(received) == sorted(records)
    assert uploader.delivered == 1200
    outcomes = [c.outcome for c in fake_firehose.calls]
    assert outcomes[:7] == ["ThrottlingException", "partial", "InternalFailure", "hang",
                            "ServiceUnavailableException", "partial", "partial"]


def test_backoff_bounds_growth_and_reset(fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write_records([gzip_record(0)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: THROTTLING)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, rand=1.0)
    delays = []
    for _ in range(8):
        delays.append(uploader.step())
        calls = len(fake_firehose.calls)
        clock.now += delays[-1] - 0.25
        assert uploader.step() == pytest.approx(0.25)  # waiting: no call
        assert len(fake_firehose.calls) == calls
        clock.now += 0.25
    assert delays == [1.0, 2.0, 4.0, *[RETRY_MAX_DELAY] * 5]
    assert RETRY_MAX_DELAY == 5.0

    fake_firehose.set_policy("PutRecordBatch", None)
    assert uploader.step() == 0.0
    spool.write_records([gzip_record(1)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: THROTTLING)
    assert uploader.step() == 1.0  # the back-off starts over

    lowest = make_uploader(fake_firehose, spool, FakeClock(), rand=0.0)
    assert lowest.step() == 0.5  # RETRY_BASE_DELAY, never less


def test_failures_are_logged_at_a_bounded_rate(fake_firehose: FakeFirehose, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    spool.write_records([gzip_record(0)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: THROTTLING)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, rand=0.0)
    with caplog.at_level(logging.WARNING, logger="kinesyslog.uploader"):
        for _ in range(10):
            clock.now += uploader.step()
    assert uploader.failed_attempts == 10
    assert len(caplog.records) == 1
    assert "1x ThrottlingException" in caplog.records[0].getMessage()


@pytest.mark.parametrize("fault", [ACCESS_DENIED, NOT_FOUND, UNRECOGNIZED_CLIENT],
                         ids=lambda fault: fault.code)
def test_permanent_errors_keep_data_and_retry_at_the_longest_delay(
        fake_firehose: FakeFirehose, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        fault: Any) -> None:
    spool = Spool(tmp_path)
    paths = spool.write_records([gzip_record(0)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: fault)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock, rand=0.0)
    with caplog.at_level(logging.ERROR, logger="kinesyslog.uploader"):
        assert uploader.step() == RETRY_PERMANENT_DELAY
        clock.now += RETRY_PERMANENT_DELAY / 2
        assert uploader.step() == RETRY_PERMANENT_DELAY / 2
        clock.now += RETRY_PERMANENT_DELAY / 2
        assert uploader.step() == RETRY_PERMANENT_DELAY
    assert paths[0].exists()
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]  # once per retry
    assert fault.code in caplog.records[0].getMessage()


def test_unknown_stream_is_a_permanent_error(fake_firehose: FakeFirehose,
                                             tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write_records([gzip_record(0)])
    uploader = make_uploader(fake_firehose, spool, FakeClock(), stream="nope")
    assert uploader.step() == RETRY_PERMANENT_DELAY
    assert [c.outcome for c in fake_firehose.calls] == ["ResourceNotFoundException"]


def test_invalid_files_are_quarantined_and_the_rest_delivered(
        fake_firehose: FakeFirehose, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    bad = {
        "record-00000000000000000001-000001.gz": b"x" * 100,  # bad magic
        "record-00000000000000000001-000002.gz": GZIP_MAGIC + b"\0" * 5,  # too short
        "firehose_event-broken": gzip_record(99)[:-4],  # 2.0.1 file cut short
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    too_big = tmp_path / "record-00000000000000000001-000003.gz"
    with open(too_big, "wb") as file:
        file.write(GZIP_MAGIC)
        file.truncate(FIREHOSE_MAX_RECORD_BYTES + 1)
    unreadable = tmp_path / "record-00000000000000000001-000004.gz"
    unreadable.mkdir()
    exactly_max = sized_record(FIREHOSE_MAX_RECORD_BYTES, 1)
    legacy_ok = tmp_path / "firehose_event-ok"
    legacy_ok.write_bytes(gzip_record(0))
    os.utime(legacy_ok, ns=(1, 1))  # the oldest file
    good = [gzip_record(1), exactly_max, gzip_record(2)]
    spool.write_records(good)
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock)
    drain(uploader, clock)
    assert fake_firehose.data() == [gzip_record(0), *good]
    assert uploader.quarantined == 5
    assert sorted(os.listdir(tmp_path / "corrupt")) == sorted(
        [*bad, too_big.name, unreadable.name])


def test_a_file_that_cannot_be_quarantined_is_skipped(
        fake_firehose: FakeFirehose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    broken = tmp_path / "record-00000000000000000001-000001.gz"
    broken.write_bytes(b"garbage" * 10)

    def refuse(path: Path, reason: str) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(spool, "quarantine", refuse)
    spool.write_records([gzip_record(1)])
    clock = FakeClock()
    uploader = make_uploader(fake_firehose, spool, clock)
    with caplog.at_level(logging.ERROR, logger="kinesyslog.uploader"):
        assert uploader.step() == 0.0
        spool.write_records([gzip_record(2)])
        assert uploader.step() == 0.0
        assert uploader.step() == UPLOADER_RESCAN_INTERVAL
    assert fake_firehose.data() == [gzip_record(1), gzip_record(2)]
    assert uploader.quarantined == 1  # tried once, then skipped
    assert len(caplog.records) == 1
    assert broken.exists()


# --- Start-up checks -------------------------------------------------------------------------

def test_check_stream_outcomes(fake_firehose: FakeFirehose) -> None:
    client = firehose_client(fake_firehose.url, read_timeout=0.5)
    assert check_stream(client, "test-stream") is None

    with pytest.raises(StreamCheckError) as caught:
        check_stream(client, "nope")
    assert str(caught.value) == ("--stream nope: delivery stream not found in region "
                                 "us-east-1; create it or fix --stream/--region")

    fake_firehose.script("DescribeDeliveryStream", ACCESS_DENIED)
    with pytest.raises(StreamCheckError, match=r"^--stream test-stream: access denied \(User"):
        check_stream(client, "test-stream")

    fake_firehose.script("DescribeDeliveryStream", UNRECOGNIZED_CLIENT)
    with pytest.raises(StreamCheckError, match=r"^AWS rejected the credentials "
                                               r"\(UnrecognizedClientException"):
        check_stream(client, "test-stream")

    fake_firehose.script("DescribeDeliveryStream", INTERNAL_ERROR)
    warning = check_stream(client, "test-stream")
    assert warning is not None
    assert warning.startswith("could not check delivery stream test-stream in region us-east-1")
    assert "InternalFailure" in warning

    fake_firehose.script("DescribeDeliveryStream", THROTTLING)
    assert "ThrottlingException" in (check_stream(client, "test-stream") or "")

    fake_firehose.script("DescribeDeliveryStream", Hang(10))
    warning = check_stream(client, "test-stream")
    fake_firehose.release()
    assert warning is not None and "timeout" in warning.lower()


def test_check_kinesis_stream_outcomes(aws_env: dict[str, str]) -> None:
    with FakeFirehose(kinesis_streams={"logs": 2}) as fake:
        kinesis = boto3.client("kinesis", endpoint_url=fake.url, region_name="us-east-1",
                               config=Config(retries={"total_max_attempts": 1},
                                             read_timeout=0.5))
        assert check_kinesis_stream(kinesis, "logs") is None
        with pytest.raises(StreamCheckError) as caught:
            check_kinesis_stream(kinesis, "nope")
        assert str(caught.value) == ("--kinesis-stream nope: data stream not found in region "
                                     "us-east-1; create it or fix --kinesis-stream/--region")
        fake.script("DescribeStreamSummary", ACCESS_DENIED)
        with pytest.raises(StreamCheckError, match=r"^--kinesis-stream logs: access denied "
                                                   r"\(User.*allow kinesis:DescribeStreamSummary "
                                                   r"and kinesis:PutRecords"):
            check_kinesis_stream(kinesis, "logs")
        fake.script("DescribeStreamSummary", UNRECOGNIZED_CLIENT)
        with pytest.raises(StreamCheckError, match=r"^AWS rejected the credentials"):
            check_kinesis_stream(kinesis, "logs")
        fake.script("DescribeStreamSummary", INTERNAL_ERROR)
        warning = check_kinesis_stream(kinesis, "logs") or ""
        assert warning.startswith("could not check data stream logs in region us-east-1 "
                                  "(InternalFailure")
        assert warning.endswith("records are spooled until Kinesis accepts them")


def test_check_stream_network_trouble_is_a_warning(aws_env: dict[str, str]) -> None:
    with FakeFirehose() as gone:
        url = gone.url
    warning = check_stream(firehose_client(url), "test-stream")
    assert warning is not None
    assert warning.startswith("could not check delivery stream test-stream")
    assert "Could not connect" in warning


def test_check_stream_without_credentials(fake_firehose: FakeFirehose,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StreamCheckError, match=r"^no usable AWS credentials"):
        check_stream(firehose_client(fake_firehose.url), "test-stream")


def test_get_owner(fake_firehose: FakeFirehose, caplog: pytest.LogCaptureFixture,
                   tmp_path: Path) -> None:
    sts = boto3.Session().client("sts", endpoint_url=fake_firehose.url, region_name="us-east-1")
    fake_firehose.script("GetCallerIdentity", ACCESS_DENIED)
    with caplog.at_level(logging.WARNING, logger="kinesyslog.uploader"):
        assert get_owner(sts, tmp_path) == OUTPUT_DIR_OWNER  # never known: the placeholder
    assert "AccessDenied" in caplog.records[0].getMessage()
    assert get_owner(sts, tmp_path) == "123456789012"
    assert (tmp_path / "owner").read_text() == "123456789012\n"
    fake_firehose.script("GetCallerIdentity", ACCESS_DENIED)
    assert get_owner(sts, tmp_path) == "123456789012"  # the last known account


def settings_for(tmp_path: Path, **changes: Any) -> UploaderSettings:
    values: dict[str, Any] = {
        "spool_dir": tmp_path / "spool", "output_dir": None, "stream": "test-stream",
        "region": "us-east-1", "profile": None, "endpoint_url": None, "shutdown_timeout": 10.0}
    values.update(changes)
    return UploaderSettings(**values)


def make_session_clients(settings: UploaderSettings) -> tuple[Any, Any]:
    """The uploader's Firehose client and an STS client, as uploader_main makes them."""
    aws_session = session(settings)
    return (client(aws_session, "firehose", settings, FIREHOSE_CONNECT_TIMEOUT,
                   FIREHOSE_READ_TIMEOUT),
            client(aws_session, "sts", settings, 10, 10))


def test_sessions_and_clients(fake_firehose: FakeFirehose, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    firehose, sts = make_session_clients(settings_for(tmp_path, endpoint_url=fake_firehose.url))
    assert firehose.meta.endpoint_url == fake_firehose.url
    assert firehose.meta.region_name == "us-east-1"
    assert firehose.meta.config.connect_timeout == FIREHOSE_CONNECT_TIMEOUT
    assert firehose.meta.config.read_timeout == FIREHOSE_READ_TIMEOUT
    assert firehose.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert sts.meta.service_model.service_name == "sts"
    assert check_stream(firehose, "test-stream") is None

    monkeypatch.setenv("AWS_ENDPOINT_URL_FIREHOSE", fake_firehose.url)
    firehose, _ = make_session_clients(settings_for(tmp_path))
    assert firehose.meta.endpoint_url == fake_firehose.url

    with pytest.raises(StreamCheckError, match=r"^--endpoint-url not a url: Invalid endpoint"):
        make_session_clients(settings_for(tmp_path, endpoint_url="not a url"))

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(StreamCheckError, match="--region"):
        make_session_clients(settings_for(tmp_path, region=None))
    with pytest.raises(StreamCheckError, match=r"^--profile nope: no such profile"):
        make_session_clients(settings_for(tmp_path, profile="nope"))


# --- The directory sink ------------------------------------------------------------------------

def test_directory_sink_moves_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool")
    records = [gzip_record(i) for i in range(3)]
    paths = spool.write_records(records)
    out = tmp_path / "out"
    uploader = Uploader(spool, DirectorySink(out), clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        assert uploader.step() == 0.0
    assert caplog.records == []
    assert [(out / p.name).read_bytes() for p in paths] == records
    assert spool.pending() == []
    assert uploader.delivered == 3


def test_directory_sink_across_file_systems(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    (path,) = spool.write_records([gzip_record(0)])
    out = tmp_path / "out"
    real_replace = os.replace

    def no_cross_device(source: Any, target: Any) -> None:
        if Path(source).parent == spool.directory:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(source, target)

    monkeypatch.setattr(sinks_module.os, "replace", no_cross_device)
    uploader = Uploader(spool, DirectorySink(out), clock=FakeClock())
    assert uploader.step() == 0.0
    assert os.listdir(out) == [path.name]
    assert (out / path.name).read_bytes() == gzip_record(0)
    assert not path.exists()


def test_directory_sink_failure_keeps_the_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    (path,) = spool.write_records([gzip_record(0)])

    def denied(source: Any, target: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sinks_module.os, "replace", denied)
    uploader = Uploader(spool, DirectorySink(tmp_path / "out"), clock=FakeClock(),
                        rand=lambda: 0.0)
    assert uploader.step() == 0.5
    assert path.exists()
    assert uploader.sink.last_error.endswith("Permission denied")


def test_output_dir_mode_imports_no_aws_library(tmp_path: Path) -> None:
    script = """
import os, signal, sys, threading
from pathlib import Path
from kinesyslog import metrics
from kinesyslog.spool import Spool
from kinesyslog.uploader import UploaderSettings, uploader_main

metrics.setup(None)
spool_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
Spool(spool_dir).write_records([b"\\x1f\\x8b\\x08" + b"\\0" * 30])
status_read, status_write = os.pipe()
wake_read, wake_write = os.pipe()

def finish_when_ready():
    if os.read(status_read, 100).startswith(b"READY 000000000000"):
        os.kill(os.getpid(), signal.SIGUSR1)

threading.Thread(target=finish_when_ready, daemon=True).start()
settings = UploaderSettings(spool_dir, out, None, None, None, None, 5.0)
code = uploader_main(settings, status_write, wake_read)
aws = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
print(code, len(os.listdir(out)), aws)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "spool"), str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, check=False)
    assert result.stdout.strip() == "0 1 []", result.stderr


# --- uploader_main in a forked process -------------------------------------------------------

@pytest.fixture
def children() -> Iterator[list[int]]:
    """Pids of forked children; any still running at teardown is killed and reaped."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def fork_uploader(settings: UploaderSettings, children: list[int]) -> tuple[int, int, int]:
    """(pid, status read end, wake-up write end)."""
    status_read, status_write = os.pipe()
    wake_read, wake_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(status_read)
            os.close(wake_write)
            code = uploader_main(settings, status_write, wake_read)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    children.append(pid)
    os.close(status_write)
    os.close(wake_read)
    return pid, status_read, wake_write


def read_status(fd: int, timeout: float = PROCESS_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no status line, got {data!r}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    os.close(fd)
    return data.decode()


def wait_exit(pid: int, timeout: float = PROCESS_TIMEOUT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not exit within {timeout} s")


def test_main_uploads_then_drains_on_sigusr1(fake_firehose: FakeFirehose, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             children: list[int]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_firehose.url)
    spool = Spool(tmp_path / "spool")
    records = [gzip_record(i) for i in range(5)]
    spool.write_records(records[:3])
    settings = settings_for(tmp_path, endpoint_url=fake_firehose.url)
    pid, status, wake = fork_uploader(settings, children)
    assert read_status(status) == "READY 123456789012\n"
    assert fake_firehose.wait_for_records(3, PROCESS_TIMEOUT)

    spool.write_records(records[3:])  # no wake-up byte: SIGUSR1 alone must drain them
    os.kill(pid, signal.SIGUSR1)
    assert wait_exit(pid) == 0
    assert fake_firehose.data() == records
    assert spool.pending() == []
    os.close(wake)


def test_main_wakes_up_on_the_wake_pipe(fake_firehose: FakeFirehose, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        children: list[int]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_firehose.url)
    spool = Spool(tmp_path / "spool")
    pid, status, wake = fork_uploader(
        settings_for(tmp_path, endpoint_url=fake_firehose.url), children)
    assert read_status(status).startswith("READY ")
    spool.write_records([gzip_record(0)])
    os.write(wake, b"\0")
    assert fake_firehose.wait_for_records(1, PROCESS_TIMEOUT)
    os.kill(pid, signal.SIGUSR1)
    assert wait_exit(pid) == 0
    os.close(wake)


def test_main_unknown_stream_is_fatal(fake_firehose: FakeFirehose, tmp_path: Path,
                                      children: list[int]) -> None:
    settings = settings_for(tmp_path, stream="nope", endpoint_url=fake_firehose.url)
    pid, status, wake = fork_uploader(settings, children)
    assert read_status(status) == ("FATAL --stream nope: delivery stream not found in region "
                                   "us-east-1; create it or fix --stream/--region\n")
    assert wait_exit(pid) == 78
    os.close(wake)


def test_main_sigterm_gives_up_at_the_deadline(fake_firehose: FakeFirehose, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               children: list[int]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_firehose.url)
    spool = Spool(tmp_path / "spool")
    paths = spool.write_records([gzip_record(0), gzip_record(1)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: THROTTLING)
    settings = settings_for(tmp_path, endpoint_url=fake_firehose.url, shutdown_timeout=1.0)
    pid, status, wake = fork_uploader(settings, children)
    assert read_status(status).startswith("READY ")
    os.kill(pid, signal.SIGINT)  # ignored
    os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    assert wait_exit(pid) == 0
    assert time.monotonic() - started < 5
    assert all(p.exists() for p in paths)
    assert "ThrottlingException" in [c.outcome for c in fake_firehose.calls]
    os.close(wake)


def test_main_deadline_cuts_a_hanging_call_short(fake_firehose: FakeFirehose, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 children: list[int]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_firehose.url)
    spool = Spool(tmp_path / "spool")
    paths = spool.write_records([gzip_record(0)])
    fake_firehose.set_policy("PutRecordBatch", lambda n: Hang(25))
    settings = settings_for(tmp_path, endpoint_url=fake_firehose.url, shutdown_timeout=1.0)
    pid, status, wake = fork_uploader(settings, children)
    assert read_status(status).startswith("READY ")
    assert fake_firehose.hanging.wait(PROCESS_TIMEOUT)
    os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    assert wait_exit(pid) == 0
    assert time.monotonic() - started < 5  # not the 30 s read timeout
    assert paths[0].exists()
    os.close(wake)


def test_main_output_dir_mode(tmp_path: Path, children: list[int]) -> None:
    spool = Spool(tmp_path / "spool")
    paths = spool.write_records([gzip_record(0), gzip_record(1)])
    out = tmp_path / "out"
    settings = settings_for(tmp_path, output_dir=out, stream=None, region=None)
    pid, status, wake = fork_uploader(settings, children)
    assert read_status(status) == f"READY {OUTPUT_DIR_OWNER}\n"
    os.kill(pid, signal.SIGUSR1)
    assert wait_exit(pid) == 0
    assert sorted(os.listdir(out)) == [p.name for p in paths]
    os.close(wake)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs PR_SET_CHILD_SUBREAPER")
def test_main_exits_when_its_parent_is_gone(tmp_path: Path, children: list[int]) -> None:
    """reaper (a subreaper) → parent → uploader; the parent quits once the uploader is ready,
    the reaper adopts the uploader and exits with the uploader's exit status."""
    settings = settings_for(tmp_path, output_dir=tmp_path / "out", stream=None, region=None)
    reaper = os.fork()
    if reaper == 0:
        code = 70
        try:
            pr_set_child_subreaper = 36
            if ctypes.CDLL(None).prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
                os._exit(71)
            status_read, status_write = os.pipe()
            wake_read, _wake_write = os.pipe()
            parent = os.fork()
            if parent == 0:
                if os.fork() == 0:
                    os._exit(uploader_main(settings, status_write, wake_read))
                ready = read_status(status_read, 20).startswith("READY")
                os._exit(0 if ready else 72)
            os.close(status_write)
            _, parent_status = os.waitpid(parent, 0)
            if os.waitstatus_to_exitcode(parent_status) != 0:
                os._exit(73)
            _, uploader_status = os.wait()  # the orphaned uploader, adopted
            code = os.waitstatus_to_exitcode(uploader_status)
        finally:
            os._exit(code)
    children.append(reaper)
    assert wait_exit(reaper) == 1


# --- moto_server -------------------------------------------------------------------------------

def test_records_reach_s3_through_moto(moto_server: MotoServer, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = build_records("123456789012", "/kinesyslog/syslog/514", "192.0.2.7", *joined(
        [b'{"id": "%056d", "timestamp": 1519247270240, "message": "m%d"}' % (i, i)
         for i in range(2)]))
    second = build_records("123456789012", "/kinesyslog/syslog/514", "192.0.2.8", *joined(
        [b'{"id": "%056d", "timestamp": 1519247270240, "message": "x"}' % 9]))
    client = boto3.client("firehose", endpoint_url=moto_server.endpoint_url)
    uploader = Uploader(spool, FirehoseSink(client, moto_server.stream), clock=FakeClock())

    spool.write_records(first)
    assert uploader.step() == 0.0
    spool.write_records(first + second)
    assert uploader.step() == 0.0
    assert uploader.delivered == 3 and spool.pending() == []

    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url)
    listing = s3.list_objects_v2(Bucket=moto_server.bucket)["Contents"]
    bodies = sorted((s3.get_object(Bucket=moto_server.bucket, Key=item["Key"])["Body"].read()
                     for item in listing), key=len)
    # One S3 object per PutRecordBatch call, holding the call's records concatenated.
    assert bodies == [first[0], first[0] + second[0]]
    document = json.loads(gzip.decompress(bodies[0]))
    assert [e["message"] for e in document["logEvents"]] == ["m0", "m1"]
    assert gzip.decompress(bodies[1]).count(b'"messageType": "DATA_MESSAGE"') == 2
