# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A crash-safe single-producer/single-consumer queue over a memory-mapped file.

The listener process appends entries (write_batch, or from C append_entry then publish);
the worker, forked from it or opened on the same path, reads them (read_batch) and commits
its position only once what it read is durable elsewhere. Entries not committed stay in
the file: a process killed at any point loses nothing, and the next open replays from the
committed position.

File layout (native byte order; the file never leaves the host that wrote it):

    header, 4096 bytes
        0    magic b"KSYRING1"
        8    u32 version (1)
        12   u32 header size (4096)
        16   u64 capacity: bytes in the data area, a multiple of 4096
        24   u32 producer_closed
        64   u64 write_pos    (its own cache line, stored by the producer only)
        128  u64 commit_pos   (its own cache line, stored by the consumer only)
    data area, capacity bytes

Positions are monotonic byte counters; an entry lives at offset pos % capacity. Entries are
8-byte aligned:

    u32 entry length (header + source + message + padding)
    u32 message length
    i64 receive_ms
    u16 port
    u8  kind
    u8  source length
    source bytes, message bytes, zero padding to a multiple of 8

An entry never straddles the end of the data area: the producer writes a wrap marker (entry
length 0xFFFFFFFF) in the rest of the area and continues at offset 0; that skipped space
counts in the positions. Every position and the capacity being multiples of 8, at least 8
bytes remain whenever any do, so the marker always fits.

Each process keeps only a window of the data area mapped: the pages behind its own cursor
(the producer's write position, the consumer's read cursor) are dropped from its page
tables with MADV_DONTNEED, 256 KiB at a time. For a shared file mapping that only unmaps
them: the bytes stay in the file and its page cache, and the next access maps them again.
The ring's resident memory thus follows the entries in flight, not the capacity.

The producer publishes write_pos once per batch with a release store after copying the
entries; the consumer loads it with acquire, so it never sees a partial entry. The same
pairing on commit_pos keeps the producer from reusing space the consumer still reads.
"""

import os
import struct

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.errno cimport ENOENT, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp
from posix.fcntl cimport O_CLOEXEC, O_RDWR
from posix.fcntl cimport open as c_open
from posix.mman cimport (
    MADV_DONTNEED,
    MAP_FAILED,
    MAP_SHARED,
    MS_SYNC,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    msync,
    munmap,
)
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close as c_close

_MAGIC = b"KSYRING1"

cdef enum:
    VERSION = 1
    HEADER_SIZE = 4096
    PAGE_SIZE = 4096
    MIN_CAPACITY = 1 << 20
    MAX_SOURCE = 255  # u8 length field; constants.MAX_SOURCE_LENGTH says the same
    MIN_ENTRY = 24  # ksy_entry_size(0, 0)
    RELEASE_CHUNK = 1 << 18  # pages behind a cursor are unmapped this many bytes at a time

# u32 entry length field, 0xFFFFFFFF reserved for the wrap marker
cdef uint64_t MAX_ENTRY_FIELD = 0xFFFFFFF8


class RingError(Exception):
    """The file is not a valid ring (magic, version, geometry, positions) or an entry is corrupt."""


cdef object _oserror(int err, str path):
    return OSError(err, os.strerror(err), path)


def _create(str path, Py_ssize_t capacity) -> None:
    """Create the ring file at path atomically: a crash never leaves a partial file there."""
    size = HEADER_SIZE + capacity
    header = struct.pack("=8sIIQI", _MAGIC, VERSION, HEADER_SIZE, capacity, 0)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Reserve the blocks now: a page fault on a sparse mapping when the disk is full
        # would kill the process with SIGBUS.
        os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, header, 0)
        os.fsync(fd)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a ring another process created
        except FileExistsError:
            pass
    finally:
        os.close(fd)
        os.unlink(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


cdef class Ring:
    """A single-producer/single-consumer queue of log entries in a memory-mapped file."""

    def __cinit__(self):
        self._map = NULL

    def __init__(self, str path not None, Py_ssize_t capacity):
        cdef bytes fs_path = os.fsencode(path)
        cdef int fd = -1
        cdef int err
        self.close()
        self.path = path
        for attempt in range(2):  # once more after creating it
            fd = c_open(fs_path, O_RDWR | O_CLOEXEC)
            if fd >= 0:
                break
            err = errno
            if err != ENOENT or attempt:
                raise _oserror(err, path)
            if capacity < MIN_CAPACITY or capacity % PAGE_SIZE:
                raise ValueError(
                    f"ring capacity must be a multiple of {PAGE_SIZE} and at least "
                    f"{MIN_CAPACITY} bytes, not {capacity}"
                )
            _create(path, capacity)
        self._map_file(fd)
        try:
            self._validate()
        except RingError:
            self.close()
            raise
        self._cap = self._header.capacity
        self.capacity = <Py_ssize_t>self._cap
        self._max_entry = min(self._cap // 4, MAX_ENTRY_FIELD)
        self._read_pos = ksy_load64(&self._header.commit_pos)
        self._released_read = self._read_pos - self._read_pos % PAGE_SIZE
        self._released_write = ksy_load64(&self._header.write_pos)
        self._released_write -= self._released_write % PAGE_SIZE

    cdef void _release(self, uint64_t *released, uint64_t cursor) noexcept:
        """Unmap the data pages between released[0] and the page of cursor, once they are
        RELEASE_CHUNK or more, and move released[0] there. A cursor moved back (rewind)
        releases nothing until it passes released[0] again."""
        cdef uint64_t end = cursor - cursor % PAGE_SIZE
        cdef uint64_t start = released[0]
        cdef uint64_t offset, length, first
        if end < start or end - start < RELEASE_CHUNK:
            return
        if end - start > self._cap:
            start = end - self._cap
        offset = start % self._cap  # page aligned: so are positions here and the capacity
        length = end - start
        first = min(length, self._cap - offset)
        # Only a hint for memory use: the data stays in the file whatever madvise answers.
        madvise(self._data + offset, first, MADV_DONTNEED)
        if length > first:
            madvise(self._data, length - first, MADV_DONTNEED)
        released[0] = end

    cdef int _map_file(self, int fd) except -1:
        """Map the whole file read-write and shared, then close fd (the mapping stays valid)."""
        cdef struct_stat st
        cdef void *m
        cdef int err
        if fstat(fd, &st) != 0:
            err = errno
            c_close(fd)
            raise _oserror(err, self.path)
        if st.st_size < HEADER_SIZE + MIN_CAPACITY:
            c_close(fd)
            raise RingError(f"{self.path}: not a ring file ({st.st_size} bytes)")
        m = mmap(NULL, <size_t>st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        err = errno
        c_close(fd)
        if m == MAP_FAILED:
            raise _oserror(err, self.path)
        self._map = <char *>m
        self._map_size = <size_t>st.st_size
        self._header = <ksy_header *>m
        self._data = self._map + HEADER_SIZE
        return 0

    cdef int _validate(self) except -1:
        cdef ksy_header *h = self._header
        cdef uint64_t write_pos = ksy_load64(&h.write_pos)
        cdef uint64_t commit_pos = ksy_load64(&h.commit_pos)
        if self._map[:8] != _MAGIC:
            raise RingError(f"{self.path}: bad magic {self._map[:8]!r}")
        if h.version != VERSION or h.header_size != HEADER_SIZE:
            raise RingError(f"{self.path}: unsupported version {h.version}/{h.header_size}")
        if (
            h.capacity < MIN_CAPACITY
            or h.capacity % PAGE_SIZE
            or h.capacity + HEADER_SIZE != self._map_size
        ):
            raise RingError(
                f"{self.path}: capacity {h.capacity} does not match file size {self._map_size}"
            )
        if (
            write_pos < commit_pos
            or write_pos - commit_pos > h.capacity
            or write_pos % 8
            or commit_pos % 8
        ):
            raise RingError(
                f"{self.path}: inconsistent positions write={write_pos} commit={commit_pos}"
            )
        return 0

    cdef int _check_open(self) except -1:
        if self._map == NULL:
            raise ValueError("operation on a closed ring")
        return 0

    # --- producer ---------------------------------------------------------------------

    def write_batch(
        self,
        list messages not None,
        Py_ssize_t start,
        bytes source not None,
        int port,
        int kind,
        long long receive_ms,
    ) -> int:
        """Append messages[start:] while they fit; return how many were written (their bytes
        are in last_written_bytes).

        A message that is not bytes, or whose entry can never fit (> capacity / 4), raises
        TypeError / ValueError when it is messages[start]; later in the batch, the batch
        stops before it, so the next call (starting there) raises.
        """
        cdef Py_ssize_t n = PyList_GET_SIZE(messages)
        cdef Py_ssize_t source_length = PyBytes_GET_SIZE(source)
        cdef const char *source_data = PyBytes_AS_STRING(source)
        cdef Py_ssize_t i = start
        cdef object message
        cdef uint64_t message_length
        cdef int appended
        self._check_open()
        if start < 0 or start > n:
            raise ValueError(f"start {start} out of range for {n} messages")
        if source_length > MAX_SOURCE:
            raise ValueError(f"source is {source_length} bytes, at most {MAX_SOURCE} allowed")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range 0..65535")
        if not 0 <= kind <= 0xFF:
            raise ValueError(f"kind {kind} out of range 0..255")
        self.last_written_bytes = 0
        while i < n:
            message = <object>PyList_GET_ITEM(messages, i)
            if not PyBytes_Check(message):
                if i == start:
                    raise TypeError(f"messages[{i}] is {type(message).__name__}, not bytes")
                break
            message_length = <uint64_t>PyBytes_GET_SIZE(message)
            appended = -1 if message_length > MAX_ENTRY_FIELD else self.append_entry(
                source_data, <uint8_t>source_length, PyBytes_AS_STRING(message),
                <uint32_t>message_length, receive_ms, <uint16_t>port, <uint8_t>kind)
            if appended == -1:
                if i == start:
                    raise ValueError(
                        f"a {message_length}-byte message never fits in the ring "
                        f"(entries up to {self._max_entry} bytes)"
                    )
                break
            if appended == 0:
                break
            self.last_written_bytes += message_length
            i += 1
        self.publish()
        return i - start

    cdef int append_entry(self, const char *source, uint8_t source_length,
                          const char *message, uint32_t message_length,
                          int64_t receive_ms, uint16_t port, uint8_t kind) noexcept:
        """Copy one entry in after those appended since the last publish(), without
        publishing it: C callers (udp.pyx) fill the ring from their own buffers and publish
        once per batch, as write_batch does. 1: written; 0: no room now; -1: the entry can
        never fit (over capacity / 4).

        The ring must be open, and write_batch must not run between append_entry and
        publish (it would write over the unpublished entries)."""
        cdef uint64_t cap = self._cap
        cdef uint64_t write_pos, free, offset, room
        cdef uint64_t size = ksy_entry_size(message_length, source_length)
        if size > self._max_entry:
            return -1
        if self._appended:
            write_pos = self._append_pos
        else:
            write_pos = ksy_load64(&self._header.write_pos)
        free = cap - (write_pos - ksy_load64(&self._header.commit_pos))
        offset = write_pos % cap
        room = cap - offset
        if size > room:
            if room + size > free:
                return 0
            ksy_put_wrap(self._data + offset)
            write_pos += room
            offset = 0
        elif size > free:
            return 0
        ksy_put_entry(self._data + offset, <uint32_t>size, receive_ms, port, kind,
                      source, source_length, message, message_length)
        self._append_pos = write_pos + size
        self._appended = True
        return 1

    cdef void publish(self) noexcept:
        """Make the entries append_entry wrote visible to the consumer: one release store of
        write_pos after all their bytes, as write_batch does for its batch."""
        if self._appended:
            ksy_store64(&self._header.write_pos, self._append_pos)
            self._appended = False
            self._release(&self._released_write, self._append_pos)

    def free_bytes(self) -> int:
        """Bytes the producer may still use; space is freed by commit, not by reading."""
        self._check_open()
        return self._cap - (
            ksy_load64(&self._header.write_pos) - ksy_load64(&self._header.commit_pos)
        )

    @staticmethod
    def entry_size(Py_ssize_t message_length, Py_ssize_t source_length) -> int:
        """Bytes one entry takes in the ring (wrap markers not counted)."""
        if message_length < 0 or source_length < 0:
            raise ValueError("lengths must not be negative")
        return ksy_entry_size(message_length, source_length)

    def close_producer(self) -> None:
        """Mark a clean shutdown: nothing more will be written."""
        self._check_open()
        ksy_store32(&self._header.producer_closed, 1)

    def open_producer(self) -> None:
        """Clear the producer_closed flag (listener start-up)."""
        self._check_open()
        ksy_store32(&self._header.producer_closed, 0)

    @property
    def producer_closed(self) -> bool:
        self._check_open()
        return ksy_load32(&self._header.producer_closed) != 0

    # --- consumer ---------------------------------------------------------------------

    cdef int next_entry(self, uint64_t write_pos, RingEntry *entry) noexcept:
        """The entry at the private cursor, pointing into the mapping, and the cursor moved
        past it: 1; nothing before write_pos (the producer's published position, loaded by
        the caller with acquire): 0; a corrupt entry: -1, the cursor left before it."""
        cdef uint64_t cap = self._cap
        cdef uint64_t read_pos = self._read_pos
        cdef uint64_t offset, room, avail, length
        cdef const char *at
        while read_pos < write_pos:
            offset = read_pos % cap
            room = cap - offset
            avail = write_pos - read_pos
            at = self._data + offset
            length = ksy_u32(at)
            if length == KSY_WRAP:
                # A marker is only written when the next entry does not fit in room, and is
                # published together with that entry.
                if room >= self._max_entry or room >= avail:
                    self._read_pos = read_pos
                    return -1
                read_pos += room
                continue
            # Bounds first: the fields of a corrupt entry may lie past the data area.
            if length < MIN_ENTRY or length > room or length > avail:
                self._read_pos = read_pos
                return -1
            entry.message_length = ksy_u32(at + 4)
            entry.source_length = ksy_u8(at + 19)
            if ksy_entry_size(entry.message_length, entry.source_length) != length:
                self._read_pos = read_pos
                return -1
            entry.receive_ms = ksy_i64(at + 8)
            entry.port = ksy_u16(at + 16)
            entry.kind = ksy_u8(at + 18)
            entry.source = at + KSY_ENTRY_HEADER
            entry.message = at + KSY_ENTRY_HEADER + entry.source_length
            self._read_pos = read_pos + length
            return 1
        self._read_pos = read_pos
        return 0

    cdef uint64_t published(self) noexcept:
        """The producer's write position (acquire): entries before it are complete."""
        return ksy_load64(&self._header.write_pos)

    def read_batch(self, Py_ssize_t max_entries) -> list:
        """Read up to max_entries entries from the private cursor.

        Each entry is (kind, port, source, receive_ms, message). Only the private cursor
        advances. A corrupt entry raises RingError when it is the first one to read;
        after good entries, the batch stops before it and the next call raises.
        """
        cdef RingEntry entry
        cdef uint64_t write_pos
        cdef Py_ssize_t count = 0
        cdef int found = 0
        cdef list out = []
        cdef bytes source = None
        cdef object port_obj = None
        cdef object ms_obj = None
        self._check_open()
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        write_pos = self.published()
        while count < max_entries:
            found = self.next_entry(write_pos, &entry)
            if found != 1:
                break
            # Consecutive entries mostly share source, port and time: reuse those objects.
            if (
                source is None
                or entry.source_length != PyBytes_GET_SIZE(source)
                or memcmp(entry.source, PyBytes_AS_STRING(source), entry.source_length) != 0
            ):
                source = PyBytes_FromStringAndSize(entry.source, entry.source_length)
            if port_obj is None or entry.port != port_obj:
                port_obj = entry.port
            if ms_obj is None or entry.receive_ms != ms_obj:
                ms_obj = entry.receive_ms
            out.append((entry.kind, port_obj, source, ms_obj,
                        PyBytes_FromStringAndSize(entry.message, entry.message_length)))
            count += 1
        self.release_read()
        if found == -1 and count == 0:
            raise RingError(f"{self.path}: corrupt entry at position {self._read_pos}")
        return out

    cdef void release_read(self) noexcept:
        """Unmap what the read cursor has passed (see the module docstring): read_batch
        calls it, and so must C callers of next_entry after their batch."""
        self._release(&self._released_read, self._read_pos)

    def commit(self) -> None:
        """Release everything read so far: commit_pos = read cursor."""
        self._check_open()
        ksy_store64(&self._header.commit_pos, self._read_pos)

    def rewind(self) -> None:
        """Move the read cursor back to commit_pos, to re-read what was not committed."""
        self._check_open()
        self._read_pos = ksy_load64(&self._header.commit_pos)

    @property
    def pending_bytes(self) -> int:
        self._check_open()
        return ksy_load64(&self._header.write_pos) - self._read_pos

    @property
    def uncommitted_bytes(self) -> int:
        self._check_open()
        return ksy_load64(&self._header.write_pos) - ksy_load64(&self._header.commit_pos)

    @property
    def write_position(self) -> int:
        self._check_open()
        return ksy_load64(&self._header.write_pos)

    @property
    def commit_position(self) -> int:
        self._check_open()
        return ksy_load64(&self._header.commit_pos)

    # --- both -------------------------------------------------------------------------

    def sync(self) -> None:
        """msync(MS_SYNC) the whole mapping: durable across a machine crash."""
        self._check_open()
        if msync(self._map, self._map_size, MS_SYNC) != 0:
            raise _oserror(errno, self.path)

    def close(self) -> None:
        """Unmap the file; idempotent. The file and its contents stay."""
        if self._map != NULL:
            munmap(self._map, self._map_size)
            self._map = NULL
            self._header = NULL
            self._data = NULL

    def __dealloc__(self):
        if self._map != NULL:
            munmap(self._map, self._map_size)
