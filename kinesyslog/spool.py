"""The durable spool directory: one file per record, awaiting upload.

A record file is written under a temporary name, fsynced, and renamed to
``record-<time_ns:020d>-<seq:06d>.gz`` (a Firehose record) or ``.kds`` (a Kinesis Data
Streams record with its partition key, kinesis.py); the directory is fsynced once per
written list, so a record that ``write_records`` returned survives a crash. Names sort in
write order.

kinesyslog 2.0.1 spooled each record (one gzip member) as ``firehose_event-<random>``, made
by hard-linking a ``_temp_firehose_event-<random>`` file; such files left by an upgrade are
listed before ours, oldest first.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from pathlib import Path

from kinesyslog.constants import (
    SPOOL_CORRUPT_DIR,
    SPOOL_KINESIS_SUFFIX,
    SPOOL_LEGACY_PREFIX,
    SPOOL_LEGACY_TEMP_PREFIX,
    SPOOL_RECORD_PREFIX,
    SPOOL_RECORD_SUFFIX,
    SPOOL_TEMP_PREFIX,
)

log = logging.getLogger("kinesyslog.spool")

_DIR_MODE = 0o750
_FILE_MODE = 0o640
_SEQ_MODULO = 1_000_000  # six digits in the name
_SUFFIXES = (SPOOL_RECORD_SUFFIX, SPOOL_KINESIS_SUFFIX)

_sequence = itertools.count()
_last_ns = 0


def _next_name(suffix: str) -> tuple[str, str]:
    """(temporary name, final name) for the next record written by this process."""
    global _last_ns
    # Never repeat or go back, even if the clock does, so names keep the write order.
    _last_ns = max(time.time_ns(), _last_ns + 1)
    seq = next(_sequence) % _SEQ_MODULO
    final = f"{SPOOL_RECORD_PREFIX}{_last_ns:020d}-{seq:06d}{suffix}"
    return f"{SPOOL_TEMP_PREFIX}{os.getpid()}-{final}", final


def fsync_directory(directory: Path) -> None:
    """Makes the renames and unlinks done in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriteError(OSError):
    """Writing records failed after ``written`` of them were complete."""

    def __init__(self, written: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.written = written
        self.error = error


def _is_record_name(name: str) -> bool:
    return name.startswith(SPOOL_RECORD_PREFIX) and name.endswith(_SUFFIXES)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    def write_records(self, records: list[bytes],
                      suffix: str = SPOOL_RECORD_SUFFIX) -> list[Path]:
        """Writes each record durably to its own file named ``record-…<suffix>``; returns the
        files in write order.

        On an OSError (disk full, quota, I/O error) the unfinished file is removed and
        SpoolWriteError tells how many records were written before it."""
        paths: list[Path] = []
        try:
            for record in records:
                paths.append(self._write_one(record, suffix))
        except OSError as error:
            if paths:
                with contextlib.suppress(OSError):  # made durable by the retry's fsync
                    fsync_directory(self.directory)
            raise SpoolWriteError(len(paths), error) from error
        if paths:
            try:
                fsync_directory(self.directory)
            except OSError as error:
                raise SpoolWriteError(len(paths), error) from error
        return paths

    def _write_one(self, record: bytes, suffix: str) -> Path:
        temporary, final = _next_name(suffix)
        temp_path = self.directory / temporary
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(record)
                file.flush()
                os.fsync(file.fileno())
            path = self.directory / final
            os.rename(temp_path, path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        return path

    def pending(self) -> list[Path]:
        """Records awaiting upload, oldest first: 2.0.1's files (by mtime), then ours (by name)."""
        legacy: list[tuple[int, str]] = []
        ours: list[str] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if _is_record_name(name):
                    ours.append(name)
                elif name.startswith(SPOOL_LEGACY_PREFIX):
                    try:
                        if entry.is_file(follow_symlinks=False):
                            legacy.append((entry.stat(follow_symlinks=False).st_mtime_ns, name))
                    except FileNotFoundError:
                        continue  # uploaded meanwhile
        legacy.sort()
        ours.sort()
        return [self.directory / name for _, name in legacy] + [self.directory / n for n in ours]

    def delete(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            log.error("spool file %s vanished before it could be deleted after its upload", path)
        except OSError as error:
            log.error("could not delete uploaded spool file %s: %s; it will be sent again",
                      path, error)

    def quarantine(self, path: Path, reason: str) -> Path:
        """Moves ``path`` into DIR/corrupt/ so that it never blocks the queue again."""
        corrupt = self.directory / SPOOL_CORRUPT_DIR
        corrupt.mkdir(mode=_DIR_MODE, exist_ok=True)
        target = corrupt / Path(path).name
        os.replace(path, target)
        log.warning("moved %s to %s: %s", path, corrupt, reason)
        return target

    def remove_stale_temp_files(self) -> int:
        """Removes unfinished temporary files; call it only while no process writes records."""
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith((SPOOL_TEMP_PREFIX, SPOOL_LEGACY_TEMP_PREFIX)):
                    try:
                        if entry.is_file(follow_symlinks=False):
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed

    def stats(self) -> tuple[int, int, float | None]:
        """(file count, total bytes, oldest modification time or None), in one scan."""
        count = size = 0
        oldest: float | None = None
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _is_record_name(entry.name) or entry.name.startswith(SPOOL_LEGACY_PREFIX):
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        status = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # uploaded meanwhile
                    size += status.st_size
                    count += 1
                    if oldest is None or status.st_mtime < oldest:
                        oldest = status.st_mtime
        return count, size, oldest
