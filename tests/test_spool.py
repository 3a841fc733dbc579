from __future__ import annotations

import errno
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from kinesyslog import spool as spool_module
from kinesyslog.spool import Spool, SpoolWriteError

NAME = re.compile(r"^record-\d{20}-\d{6}\.gz$")


def test_creates_directory_0750(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "a" / "spool")
    finally:
        os.umask(old)
    assert spool.directory == tmp_path / "a" / "spool"
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o750
    Spool(spool.directory)  # an existing directory is fine


def test_write_records_names_contents_and_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    written = spool.write_records([b"one", b"two", b"three"])
    assert [p.parent for p in written] == [tmp_path] * 3
    assert all(NAME.match(p.name) for p in written)
    assert [p.read_bytes() for p in written] == [b"one", b"two", b"three"]
    assert sorted(p.name for p in written) == [p.name for p in written]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in written)  # no temp file left
    assert spool.write_records([]) == []
    more = spool.write_records([b"four"])
    assert spool.pending() == [*written, *more]


def test_names_keep_write_order_when_the_clock_stalls_or_steps_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    monkeypatch.setattr(spool_module, "_last_ns", 0)  # restored afterwards
    readings = iter([5_000_000_000_000_000_000, 5_000_000_000_000_000_000,
                     4_000_000_000_000_000_000, 5_000_000_000_000_000_001])
    monkeypatch.setattr(spool_module.time, "time_ns", lambda: next(readings))
    written = spool.write_records([b"a", b"b", b"c", b"d"])
    names = [p.name for p in written]
    assert len(set(names)) == 4
    assert sorted(names) == names
    assert [int(n[7:27]) for n in names[:2]] == [5_000_000_000_000_000_000,
                                                  5_000_000_000_000_000_001]


def test_one_directory_fsync_per_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = spool_module.fsync_directory
    monkeypatch.setattr(spool_module, "fsync_directory", lambda d: (calls.append(d), real(d)))
    spool = Spool(tmp_path)
    spool.write_records([b"1", b"2", b"3", b"4", b"5"])
    assert calls == [tmp_path]
    spool.write_records([])
    assert calls == [tmp_path]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        spool.write_records([b"record"])
    assert os.listdir(tmp_path) == []



def test_a_write_that_fails_midway_says_how_many_records_are_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    real_fsync = os.fsync
    files_synced = []

    def full_after_two(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            files_synced.append(fd)
            if len(files_synced) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", full_after_two)
    with pytest.raises(SpoolWriteError) as raised:
        spool.write_records([b"one", b"two", b"three", b"four"])
    assert (raised.value.written, raised.value.errno) == (2, errno.ENOSPC)
    assert sorted(path.read_bytes() for path in spool.pending()) == [b"one", b"two"]
    assert len(os.listdir(tmp_path)) == 2  # the unfinished third file is gone

def test_pending_lists_legacy_files_first_and_ignores_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ours = spool.write_records([b"new1", b"new2"])
    newer_legacy = tmp_path / "firehose_event-aaaa"
    older_legacy = tmp_path / "firehose_event-zzzz"
    newer_legacy.write_bytes(b"l2")
    older_legacy.write_bytes(b"l1")
    os.utime(older_legacy, ns=(1_000_000_000, 1_000_000_000))
    os.utime(newer_legacy, ns=(2_000_000_000, 2_000_000_000))
    for ignored in (".tmp-123-record-00000000000000000001-000001.gz",
                    "_temp_firehose_event-abcd", "ring.mmap", ".lock", "notes.txt"):
        (tmp_path / ignored).write_bytes(b"x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "record-00000000000000000001-000001.gz").write_bytes(b"x")
    assert spool.pending() == [older_legacy, newer_legacy, *ours]
    assert spool.stats()[:2] == (4, 4 + 4 + 2 + 2)


def test_stats_count_pending_records_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.stats()[:2] == (0, 0)
    spool.write_records([b"a" * 10, b"b" * 20])
    (tmp_path / ".tmp-1-x").write_bytes(b"c" * 100)
    assert spool.stats()[:2] == (2, 30)


def test_delete(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    (path,) = spool.write_records([b"x"])
    spool.delete(path)
    assert not path.exists()
    with caplog.at_level(logging.ERROR, logger="kinesyslog.spool"):
        spool.delete(path)  # logged, not raised
    assert len(caplog.records) == 1
    assert "vanished" in caplog.records[0].getMessage()


def test_quarantine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    (good, bad) = spool.write_records([b"good", b"bad"])
    with caplog.at_level(logging.WARNING, logger="kinesyslog.spool"):
        moved = spool.quarantine(bad, "not a gzip record")
    assert moved == tmp_path / "corrupt" / bad.name
    assert moved.read_bytes() == b"bad"
    assert not bad.exists()
    assert stat.S_IMODE((tmp_path / "corrupt").stat().st_mode) & 0o027 == 0
    assert spool.pending() == [good]
    assert len(caplog.records) == 1
    assert "not a gzip record" in caplog.records[0].getMessage()


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.write_records([b"keep"])
    (tmp_path / ".tmp-99-record-00000000000000000001-000001.gz").write_bytes(b"half")
    (tmp_path / "_temp_firehose_event-q1w2e3").write_bytes(b"half")
    (tmp_path / "firehose_event-q1w2e3").write_bytes(b"legacy")
    assert spool.remove_stale_temp_files() == 2
    assert spool.remove_stale_temp_files() == 0
    assert sorted(os.listdir(tmp_path)) == sorted([kept[0].name, "firehose_event-q1w2e3"])


def test_stats_counts_sizes_and_oldest_in_one_scan(tmp_path: Path) -> None:
    import os

    spool = Spool(tmp_path / "spool")
    assert spool.stats() == (0, 0, None)
    first, _ = spool.write_records([b"a" * 10, b"b" * 5])
    os.utime(first, (1_000_000, 1_000_000))
    (spool.directory / "firehose_event-x").write_bytes(b"c" * 7)
    (spool.directory / ".tmp-ignored").write_bytes(b"d" * 100)
    assert spool.stats() == (3, 22, 1_000_000)
    assert spool.stats()[:2] == (3, 22)
