# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Events as JSON, grouped by stream: the worker's hot path.

An event is encoded exactly as json.dumps({"id": ..., "timestamp": ..., "message": ...})
writes it, the message being the received bytes decoded as UTF-8 with "backslashreplace"
(docs/contract.md §4.8): valid UTF-8 is copied as is, each invalid byte becomes the text \\xNN (which
JSON writes as \\\\xNN), and control characters, '"' and '\\' are escaped as json.dumps
escapes them with ensure_ascii=False.

Sans-IO except new_id_prefix(), which reads the clock and the system's random source once
per worker start.
"""

import secrets
import time

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from kinesyslog._fast.json_scan cimport c_gelf_timestamp
from kinesyslog._fast.ring cimport Ring, RingEntry
from kinesyslog._fast.syslog cimport TimestampExtractor

from kinesyslog._fast.ring import RingError
from kinesyslog.constants import EVENT_ID_DIGITS, KIND_GELF

cdef enum:
    COUNTER_DIGITS = 20  # digits of the largest 64-bit counter
    ID_LENGTH = 56
    PREFIX_LENGTH = ID_LENGTH - COUNTER_DIGITS
    # {"id": "<id>", "timestamp": <ts>, "message": <json string>}
    EVENT_OVERHEAD = 8 + ID_LENGTH + 16 + 20 + 13 + 1
    MIN_GROUP_BYTES = 1024
    MIN_GROUP_EVENTS = 256

assert EVENT_ID_DIGITS == ID_LENGTH
cdef long GELF = KIND_GELF

cdef const char* HEX = b"0123456789abcdef"

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* A byte JSON writes as it is: ASCII but the controls, '"' and backslash. */
    static inline int ksy_json_plain(unsigned char c) {
        return c >= 0x20 && c < 0x80 && c != 0x22 && c != 0x5C;
    }

    /* Copies the leading bytes of src[0:n] that JSON writes as they are to out; how many.
       With SSE2, 16 bytes at a time, checked after they are stored: out must have room for
       n bytes. */
    static inline Py_ssize_t ksy_copy_json_plain(const unsigned char *src, Py_ssize_t n,
                                                 unsigned char *out) {
        Py_ssize_t i = 0;
    #if defined(__SSE2__)
        const __m128i space = _mm_set1_epi8(0x20);
        const __m128i quote = _mm_set1_epi8(0x22);
        const __m128i backslash = _mm_set1_epi8(0x5C);
        while (n - i >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(src + i));
            _mm_storeu_si128((__m128i *)(out + i), x);
            /* A signed compare: bytes from 0x80 up are negative, below 0x20 too. */
            __m128i special = _mm_or_si128(
                _mm_cmplt_epi8(x, space),
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)));
            int mask = _mm_movemask_epi8(special);
            if (mask)
                return i + __builtin_ctz((unsigned)mask);
            i += 16;
        }
    #endif
        while (i < n && ksy_json_plain(src[i])) {
            out[i] = src[i];
            i++;
        }
        return i;
    }
    """
    Py_ssize_t ksy_copy_json_plain(const unsigned char* src, Py_ssize_t n,
                                   unsigned char* out) noexcept nogil


cdef inline bint is_cont(unsigned char c) noexcept:
    return 0x80 <= c <= 0xBF


cdef inline Py_ssize_t utf8_length(const unsigned char* p, Py_ssize_t remaining) noexcept:
    """Length of the well-formed UTF-8 sequence at p (Unicode Table 3-7), or 0."""
    cdef unsigned char c = p[0], low = 0x80, high = 0xBF
    if c < 0xC2:
        return 0
    if c < 0xE0:
        return 2 if remaining >= 2 and is_cont(p[1]) else 0
    if c < 0xF0:
        if c == 0xE0:
            low = 0xA0
        elif c == 0xED:
            high = 0x9F  # no UTF-16 surrogates
        if remaining >= 3 and low <= p[1] <= high and is_cont(p[2]):
            return 3
        return 0
    if c < 0xF5:
        if c == 0xF0:
            low = 0x90
        elif c == 0xF4:
            high = 0x8F  # nothing above U+10FFFF
        if remaining >= 4 and low <= p[1] <= high and is_cont(p[2]) and is_cont(p[3]):
            return 4
    return 0


cdef Py_ssize_t write_json_string(const unsigned char* src, Py_ssize_t n,
                                  unsigned char* out) noexcept:
    """Write the JSON string of src into out (room for 6 * n + 2 bytes); its length."""
    cdef Py_ssize_t i = 0, o = 1, length
    cdef unsigned char c
    out[0] = 0x22
    while True:
        length = ksy_copy_json_plain(src + i, n - i, out + o)
        i += length
        o += length
        if i >= n:
            break
        c = src[i]
        if c < 0x80:
            out[o] = 0x5C
            if c == 0x22 or c == 0x5C:
                out[o + 1] = c
            elif c == 0x0A:
                out[o + 1] = 0x6E  # n
            elif c == 0x0D:
                out[o + 1] = 0x72  # r
            elif c == 0x09:
                out[o + 1] = 0x74  # t
            elif c == 0x08:
                out[o + 1] = 0x62  # b
            elif c == 0x0C:
                out[o + 1] = 0x66  # f
            else:
                memcpy(out + o + 1, b"u00", 3)
                out[o + 4] = HEX[c >> 4]
                out[o + 5] = HEX[c & 15]
                o += 4
            o += 2
            i += 1
            continue
        length = utf8_length(src + i, n - i)
        if length:
            memcpy(out + o, src + i, length)
            o += length
            i += length
        else:
            # backslashreplace writes \xNN; JSON escapes its backslash.
            memcpy(out + o, b"\\\\x", 3)
            out[o + 3] = HEX[c >> 4]
            out[o + 4] = HEX[c & 15]
            o += 5
            i += 1
    out[o] = 0x22
    return o + 1


def json_string(message) -> bytes:
    """json.dumps(bytes(message).decode("utf-8", "backslashreplace"), ensure_ascii=False),
    encoded as UTF-8, quotes included."""
    cdef Py_buffer view
    cdef unsigned char* out
    cdef Py_ssize_t length
    PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
    try:
        out = <unsigned char*>malloc(6 * view.len + 2)
        if out == NULL:
            raise MemoryError()
        try:
            length = write_json_string(<const unsigned char*>view.buf, view.len, out)
            return PyBytes_FromStringAndSize(<char*>out, length)
        finally:
            free(out)
    finally:
        PyBuffer_Release(&view)


def new_id_prefix() -> bytes:
    """36 digits for an IdGenerator: the time in ns (20 digits) and 16 random digits."""
    return b"%020d%016d" % (time.time_ns(), secrets.randbelow(10**16))


cdef class IdGenerator:
    """Event ids: 36 prefix digits then a 20-digit counter starting at 0 (56 digits)."""

    cdef unsigned char digits[ID_LENGTH]

    def __init__(self, bytes prefix):
        if len(prefix) != PREFIX_LENGTH or not prefix.isdigit():
            raise ValueError(f"id prefix must be {PREFIX_LENGTH} ASCII digits, got {prefix!r}")
        cdef int i
        memcpy(self.digits, <const char*>prefix, PREFIX_LENGTH)
        for i in range(PREFIX_LENGTH, ID_LENGTH):
            self.digits[i] = 0x30

    cdef void write_next(self, unsigned char* out) noexcept:
        cdef int k = ID_LENGTH - 1
        memcpy(out, self.digits, ID_LENGTH)
        while k >= PREFIX_LENGTH:
            if self.digits[k] != 0x39:
                self.digits[k] += 1
                return
            self.digits[k] = 0x30
            k -= 1

    def next_id(self) -> bytes:
        cdef unsigned char out[ID_LENGTH]
        self.write_next(out)
        return PyBytes_FromStringAndSize(<char*>out, ID_LENGTH)


cdef const char* DIGIT_PAIRS = (b"00010203040506070809101112131415161718192021222324252627282930"
                                b"31323334353637383940414243444546474849505152535455565758596061"
                                b"62636465666768697071727374757677787980818283848586878889909192"
                                b"93949596979899")


cdef inline Py_ssize_t write_int(long long value, unsigned char* out) noexcept:
    """Writes value in decimal at out; how many bytes (at most 20)."""
    cdef unsigned char tmp[20]
    cdef Py_ssize_t k = 20, o = 0
    cdef unsigned long long v
    cdef unsigned int pair
    if value < 0:
        out[0] = 0x2D
        o = 1
        v = <unsigned long long>(-(value + 1)) + 1
    else:
        v = <unsigned long long>value
    while v >= 100:
        pair = <unsigned int>(v % 100)
        v //= 100
        k -= 2
        memcpy(tmp + k, DIGIT_PAIRS + 2 * pair, 2)
    if v >= 10:
        k -= 2
        memcpy(tmp + k, DIGIT_PAIRS + 2 * v, 2)
    else:
        k -= 1
        tmp[k] = 0x30 + <unsigned char>v
    memcpy(out + o, tmp + k, 20 - k)
    return o + 20 - k


# Large stream buffers are kept when their stream was flushed, for the next busy stream: a
# busy worker then neither grows a buffer by copying nor faults in fresh pages per flush. At
# most POOL_SLOTS of them, each as large as the largest flush was.
cdef enum:
    POOL_SLOTS = 4
    POOLED_MIN = 256 * 1024

cdef unsigned char* pool_data[POOL_SLOTS]
cdef Py_ssize_t pool_capacity[POOL_SLOTS]


cdef void pool_put(unsigned char* data, Py_ssize_t capacity) noexcept:
    """Keeps ``data`` for reuse in place of the smallest pooled buffer, or frees it."""
    cdef int i, smallest = 0
    if capacity >= POOLED_MIN:
        for i in range(POOL_SLOTS):
            if pool_capacity[i] < pool_capacity[smallest]:
                smallest = i
        if capacity > pool_capacity[smallest]:
            data, pool_data[smallest] = pool_data[smallest], data
            capacity, pool_capacity[smallest] = pool_capacity[smallest], capacity
    free(data)


cdef int pool_take(Py_ssize_t wanted) noexcept:
    """The slot of the largest pooled buffer of at least ``wanted`` bytes, or -1."""
    cdef int i, best = -1
    for i in range(POOL_SLOTS):
        if pool_capacity[i] >= wanted and (best < 0 or pool_capacity[i] > pool_capacity[best]):
            best = i
    return best


cdef class _Group:
    """The events of one stream: their JSON joined by ", " in one growing buffer (read
    through the buffer protocol, without a copy), and where each ends."""

    cdef unsigned char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity
    cdef int64_t* ends
    cdef Py_ssize_t count
    cdef Py_ssize_t ends_capacity
    cdef long kind
    cdef long port
    cdef bytes source

    def __dealloc__(self):
        pool_put(self.data, self.capacity)
        free(self.ends)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.data, self.length, 1, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def ends_bytes(self) -> bytes:
        """Where each event ends in the buffer: native int64s (memoryview(...).cast("q"))."""
        return PyBytes_FromStringAndSize(<char*>self.ends, self.count * sizeof(int64_t))

    cdef unsigned char* reserve(self, Py_ssize_t size) except NULL:
        """Room for ``size`` more bytes and one more end; where they go."""
        cdef Py_ssize_t wanted = self.length + size
        cdef void* bigger
        cdef int slot
        if wanted > self.capacity:
            wanted = max(wanted, self.capacity * 2, MIN_GROUP_BYTES)
            slot = pool_take(wanted)
            if slot >= 0:
                bigger = pool_data[slot]
                memcpy(bigger, self.data, self.length)
                free(self.data)
                wanted = pool_capacity[slot]
                pool_data[slot] = NULL
                pool_capacity[slot] = 0
            else:
                bigger = realloc(self.data, wanted)
                if bigger == NULL:
                    raise MemoryError()
            self.data = <unsigned char*>bigger
            self.capacity = wanted
        if self.count == self.ends_capacity:
            wanted = max(self.ends_capacity * 2, MIN_GROUP_EVENTS)
            bigger = realloc(self.ends, wanted * sizeof(int64_t))
            if bigger == NULL:
                raise MemoryError()
            self.ends = <int64_t*>bigger
            self.ends_capacity = wanted
        return self.data + self.length


cdef class EventBuffers:
    """Encoded events per (kind, port, source), in arrival order."""

    cdef TimestampExtractor extractor
    cdef IdGenerator ids
    cdef dict groups
    cdef _Group last
    cdef readonly Py_ssize_t total_bytes
    cdef readonly Py_ssize_t event_count
    cdef readonly long long oldest_receive_ms
    # GELF messages that are not one JSON object (relayed all the same), decided here where
    # the message is parsed.
    cdef readonly long long gelf_invalid_json
    # The seconds of the last timestamp written (0: none yet) and their digits
    cdef long long _stamp_second
    cdef unsigned char _stamp_digits[20]
    cdef Py_ssize_t _stamp_length

    def __init__(self, TimestampExtractor extractor not None, IdGenerator ids not None):
        self.extractor = extractor
        self.ids = ids
        self._reset()

    cdef void _reset(self) noexcept:
        self.groups = {}
        self.last = None
        self.total_bytes = 0
        self.event_count = 0
        self.oldest_receive_ms = 0

    cdef _Group _group(self, long kind, long port, const char* source,
                       Py_ssize_t source_length):
        """The group of (kind, port, source); mostly the one of the previous event."""
        cdef _Group group = self.last
        if group is not None and group.kind == kind and group.port == port and (
                PyBytes_GET_SIZE(group.source) == source_length
                and memcmp(PyBytes_AS_STRING(group.source), source, source_length) == 0):
            return group
        source_obj = PyBytes_FromStringAndSize(source, source_length)
        key = (kind, port, source_obj)
        group = self.groups.get(key)
        if group is None:
            group = _Group()
            group.kind = kind
            group.port = port
            group.source = source_obj
            self.groups[key] = group
        self.last = group
        return group

    cdef Py_ssize_t _write_timestamp(self, long long ms, unsigned char* out) noexcept:
        """write_int(ms): the digits of its seconds are kept from the previous event of the
        same second, the digits of the milliseconds are written."""
        cdef long long second
        cdef int rest
        if ms < 1000:
            return write_int(ms, out)
        second = ms // 1000
        rest = <int>(ms - second * 1000)
        if second != self._stamp_second:
            self._stamp_length = write_int(second, self._stamp_digits)
            self._stamp_second = second
        memcpy(out, self._stamp_digits, self._stamp_length)
        memcpy(out + self._stamp_length, DIGIT_PAIRS + 2 * (rest // 10), 2)
        out[self._stamp_length + 2] = 0x30 + rest % 10
        return self._stamp_length + 3

    cdef int _add(self, long kind, long port, const char* source, Py_ssize_t source_length,
                  long long receive_ms, const unsigned char* data,
                  Py_ssize_t length) except -1:
        """Encodes one event at the end of its group."""
        cdef _Group group = self._group(kind, port, source, source_length)
        cdef long long timestamp
        cdef bint is_object
        cdef Py_ssize_t separator = 2 if group.count else 0
        cdef Py_ssize_t o = separator
        cdef unsigned char* out = group.reserve(separator + EVENT_OVERHEAD + 6 * length + 2)
        if kind == GELF:
            timestamp = c_gelf_timestamp(data, length, receive_ms, &is_object)
            if not is_object:
                self.gelf_invalid_json += 1
        else:
            timestamp = self.extractor.c_extract(data, length, receive_ms)
        if separator:
            memcpy(out, b", ", 2)
        memcpy(out + o, b'{"id": "', 8)
        self.ids.write_next(out + o + 8)
        memcpy(out + o + 8 + ID_LENGTH, b'", "timestamp": ', 16)
        o += 8 + ID_LENGTH + 16
        o += self._write_timestamp(timestamp, out + o)
        memcpy(out + o, b', "message": ', 13)
        o += 13
        o += write_json_string(data, length, out + o)
        out[o] = 0x7D
        o += 1
        group.length += o
        group.ends[group.count] = group.length
        group.count += 1
        if self.event_count == 0 or receive_ms < self.oldest_receive_ms:
            self.oldest_receive_ms = receive_ms
        self.event_count += 1
        self.total_bytes += o - separator
        return 0

    def add_from_ring(self, Ring ring not None, Py_ssize_t max_entries,
                      Py_ssize_t max_bytes) -> int:
        """Encodes entries read from ``ring`` (its private cursor advances; nothing is
        committed) until ``max_entries`` were read or total_bytes reached ``max_bytes``; how
        many. A corrupt entry raises RingError when it is the first one, else the read stops
        before it."""
        cdef RingEntry entry
        cdef uint64_t write_pos = ring.published()
        cdef Py_ssize_t count = 0
        cdef int found = 0
        ring._check_open()
        while count < max_entries and self.total_bytes < max_bytes:
            found = ring.next_entry(write_pos, &entry)
            if found != 1:
                break
            self._add(entry.kind, entry.port, entry.source, entry.source_length,
                      entry.receive_ms, <const unsigned char*>entry.message,
                      entry.message_length)
            count += 1
        ring.release_read()
        if found == -1 and count == 0:
            raise RingError(f"{ring.path}: corrupt entry at position {ring._read_pos}")
        return count

    def add_batch(self, list entries not None) -> None:
        """Add (kind, port, source, receive_ms, message) tuples, as Ring.read_batch gives
        them. The timestamp of a GELF entry (kind KIND_GELF) is its "timestamp" member, of
        any other its syslog header's."""
        cdef Py_buffer view
        cdef bytes source
        for entry in entries:
            kind, port, source, receive_ms, message = <tuple?>entry
            PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
            try:
                self._add(kind, port, PyBytes_AS_STRING(source), PyBytes_GET_SIZE(source),
                          receive_ms, <const unsigned char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)

    def take(self) -> list:
        """[((kind, port, source), body, ends), ...] in first-seen key order, body being the
        events' JSON joined by ", " (an object with the buffer protocol) and ends where each
        event ends in it (bytes of native int64); then empty."""
        cdef list taken = []
        cdef _Group group
        for key, group in self.groups.items():
            taken.append((key, group, group.ends_bytes()))
        self._reset()
        return taken
