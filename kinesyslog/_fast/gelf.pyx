# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GELF 1.1 input: UDP chunk reassembly, payload decompression, TCP/TLS framing, timestamps.

Sans-IO: callers pass datagrams, stream data and the current time (a monotonic clock for
ChunkAssembler, epoch milliseconds for gelf_timestamp); nothing here touches a socket, a
file, a clock or a logger. Nothing raises on any input bytes.

GELF 1.1 (https://go2docs.graylog.org/current/getting_in_log_data/gelf.html): over UDP a
datagram is a whole payload or a chunk; a payload is a JSON object, plain, zlib or gzip.
Over TCP a document is uncompressed and ends with a NUL byte.

    CHUNK   = %x1E %x0F MESSAGE-ID SEQ COUNT PAYLOAD
    MESSAGE-ID = 8OCTET
    SEQ     = OCTET            ; 0 .. COUNT - 1
    COUNT   = OCTET            ; 1 .. 128

JSON is read per RFC 8259:

    JSON-text = ws value ws
    object = begin-object [ member *( value-separator member ) ] end-object
    member = string name-separator value
    array  = begin-array [ value *( value-separator value ) ] end-array
    value  = false / null / true / object / array / number / string
    number = [ minus ] int [ frac ] [ exp ]
    int    = zero / ( digit1-9 *DIGIT )
    frac   = decimal-point 1*DIGIT
    exp    = e [ minus / plus ] 1*DIGIT
    string = quotation-mark *char quotation-mark
    char   = unescaped / escape ( %x22 / %x5C / %x2F / %x62 / %x66 / %x6E / %x72 / %x74 /
             %x75 4HEXDIG )
    unescaped = %x20-21 / %x23-5B / %x5D-10FFFF
    ws     = *( %x20 / %x09 / %x0A / %x0D )
"""

import zlib
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

from kinesyslog._fast.partial cimport PartialBuffer, partial_release, partial_reserve

from kinesyslog.constants import (
    GELF_CHUNK_HEADER_LENGTH,
    GELF_CHUNK_MAGIC,
    GELF_CHUNK_TIMEOUT,
    GELF_MAX_CHUNKS,
    GELF_MAX_JSON_DEPTH,
    GELF_MAX_PENDING_BYTES,
    GELF_MAX_PENDING_MESSAGES,
    GELF_MAX_TIMESTAMP_MS,
    GELF_STANDARD_CHUNK_SIZE,
)

cdef enum:
    HEADER = 12
    MAX_CHUNKS = 128
    MAX_DEPTH = 512
    LF = 10
    CR = 13
    QUOTE = 0x22
    BACKSLASH = 0x5C
    # Memory charged to pending_bytes besides chunk payloads, close to what CPython
    # allocates (measured with tracemalloc in the tests): per chunk, a bytes object;
    # per message, the record, its OrderedDict entry and key, plus 8 bytes a list slot.
    CHUNK_COST = 48
    MESSAGE_COST = 320
    SLOT_COST = 8

assert GELF_CHUNK_HEADER_LENGTH == HEADER and GELF_CHUNK_MAGIC == b"\x1e\x0f"
assert GELF_MAX_CHUNKS == MAX_CHUNKS and GELF_MAX_JSON_DEPTH == MAX_DEPTH

CHUNK_OVERHEAD = CHUNK_COST
MESSAGE_OVERHEAD = MESSAGE_COST
SLOT_OVERHEAD = SLOT_COST

cdef long long MAX_TIMESTAMP_MS = GELF_MAX_TIMESTAMP_MS


# ---------------------------------------------------------------------------------------
# UDP chunks


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


# ---------------------------------------------------------------------------------------
# Payloads


def decode_payload(payload, Py_ssize_t max_size) -> tuple:
    """(message, status) of a UDP payload: gzip (1f 8b), zlib (78, valid header check) or
    plain. Decompression stops after max_size + 1 output bytes, whatever the input claims.

    status is "ok"; "truncated" when the message was cut to max_size bytes (it is still
    delivered); or "corrupt" with message None when compressed data is invalid or ends
    early. Bytes after the end of a compressed stream are ignored.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef int wbits = 0
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        if n >= 2 and p[0] == 0x1F and p[1] == 0x8B:
            wbits = 16 + 15
        elif n >= 2 and p[0] == 0x78 and (p[0] * 256 + p[1]) % 31 == 0:
            wbits = 15
        if wbits == 0:
            if n > max_size:
                return PyBytes_FromStringAndSize(<const char*>p, max_size), "truncated"
            if PyBytes_CheckExact(payload):
                return payload, "ok"
            return PyBytes_FromStringAndSize(<const char*>p, n), "ok"
    finally:
        PyBuffer_Release(&view)
    decompressor = zlib.decompressobj(wbits)
    try:
        message = decompressor.decompress(payload, max_size + 1)
    except zlib.error:
        return None, "corrupt"
    if len(message) > max_size:
        return message[:max_size], "truncated"
    if not decompressor.eof:
        return None, "corrupt"
    return message, "ok"


# ---------------------------------------------------------------------------------------
# TCP and TLS framing

# Bytes that end the fast scan inside a JSON string: '"', '\\' and NUL.
cdef unsigned char STRING_STOP[256]
# Bytes other than JSON whitespace.
cdef unsigned char NOT_SPACE[256]
# Bytes skipped between frames: JSON whitespace and NUL.
cdef unsigned char GAP[256]


cdef void init_tables() noexcept:
    cdef int c
    for c in range(256):
        STRING_STOP[c] = c == QUOTE or c == BACKSLASH or c == 0
        NOT_SPACE[c] = not (c == 0x20 or c == 0x09 or c == LF or c == CR)
        GAP[c] = not NOT_SPACE[c] or c == 0


init_tables()


cdef class GelfStreamFramer:
    """Splits a TCP/TLS byte stream into GELF documents.

    A frame starts at the first byte that is not JSON whitespace (leading whitespace is
    dropped, so whitespace-only frames vanish). It ends at NUL, always. It also ends at LF
    when no JSON object is open: an object opens at "{" and closes at its matching "}"
    (brackets counted, strings and their backslash escapes skipped, only inside an object),
    so pretty-printed JSON is one frame while lines of non-JSON text still end at LF. A CR
    before a terminating LF is removed.

    A frame longer than max_message_size is delivered cut to max_message_size bytes as soon
    as that is known, counted in `truncated`, and the rest of it skipped. At most
    max_message_size + 1 bytes are held between feeds. At close, an unterminated frame is
    delivered if no object is open, and dropped and counted in `incomplete_dropped` if one
    is (the document was cut off).
    """

    cdef Py_ssize_t max_size
    cdef PartialBuffer partial  # holds blen bytes of the frame not delivered yet
    cdef Py_ssize_t blen
    cdef readonly long long truncated
    cdef readonly long long incomplete_dropped
    # The current frame's state.
    cdef bint started  # its first byte was seen
    cdef bint skipping  # it was delivered truncated: drop the rest
    cdef Py_ssize_t depth
    cdef bint in_string
    cdef bint escape

    def __cinit__(self, Py_ssize_t max_message_size):
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        self.max_size = max_message_size

    def __init__(self, Py_ssize_t max_message_size):
        pass

    def __dealloc__(self):
        partial_release(&self.partial, True)

    @property
    def buffered(self) -> int:
        return self.blen

    def feed(self, data) -> list:
        cdef Py_buffer view
        cdef list out = []
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, out)
        finally:
            PyBuffer_Release(&view)
        return out

    def close(self) -> list:
        cdef list out = []
        cdef Py_ssize_t length = self.blen
        if self.started and not self.skipping:
            if self.depth > 0:
                self.incomplete_dropped += 1
            else:
                if self.partial.data[length - 1] == CR:
                    length -= 1
                if length > self.max_size:
                    length = self.max_size
                    self.truncated += 1
                out.append(PyBytes_FromStringAndSize(<char*>self.partial.data, length))
        self._reset()
        partial_release(&self.partial, True)
        return out

    cdef inline void _reset(self) noexcept:
        self.blen = 0
        self.started = False
        self.skipping = False
        self.depth = 0
        self.in_string = False
        self.escape = False

    cdef Py_ssize_t _scan(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
        """Advance the frame's state over p[i:n]; the position of its terminator, or n."""
        cdef unsigned char c
        cdef Py_ssize_t depth = self.depth
        cdef bint in_string = self.in_string, escape = self.escape
        while i < n:
            if in_string:
                if escape:
                    escape = False
                    if p[i] == 0:
                        break
                    i += 1
                    continue
                while i < n and not STRING_STOP[p[i]]:
                    i += 1
                if i == n:
                    break
                c = p[i]
                if c == 0:
                    break
                if c == QUOTE:
                    in_string = False
                else:
                    escape = True
                i += 1
                continue
            c = p[i]
            if c == 0 or (c == LF and depth == 0):
                break
            if depth == 0:
                if c == 0x7B:  # {
                    depth = 1
            elif c == QUOTE:
                in_string = True
            elif c == 0x7B or c == 0x5B:  # { [
                depth += 1
            elif c == 0x7D or c == 0x5D:  # } ]
                depth -= 1
            i += 1
        self.depth = depth
        self.in_string = in_string
        self.escape = escape
        return i

    cdef inline object _message(self, const unsigned char* p, Py_ssize_t length):
        """The message made of buf[:blen] followed by p, cut to length bytes."""
        cdef Py_ssize_t head
        cdef object message
        cdef char* dest
        if self.blen == 0:
            return PyBytes_FromStringAndSize(<const char*>p, length)
        message = PyBytes_FromStringAndSize(NULL, length)
        dest = PyBytes_AS_STRING(message)
        head = self.blen if self.blen < length else length
        memcpy(dest, self.partial.data, head)
        memcpy(dest + head, p, length - head)
        return message

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t i = 0, t, avail, total
        cdef Py_ssize_t max_size = self.max_size
        cdef unsigned char last
        while i < n:
            if not self.started:
                while i < n and GAP[p[i]]:
                    i += 1
                if i == n:
                    break
                self.started = True
            t = self._scan(p, i, n)
            if not self.skipping:
                avail = t - i
                total = self.blen + avail
                if t < n:
                    if p[t] == LF:
                        last = p[t - 1] if avail > 0 else self.partial.data[self.blen - 1]
                        if last == CR:
                            total -= 1
                    if total > max_size:
                        out.append(self._message(p + i, max_size))
                        self.truncated += 1
                    else:
                        out.append(self._message(p + i, total))
                elif total <= max_size + 1:
                    # One byte over may be the CR of a CRLF, removed at the LF.
                    partial_reserve(&self.partial, total, max_size + 1)
                    memcpy(self.partial.data + self.blen, p + i, avail)
                    self.blen = total
                else:
                    out.append(self._message(p + i, max_size))
                    self.truncated += 1
                    self.blen = 0
                    self.skipping = True
            if t < n:
                self._reset()
                i = t + 1
            else:
                i = n
        if self.blen == 0:
            partial_release(&self.partial, False)
        return 0


# ---------------------------------------------------------------------------------------
# JSON: structure and the "timestamp" member


cdef enum ValueKind:
    KIND_NONE
    KIND_NUMBER
    KIND_STRING
    KIND_OTHER

cdef enum ScanState:
    OBJECT_FIRST  # after "{": a member or "}"
    OBJECT_NEXT   # after ",": a member
    ARRAY_FIRST   # after "[": a value or "]"
    VALUE
    AFTER_VALUE

cdef struct ObjectScan:
    ValueKind kind  # of the last "timestamp" member of the top-level object
    Py_ssize_t start
    Py_ssize_t end

cdef const char* TIMESTAMP = b"timestamp"
# Characters a one-letter escape stands for, indexed by the letter.
cdef unsigned char ESCAPED[128]


cdef void init_escapes() noexcept:
    cdef int c
    for c in range(128):
        ESCAPED[c] = 0
    ESCAPED[QUOTE] = QUOTE
    ESCAPED[BACKSLASH] = BACKSLASH
    ESCAPED[0x2F] = 0x2F
    ESCAPED[0x62] = 0x08  # b
    ESCAPED[0x66] = 0x0C  # f
    ESCAPED[0x6E] = LF  # n
    ESCAPED[0x72] = CR  # r
    ESCAPED[0x74] = 0x09  # t


init_escapes()


cdef inline bint is_digit(unsigned char c) noexcept:
    return 0x30 <= c <= 0x39


cdef inline int hex_value(unsigned char c) noexcept:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef inline Py_ssize_t skip_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and not NOT_SPACE[p[i]]:
        i += 1
    return i


cdef Py_ssize_t scan_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """End of the string whose opening quote is before p[i] (past its closing quote), or -1.
    Bytes of 0x80 and above are not checked for UTF-8 validity."""
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == QUOTE:
            return i + 1
        if c < 0x20:
            return -1
        if c == BACKSLASH:
            if i + 1 >= n:
                return -1
            c = p[i + 1]
            if c == 0x75:  # u
                if i + 6 > n or (hex_value(p[i + 2]) | hex_value(p[i + 3])
                                 | hex_value(p[i + 4]) | hex_value(p[i + 5])) < 0:
                    return -1
                i += 6
            elif c < 128 and ESCAPED[c]:
                i += 2
            else:
                return -1
        else:
            i += 1
    return -1


cdef Py_ssize_t scan_number(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """End of the JSON number starting at p[i], or -1."""
    if i < n and p[i] == 0x2D:  # -
        i += 1
    if i >= n or not is_digit(p[i]):
        return -1
    if p[i] == 0x30:
        i += 1
    else:
        while i < n and is_digit(p[i]):
            i += 1
    if i < n and p[i] == 0x2E:  # .
        i += 1
        if i >= n or not is_digit(p[i]):
            return -1
        while i < n and is_digit(p[i]):
            i += 1
    if i < n and (p[i] | 0x20) == 0x65:  # e E
        i += 1
        if i < n and (p[i] == 0x2B or p[i] == 0x2D):
            i += 1
        if i >= n or not is_digit(p[i]):
            return -1
        while i < n and is_digit(p[i]):
            i += 1
    return i


cdef bint is_timestamp_key(const unsigned char* p, Py_ssize_t i, Py_ssize_t end) noexcept:
    """Whether the valid string content p[i:end] decodes to "timestamp"."""
    cdef Py_ssize_t k = 0
    cdef int c
    if end - i == 9:
        return memcmp(p + i, TIMESTAMP, 9) == 0
    while i < end:
        c = p[i]
        if c == BACKSLASH:
            if p[i + 1] == 0x75:
                c = (hex_value(p[i + 2]) << 12 | hex_value(p[i + 3]) << 8
                     | hex_value(p[i + 4]) << 4 | hex_value(p[i + 5]))
                i += 6
            else:
                c = ESCAPED[p[i + 1]]
                i += 2
        else:
            i += 1
        if k >= 9 or c != TIMESTAMP[k]:
            return False
        k += 1
    return k == 9


cdef inline Py_ssize_t scan_literal(const unsigned char* p, Py_ssize_t i,
                                    Py_ssize_t n) noexcept:
    if n - i >= 4 and (memcmp(p + i, b"true", 4) == 0 or memcmp(p + i, b"null", 4) == 0):
        return i + 4
    if n - i >= 5 and memcmp(p + i, b"false", 5) == 0:
        return i + 5
    return -1


cdef bint scan_object(const unsigned char* p, Py_ssize_t n, ObjectScan* found) noexcept:
    """Whether p[:n] is one JSON object (RFC 8259, nesting up to MAX_DEPTH, UTF-8 not
    checked); records in found the last "timestamp" member of that object."""
    cdef bint is_object[MAX_DEPTH]
    cdef Py_ssize_t depth = 1, i, end
    cdef ScanState state = OBJECT_FIRST
    cdef bint record = False
    cdef unsigned char c
    found.kind = KIND_NONE
    i = skip_ws(p, 0, n)
    if i >= n or p[i] != 0x7B:
        return False
    is_object[0] = True
    i += 1
    while True:
        i = skip_ws(p, i, n)
        if i >= n:
            return depth == 0
        c = p[i]
        if state == AFTER_VALUE:
            if depth == 0:
                return False  # something after the object
            i += 1
            if c == 0x2C:  # ,
                state = OBJECT_NEXT if is_object[depth - 1] else VALUE
                record = False
            elif (c == 0x7D and is_object[depth - 1]) or (c == 0x5D and not is_object[depth - 1]):
                depth -= 1
            else:
                return False
        elif state == OBJECT_FIRST or state == OBJECT_NEXT:
            if c == 0x7D and state == OBJECT_FIRST:
                depth -= 1
                i += 1
                state = AFTER_VALUE
                continue
            if c != QUOTE:
                return False
            end = scan_string(p, i + 1, n)
            if end < 0:
                return False
            record = depth == 1 and is_timestamp_key(p, i + 1, end - 1)
            i = skip_ws(p, end, n)
            if i >= n or p[i] != 0x3A:  # :
                return False
            i += 1
            state = VALUE
        elif state == ARRAY_FIRST and c == 0x5D:
            depth -= 1
            i += 1
            state = AFTER_VALUE
        else:  # VALUE, or the first value of an array
            if c == 0x7B or c == 0x5B:
                if record:
                    found.kind = KIND_OTHER
                    record = False
                if depth >= MAX_DEPTH:
                    return False
                is_object[depth] = c == 0x7B
                depth += 1
                i += 1
                state = OBJECT_FIRST if c == 0x7B else ARRAY_FIRST
                continue
            if c == QUOTE:
                end = scan_string(p, i + 1, n)
            elif c == 0x2D or is_digit(c):
                end = scan_number(p, i, n)
            else:
                end = scan_literal(p, i, n)
            if end < 0:
                return False
            if record:
                found.kind = KIND_STRING if c == QUOTE else (
                    KIND_NUMBER if c == 0x2D or is_digit(c) else KIND_OTHER)
                found.start = i
                found.end = end
                record = False
            i = end
            state = AFTER_VALUE


cdef long long number_ms(const unsigned char* p, Py_ssize_t i, Py_ssize_t end) noexcept:
    """The valid JSON number p[i:end], in seconds, as milliseconds truncated toward zero;
    -1 if it is negative or after year 9999. Exact: no floating point."""
    cdef bint negative = p[i] == 0x2D
    cdef Py_ssize_t int_start, int_end, frac_start, frac_end, k
    cdef long long exponent = 0, point, ms = 0
    cdef int exponent_sign = 1
    if negative:
        i += 1
    int_start = i
    while i < end and is_digit(p[i]):
        i += 1
    int_end = i
    frac_start = frac_end = i
    if i < end and p[i] == 0x2E:
        frac_start = i + 1
        i = frac_start
        while i < end and is_digit(p[i]):
            i += 1
        frac_end = i
    if i < end:  # the exponent
        i += 1
        if p[i] == 0x2D:
            exponent_sign = -1
            i += 1
        elif p[i] == 0x2B:
            i += 1
        while i < end:
            if exponent < 1000000000:  # saturates far beyond any meaningful value
                exponent = exponent * 10 + (p[i] - 0x30)
            i += 1
    if negative:
        for k in range(int_start, int_end):
            if p[k] != 0x30:
                return -1
        for k in range(frac_start, frac_end):
            if p[k] != 0x30:
                return -1
        return 0  # -0
    # Digits of the number (integer then fraction part) before the millisecond point.
    point = (int_end - int_start) + exponent_sign * exponent + 3
    k = 0
    for i in range(int_start, int_end):
        if k >= point:
            return ms
        ms = ms * 10 + (p[i] - 0x30)
        if ms > MAX_TIMESTAMP_MS:
            return -1
        k += 1
    for i in range(frac_start, frac_end):
        if k >= point:
            return ms
        ms = ms * 10 + (p[i] - 0x30)
        if ms > MAX_TIMESTAMP_MS:
            return -1
        k += 1
    while ms != 0 and k < point:
        ms *= 10
        if ms > MAX_TIMESTAMP_MS:
            return -1
        k += 1
    return ms


cdef long long c_gelf_timestamp(const unsigned char* data, Py_ssize_t length,
                                long long receive_ms, bint* is_object) noexcept:
    """gelf_timestamp(); is_object is set to whether data is one JSON object."""
    cdef ObjectScan found
    cdef long long ms
    is_object[0] = scan_object(data, length, &found)
    if not is_object[0]:
        return receive_ms
    if found.kind == KIND_NUMBER:
        ms = number_ms(data, found.start, found.end)
    elif found.kind == KIND_STRING and found.end - found.start > 2 and scan_number(
            data, found.start + 1, found.end - 1) == found.end - 1:
        ms = number_ms(data, found.start + 1, found.end - 1)
    else:
        return receive_ms
    return receive_ms if ms < 0 else ms


def gelf_timestamp(message, long long receive_ms) -> int:
    """The message's GELF "timestamp" in ms since the epoch, else receive_ms.

    The value is the last "timestamp" member of the top-level object (as JSON parsers keep
    the last duplicate): a JSON number, or a string holding exactly a JSON number, in seconds
    since the epoch (exponents allowed); sub-millisecond digits are truncated. receive_ms is
    returned when the message is not one valid JSON object (see is_json_object), has no
    such member, or its value is another type, negative, or after year 9999.
    """
    cdef Py_buffer view
    cdef bint is_object
    PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
    try:
        return c_gelf_timestamp(<const unsigned char*>view.buf, view.len, receive_ms,
                                &is_object)
    finally:
        PyBuffer_Release(&view)


def is_json_object(message) -> bool:
    """Whether message is one JSON object (RFC 8259) with optional whitespace around it,
    nested at most 512 levels. String contents are not checked for UTF-8 validity (the
    event encoder escapes invalid bytes)."""
    cdef Py_buffer view
    cdef ObjectScan found
    PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
    try:
        return scan_object(<const unsigned char*>view.buf, view.len, &found)
    finally:
        PyBuffer_Release(&view)
