"""The worker with a real ring and spool: a spool that refuses writes is back-pressure."""

from __future__ import annotations

import errno
import gzip
import json
import os
from pathlib import Path

import pytest

from kinesyslog import constants, metrics
from kinesyslog import spool as spool_module
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.shared import SharedState
from kinesyslog.worker import Worker


def events_in(spool_dir: Path) -> list[str]:
    messages = []
    for path in sorted(spool_dir.glob("record-*.gz")):
        messages.extend(event["message"]
                        for event in json.loads(gzip.decompress(path.read_bytes()))["logEvents"])
    return sorted(messages)


def uncommitted(ring_path: Path) -> int:
    reader = Ring(str(ring_path), 0)
    try:
        return len(reader.read_batch(100_000))
    finally:
        reader.close()


def test_a_full_disk_keeps_the_records_and_the_ring_until_space_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(stream=None, spool_dir=tmp_path, output_dir=tmp_path / "out")
    ring = Ring(str(config.ring_path), constants.RING_MIN_CAPACITY)
    ring.open_producer()
    wake_read, wake_write = os.pipe()
    shared = SharedState()
    worker = Worker(config, ring, "000000000000", wake_write, shared)
    sent = []
    for source in (b"192.0.2.1", b"192.0.2.2", b"192.0.2.3"):  # three streams, three records
        messages = [b"%s message %d" % (source, n) for n in range(5)]
        assert ring.write_batch(messages, 0, source, 514, constants.KIND_SYSLOG, 1_000) == 5
        sent += [m.decode() for m in messages]
    worker.buffers.add_batch(ring.read_batch(100))

    real_fsync = os.fsync
    files_synced: list[int] = []

    def disk_full_after_one_file(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            files_synced.append(fd)
            if len(files_synced) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    errors = metrics.SPOOL_WRITE_ERRORS.labels("ENOSPC")
    errors_before = errors._value.get()
    monkeypatch.setattr(spool_module.os, "fsync", disk_full_after_one_file)
    try:
        assert worker.flush() is False
        assert worker.flush() is False  # still full: nothing written twice
        assert len(list(tmp_path.glob("record-*.gz"))) == 1
        assert not list(tmp_path.glob(".tmp-*"))
        assert len(worker.unwritten) == 2
        assert uncommitted(config.ring_path) == 15  # a crash now replays every event
        problem = shared.spool_write_problem()
        assert problem is not None and "ENOSPC" in problem and "intake is paused" in problem
        assert errors._value.get() == errors_before + 2
    finally:
        monkeypatch.undo()

    assert worker.flush() is True
    assert shared.spool_write_problem() is None
    assert uncommitted(config.ring_path) == 0
    assert events_in(tmp_path) == sorted(sent)  # each event once
    assert (worker.records_written, worker.events_written) == (3, 15)
    ring.close()
    os.close(wake_read)
    os.close(wake_write)


def test_the_spool_size_is_the_uploaders_last_scan_plus_what_the_worker_wrote_since() -> None:
    shared = SharedState()
    assert shared.spool_bytes() == 0
    shared.spool_written(100)  # the worker wrote a record before the uploader's first scan
    assert shared.spool_bytes() == 100
    before = shared.spool_scan_starts()
    shared.spool_written(50)  # written during the scan: the scan may or may not see it
    shared.spool_scanned(150, before)  # it did
    assert shared.spool_bytes() == 200  # counted twice until the next scan: never too low
    before = shared.spool_scan_starts()
    shared.spool_scanned(30, before)  # the uploader delivered most of it
    assert shared.spool_bytes() == 30
    shared.spool_written(10)
    assert shared.spool_bytes() == 40


def test_intake_pauses_at_the_spool_cap_and_resumes_below_90_percent(tmp_path: Path) -> None:
    config = Config(stream=None, spool_dir=tmp_path, output_dir=tmp_path / "out",
                    spool_max_size=1000)
    shared = SharedState()
    ring = Ring(str(config.ring_path), constants.RING_MIN_CAPACITY)
    worker = Worker(config, ring, "000000000000", -1, shared)
    try:
        assert worker._spool_has_room()
        shared.spool_scanned(1000, shared.spool_scan_starts())
        assert not worker._spool_has_room()
        shared.spool_scanned(901, shared.spool_scan_starts())
        assert not worker._spool_has_room()  # not below 90 % yet
        shared.spool_scanned(899, shared.spool_scan_starts())
        assert worker._spool_has_room()
        shared.spool_written(200)
        assert not worker._spool_has_room()  # its own writes count at once
        worker.draining = True
        assert worker._spool_has_room()  # shutting down: everything read is spooled
    finally:
        ring.close()
