"""Facts one relay process writes and the others read: a small shared memory page.

Created by the listener before it forks the uploader and the worker, so that all three map
the same page. Each field has one writer; readers may see a value a moment old, never a
torn one that matters (each field is one aligned 64-bit word).

The spool's size has one owner: the uploader, the only process that lists the directory,
publishes what it found; the worker publishes how many bytes it wrote since, so that the
size every process reads (the worker's --spool-max-size check, /healthz) counts new records
at once without anybody else scanning.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time

_WORD = struct.Struct("=q")
_SPOOL_ERRNO = 0  # the worker's last failed spool write (0: writes succeed)
_SPOOL_ERROR_SINCE_MS = 8  # CLOCK_MONOTONIC (system-wide) milliseconds of the first failure
_SPOOL_WRITTEN = 16  # the worker: bytes of records it ever wrote
_SPOOL_SCANNED = 24  # the uploader: bytes of records in the spool at its last scan
_SPOOL_WRITTEN_AT_SCAN = 32  # the uploader: _SPOOL_WRITTEN as read right before that scan


class SharedState:
    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and shared across fork

    def _get(self, offset: int) -> int:
        return _WORD.unpack_from(self._page, offset)[0]

    def _set(self, offset: int, value: int) -> None:
        _WORD.pack_into(self._page, offset, value)

    # --- written by the worker ---------------------------------------------------------------
    def spool_write_failed(self, error_number: int) -> None:
        if not self._get(_SPOOL_ERRNO):
            self._set(_SPOOL_ERROR_SINCE_MS, int(time.monotonic() * 1000))
        self._set(_SPOOL_ERRNO, error_number or errno.EIO)

    def spool_write_succeeded(self) -> None:
        self._set(_SPOOL_ERRNO, 0)

    def spool_written(self, size: int) -> None:
        self._set(_SPOOL_WRITTEN, self._get(_SPOOL_WRITTEN) + size)

    # --- written by the uploader -------------------------------------------------------------
    def spool_scan_starts(self) -> int:
        """The worker's byte count before a scan, for spool_scanned."""
        return self._get(_SPOOL_WRITTEN)

    def spool_scanned(self, size: int, written_before_scan: int) -> None:
        # Records written during the scan are counted twice until the next one: the cap is
        # then reached a little early, never late.
        self._set(_SPOOL_WRITTEN_AT_SCAN, written_before_scan)
        self._set(_SPOOL_SCANNED, size)

    # --- read by everyone ----------------------------------------------------------------------
    def spool_bytes(self) -> int:
        """Bytes of records awaiting upload: the last scan plus what was written since."""
        written_since = self._get(_SPOOL_WRITTEN) - self._get(_SPOOL_WRITTEN_AT_SCAN)
        return self._get(_SPOOL_SCANNED) + max(0, written_since)

    # --- read by the listener ------------------------------------------------------------------
    def spool_write_problem(self) -> str | None:
        """Why the worker cannot spool right now, or None."""
        number = self._get(_SPOOL_ERRNO)
        if not number:
            return None
        seconds = time.monotonic() - self._get(_SPOOL_ERROR_SINCE_MS) / 1000
        return (f"cannot write to the spool for {seconds:.0f} s ({errno_name(number)}: "
                f"{os.strerror(number)}): intake is paused until it can")


def errno_name(number: int) -> str:
    return errno.errorcode.get(number, str(number))
