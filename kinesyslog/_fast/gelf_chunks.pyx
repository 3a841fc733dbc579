# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GELF 1.1 over UDP: chunk reassembly (docs/contract.md §4.5). Sans-IO: datagrams and the
current time (a monotonic clock) in, whole payloads out; nothing raises on any input bytes.

GELF 1.1 (https://go2docs.graylog.org/current/getting_in_log_data/gelf.html): over UDP a
datagram is a whole payload or a chunk:

    CHUNK   = %x1E %x0F MESSAGE-ID SEQ COUNT PAYLOAD
    MESSAGE-ID = 8OCTET
    SEQ     = OCTET            ; 0 .. COUNT - 1
    COUNT   = OCTET            ; 1 .. 128
"""

from collections import OrderedDict

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_FromUnsignedLongLong
from libc.string cimport memcmp, memcpy

from kinesyslog.constants import (
    GELF_CHUNK_HEADER_LENGTH,
    GELF_CHUNK_MAGIC,
    GELF_CHUNK_TIMEOUT,
    GELF_MAX_CHUNKS,
    GELF_MAX_PENDING_BYTES,
    GELF_MAX_PENDING_MESSAGES,
    GELF_STANDARD_CHUNK_SIZE,
)

cdef enum:
    HEADER = 12
    MAX_CHUNKS = 128
    # Memory charged to pending_bytes besides chunk payloads, close to what CPython
    # allocates (measured with tracemalloc in the tests): per chunk, a bytes object;
    # per message, the record, its OrderedDict entry and key, plus 8 bytes a list slot.
    CHUNK_COST = 48
    MESSAGE_COST = 320
    SLOT_COST = 8

assert GELF_CHUNK_HEADER_LENGTH == HEADER and GELF_CHUNK_MAGIC == b"\x1e\x0f"
assert GELF_MAX_CHUNKS == MAX_CHUNKS

CHUNK_OVERHEAD = CHUNK_COST
MESSAGE_OVERHEAD = MESSAGE_COST
SLOT_OVERHEAD = SLOT_COST


cdef class _Pending:
    """One message being reassembled. chunks is None once it is refused as oversized: the
    record then only absorbs the message's remaining chunks until it completes or expires."""

    cdef double first_seen
    cdef int count
    cdef int received
    cdef unsigned long long seen[2]  # bitmap of the sequence numbers received
    cdef list chunks
    cdef Py_ssize_t size  # payload bytes held
    cdef Py_ssize_t cost  # what this message adds to pending_bytes
    cdef bint gone  # no longer pending: completed, evicted or expired


cdef class ChunkAssembler:
    """Reassembles GELF chunks (any order, duplicates ignored) under hard memory bounds.

    feed() returns a whole payload, from one datagram or from the last missing chunk of a
    message, or None. `now` must come from a monotonic clock and never decrease. A message
    is discarded once `timeout` seconds have passed since its first chunk (checked at every
    chunk and by expire()). Pending memory is charged to pending_bytes (payloads plus a fixed
    cost per chunk and per message, see CHUNK_OVERHEAD and MESSAGE_OVERHEAD); when a new
    chunk would take pending_bytes above max_pending_bytes, or a new message pending_messages
    above max_pending_messages, the oldest pending messages are evicted until it fits.

    A reassembled payload may hold at most max_reassembled bytes (see constants.py); a
    message that grows beyond it is dropped and counted in `oversized`. A chunk arriving
    after its message completed, was evicted or expired starts a new message, which expires.
    """

    cdef object pending  # OrderedDict: message id (int) -> _Pending, oldest first
    # At most the first_seen of the oldest pending message: _expire() looks no further while
    # even this is recent. Removing the oldest leaves it lower than needed, which is safe.
    cdef double oldest_bound
    cdef readonly Py_ssize_t max_message_size
    cdef readonly Py_ssize_t max_reassembled
    cdef readonly Py_ssize_t max_pending_bytes
    cdef readonly Py_ssize_t max_pending_messages
    cdef readonly double timeout
    cdef readonly Py_ssize_t pending_bytes
    cdef readonly long long expired
    cdef readonly long long evicted
    cdef readonly long long invalid
    cdef readonly long long duplicates
    cdef readonly long long empty
    cdef readonly long long oversized

    def __init__(self, Py_ssize_t max_message_size,
                 Py_ssize_t max_pending_bytes=GELF_MAX_PENDING_BYTES,
                 Py_ssize_t max_pending_messages=GELF_MAX_PENDING_MESSAGES,
                 double timeout=GELF_CHUNK_TIMEOUT):
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        if max_pending_bytes < 1 or max_pending_messages < 1:
            raise ValueError("max_pending_bytes and max_pending_messages must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.pending = OrderedDict()
        self.max_message_size = max_message_size
        self.max_reassembled = max(2 * max_message_size,
                                   GELF_MAX_CHUNKS * GELF_STANDARD_CHUNK_SIZE)
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_messages = max_pending_messages
        self.timeout = timeout

    @property
    def pending_messages(self) -> int:
        return len(self.pending)

    def feed(self, datagram, double now):
        cdef Py_buffer view
        if PyBytes_CheckExact(datagram):
            return self._feed(datagram, <const unsigned char*>PyBytes_AS_STRING(datagram),
                              PyBytes_GET_SIZE(datagram), now)
        PyObject_GetBuffer(datagram, &view, PyBUF_SIMPLE)
        try:
            return self._feed(None, <const unsigned char*>view.buf, view.len, now)
        finally:
            PyBuffer_Release(&view)

    def expire(self, double now) -> int:
        """Discard the messages whose first chunk is `timeout` or more old; how many."""
        cdef long long before = self.expired
        self._expire(now)
        return self.expired - before

    cdef object _feed(self, object whole, const unsigned char* p, Py_ssize_t n, double now):
        if n == 0:
            self.empty += 1
            return None
        if n < 2 or p[0] != 0x1E or p[1] != 0x0F:
            if whole is not None:
                return whole
            return PyBytes_FromStringAndSize(<const char*>p, n)
        if n < HEADER:
            self.invalid += 1
            return None
        cdef int seq = p[10], count = p[11]
        if count == 0 or count > MAX_CHUNKS or seq >= count:
            self.invalid += 1
            return None
        cdef Py_ssize_t size = n - HEADER
        if count == 1:
            if size > self.max_reassembled:
                self.oversized += 1
                return None
            return PyBytes_FromStringAndSize(<const char*>p + HEADER, size)
        self._expire(now)
        cdef unsigned long long message_id = 0
        memcpy(&message_id, p + 2, 8)
        key = PyLong_FromUnsignedLongLong(message_id)
        cdef _Pending msg = self.pending.get(key)
        if msg is None:
            return self._first_chunk(key, p, size, seq, count, now)
        if msg.count != count:
            self.invalid += 1
            return None
        cdef unsigned long long bit = 1ULL << (seq & 63)
        if msg.seen[seq >> 6] & bit:
            self.duplicates += 1
            return None
        msg.seen[seq >> 6] |= bit
        msg.received += 1
        if msg.chunks is None:
            if msg.received == count:
                self._remove(key, msg)
            return None
        if msg.size + size > self.max_reassembled:
            self.oversized += 1
            self._refuse(key, msg)
            return None
        if msg.received == count:
            self._remove(key, msg)
            return self._join(msg, p + HEADER, size, seq)
        cdef Py_ssize_t cost = CHUNK_COST + size
        if not self._make_room(cost, msg):
            self.oversized += 1
            self._refuse(key, msg)
            return None
        if msg.gone:  # it was the oldest and had to make room for its own chunk
            return None
        msg.chunks[seq] = PyBytes_FromStringAndSize(<const char*>p + HEADER, size)
        msg.size += size
        msg.cost += cost
        self.pending_bytes += cost
        return None

    cdef object _first_chunk(self, object key, const unsigned char* p, Py_ssize_t size,
                             int seq, int count, double now):
        cdef Py_ssize_t cost = MESSAGE_COST + SLOT_COST * count + CHUNK_COST + size
        if size > self.max_reassembled or not self._make_room(cost, None):
            self.oversized += 1
            return None
        cdef _Pending msg = _Pending.__new__(_Pending)
        msg.first_seen = now
        msg.count = count
        msg.received = 1
        msg.seen[0] = 0
        msg.seen[1] = 0
        msg.seen[seq >> 6] = 1ULL << (seq & 63)
        msg.chunks = [None] * count
        msg.chunks[seq] = PyBytes_FromStringAndSize(<const char*>p + HEADER, size)
        msg.size = size
        msg.cost = cost
        if not self.pending:
            self.oldest_bound = now
        self.pending[key] = msg
        self.pending_bytes += cost
        return None

    cdef object _join(self, _Pending msg, const unsigned char* last, Py_ssize_t last_size,
                      int last_seq):
        """The payload: every chunk in sequence order, the one at last_seq read from last."""
        cdef object result = PyBytes_FromStringAndSize(NULL, msg.size + last_size)
        cdef char* out = PyBytes_AS_STRING(result)
        cdef Py_ssize_t o = 0, length
        cdef int k
        cdef object chunk
        for k in range(msg.count):
            if k == last_seq:
                memcpy(out + o, last, last_size)
                o += last_size
            else:
                chunk = msg.chunks[k]
                length = PyBytes_GET_SIZE(chunk)
                memcpy(out + o, PyBytes_AS_STRING(chunk), length)
                o += length
        return result

    cdef bint _make_room(self, Py_ssize_t cost, _Pending adding_to) except -1:
        """Evict the oldest messages until cost more bytes fit, for a chunk of adding_to or
        of a new message (None); stop if adding_to itself is evicted. False if cost alone
        exceeds the bound."""
        if cost > self.max_pending_bytes:
            return False
        if adding_to is None:
            while len(self.pending) >= self.max_pending_messages:
                self._evict_oldest()
        while self.pending_bytes + cost > self.max_pending_bytes:
            self._evict_oldest()
            if adding_to is not None and adding_to.gone:
                break
        return True

    cdef int _evict_oldest(self) except -1:
        cdef _Pending msg = self.pending.popitem(last=False)[1]
        msg.gone = True
        self.pending_bytes -= msg.cost
        if msg.chunks is not None:
            self.evicted += 1
        return 0

    cdef int _expire(self, double now) except -1:
        cdef _Pending msg
        cdef double limit = now - self.timeout
        if self.oldest_bound > limit:
            return 0
        while self.pending:
            msg = next(iter(self.pending.values()))
            if msg.first_seen > limit:
                self.oldest_bound = msg.first_seen
                break
            self.pending.popitem(last=False)
            msg.gone = True
            self.pending_bytes -= msg.cost
            if msg.chunks is not None:
                self.expired += 1
        return 0

    cdef int _remove(self, object key, _Pending msg) except -1:
        del self.pending[key]
        msg.gone = True
        self.pending_bytes -= msg.cost
        return 0

    cdef int _refuse(self, object key, _Pending msg) except -1:
        """Free an oversized message's chunks; it stays as a record absorbing the rest."""
        if msg.received == msg.count:
            return self._remove(key, msg)
        msg.chunks = None
        self.pending_bytes -= msg.cost - MESSAGE_COST
        msg.cost = MESSAGE_COST
        msg.size = 0
        return 0
