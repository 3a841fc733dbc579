# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Message framing: syslog over TCP and TLS (RFC 6587), syslog over UDP (RFC 5426), and GELF
over TCP and TLS (NUL-terminated documents). Both stream framers share one base, _Framer.

Sans-IO: `StreamFramer.feed()` takes whatever a socket returned and gives back the complete
messages; `close()` is called at end of stream. The framing is detected at each frame start.

RFC 6587 §3.4.1, octet counting (MSG-LEN limited here to 9 digits, as docs/contract.md §4.2
says):

    TCP-DATA = *SYSLOG-FRAME
    SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG
    MSG-LEN = NONZERO-DIGIT *DIGIT
    NONZERO-DIGIT = %d49-57

One trailing LF or CR LF inside the counted bytes is not part of the message (rsyslog's and
syslog-ng's RFC 5424 forwarding templates end with one; rsyslog drops it on reception too);
a frame holding nothing else is skipped.

RFC 6587 §3.4.2, non-transparent framing (the trailer accepted here is LF or NUL; a CR right
before an LF is removed as well, since many senders end lines with CRLF):

    TCP-DATA = *SYSLOG-FRAME
    SYSLOG-FRAME = SYSLOG-MSG TRAILER
    TRAILER = LF / APP-DEFINED
    APP-DEFINED = 1*2OCTET

A frame that starts with 1-9 followed by up to 8 more digits and SP is octet-counted;
anything else (a leading zero, a tenth digit, another byte after the digits) starts a
non-transparent frame whose content includes those bytes.

A message longer than max_message_size is delivered cut to max_message_size bytes as soon as
that is known, counted in `truncated`, and the rest of its frame is skipped. At most
max_message_size + 16 bytes are ever held between two feeds, in a buffer that grows only as
far as needed (kinesyslog/_fast/partial.pxd).

A framer attached to the ring (`attach()`) writes the messages of `feed_into()` straight from
the data into ring entries, as Ring.write_batch would, with no bytes object per message; the
messages the ring has no room for come back as a list, in order, for the caller to hold back.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memchr, memcpy

from kinesyslog._fast.partial cimport PartialBuffer, partial_release, partial_reserve
from kinesyslog._fast.ring cimport Ring

cdef enum:
    MAX_LEN_DIGITS = 9
    BUFFER_SLACK = 16
    LF = 10
    CR = 13
    SP = 32

cdef enum State:
    FRAME_START    # between frames; buf holds blen (0-9) MSG-LEN digits seen so far
    OCTET          # inside an octet-counted frame: buf holds blen content bytes
    OCTET_SKIP     # the frame's message was delivered truncated: skip `need` more bytes
    NON_TRANSPARENT  # inside a non-transparent frame: buf holds blen content bytes
    NT_SKIP        # the message was delivered truncated: skip up to the next LF or NUL


cdef class _Framer:
    """What the syslog and GELF stream framers share: the size limit, the buffer of the
    unfinished message (blen bytes of it), the counters, and the delivery of each complete
    message (_emit: to the ring, or to the list a feed returns). Subclasses implement _feed()
    and close()."""

    cdef Py_ssize_t max_size
    cdef PartialBuffer partial  # holds blen bytes of the frame not delivered yet
    cdef Py_ssize_t blen
    cdef readonly long long truncated
    cdef readonly long long incomplete_dropped
    # Messages written into the ring by feed_into(), and their bytes.
    cdef readonly long long written
    cdef readonly long long written_bytes
    cdef Ring _ring  # attach(): where feed_into() writes, with what source, port and kind
    cdef bytes _source
    cdef uint16_t _port
    cdef uint8_t _kind
    # During a feed: the messages to return, whether the ring may still take messages (it
    # may not once one did not fit: order), and the receive time of feed_into().
    cdef list _out
    cdef bint _direct
    cdef int64_t _receive_ms

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

    @property
    def attached(self) -> bool:
        return self._ring is not None

    def attach(self, Ring ring not None, bytes source not None, int port, int kind) -> None:
        """Makes feed_into() write messages into ring, as ring.write_batch(messages, 0,
        source, port, kind, receive_ms) would."""
        if PyBytes_GET_SIZE(source) > 255:
            raise ValueError(f"source is {PyBytes_GET_SIZE(source)} bytes, at most 255 allowed")
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range 0..65535")
        if not 0 <= kind <= 0xFF:
            raise ValueError(f"kind {kind} out of range 0..255")
        self._ring = ring
        self._source = source
        self._port = <uint16_t>port
        self._kind = <uint8_t>kind

    def feed(self, data) -> list:
        """The complete messages in data, with what came before."""
        return self._run(data, False)

    def feed_into(self, data, long long receive_ms) -> list:
        """Writes the complete messages in data, with what came before, into the attached
        ring and publishes them; returns those it had no room for, from the first that did
        not fit on (the caller writes them, in order, before anything later)."""
        if self._ring is None:
            raise ValueError("feed_into() before attach()")
        self._ring._check_open()
        self._receive_ms = receive_ms
        try:
            return self._run(data, True)
        finally:
            self._ring.publish()

    cdef list _run(self, data, bint direct):
        cdef Py_buffer view
        cdef list out = []
        self._out = out
        self._direct = direct
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
            self._out = None
            self._direct = False
        return out

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef int _emit(self, const unsigned char* p, Py_ssize_t length) except -1:
        """Delivers the message made of the buffer's blen bytes followed by p, cut to length
        bytes: into the ring while it has room during feed_into(), else to the feed's list."""
        cdef object message = None
        cdef const char* start = <const char*>p
        cdef int appended
        if self._direct:
            if self.blen != 0:
                message = self._message(p, length)
                start = PyBytes_AS_STRING(message)
            appended = self._ring.append_entry(
                PyBytes_AS_STRING(self._source), <uint8_t>PyBytes_GET_SIZE(self._source),
                start, <uint32_t>length, self._receive_ms, self._port, self._kind)
            if appended == 1:
                self.written += 1
                self.written_bytes += length
                return 0
            self._direct = False  # full (or never fits: write_batch says so to the caller)
        self._out.append(message if message is not None else self._message(p, length))
        return 0

    cdef inline object _message(self, const unsigned char* p, Py_ssize_t length):
        """The message made of the buffer's blen bytes followed by p, cut to length."""
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


cdef class StreamFramer(_Framer):
    """RFC 6587 framing of a TCP or TLS byte stream (see the module docstring)."""

    cdef State state
    cdef Py_ssize_t need      # OCTET/OCTET_SKIP: bytes of the frame not consumed yet
    cdef Py_ssize_t target    # OCTET: content bytes to deliver, min(MSG-LEN, max_size)
    # Per-feed scan cache: next LF / NUL at or after the scan position (n when none).
    cdef Py_ssize_t next_lf
    cdef Py_ssize_t next_nul

    def __cinit__(self, Py_ssize_t max_message_size):
        self.state = FRAME_START

    def close(self) -> list:
        cdef list out = []
        cdef Py_ssize_t length = self.blen
        if self.state == FRAME_START or self.state == NON_TRANSPARENT:
            # Digits never followed by SP are a non-transparent message. End of stream ends
            # the line: a CR left at its end goes, as it would before an LF.
            if length > 0 and self.partial.data[length - 1] == CR:
                length -= 1
            if length > self.max_size:
                length = self.max_size
                self.truncated += 1
            if length > 0:
                out.append(PyBytes_FromStringAndSize(<char*>self.partial.data, length))
        elif self.state == OCTET:
            self.incomplete_dropped += 1
        self.blen = 0
        self.state = FRAME_START
        partial_release(&self.partial, True)
        return out

    cdef inline Py_ssize_t _terminator(self, const unsigned char* p, Py_ssize_t i,
                                       Py_ssize_t n) noexcept:
        """Position of the first LF or NUL in p[i:n], or n."""
        cdef const void* hit
        if self.next_lf < i:
            hit = memchr(p + i, LF, <size_t>(n - i))
            self.next_lf = (<const unsigned char*>hit - p) if hit != NULL else n
        if self.next_nul < i:
            hit = memchr(p + i, 0, <size_t>(n - i))
            self.next_nul = (<const unsigned char*>hit - p) if hit != NULL else n
        return self.next_lf if self.next_lf < self.next_nul else self.next_nul

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = 0, j, t, avail, total, take
        cdef Py_ssize_t max_size = self.max_size
        cdef long long length
        cdef unsigned char c, last
        self.next_lf = -1
        self.next_nul = -1
        while i < n:
            if self.state == FRAME_START:
                if self.blen == 0:
                    c = p[i]
                    if c < 0x31 or c > 0x39:
                        self.state = NON_TRANSPARENT
                        continue
                    # Up to 10 digits decide: SP after 1-9 of them means octet counting.
                    j = i + 1
                    length = c - 0x30
                    while j < n and j - i <= MAX_LEN_DIGITS and 0x30 <= p[j] <= 0x39:
                        length = length * 10 + (p[j] - 0x30)
                        j += 1
                    if j == n and j - i <= MAX_LEN_DIGITS:
                        partial_reserve(&self.partial, j - i, max_size + BUFFER_SLACK)
                        memcpy(self.partial.data, p + i, j - i)
                        self.blen = j - i
                        return 0
                    if j - i <= MAX_LEN_DIGITS and p[j] == SP:
                        self._start_octet(length)
                        i = j + 1
                    else:
                        self.state = NON_TRANSPARENT
                    continue
                # MSG-LEN digits held from an earlier feed: at most 10 more bytes decide.
                c = p[i]
                if 0x30 <= c <= 0x39 and self.blen < MAX_LEN_DIGITS:
                    partial_reserve(&self.partial, self.blen + 1, max_size + BUFFER_SLACK)
                    self.partial.data[self.blen] = c
                    self.blen += 1
                    i += 1
                elif c == SP:
                    length = 0
                    for j in range(self.blen):
                        length = length * 10 + (self.partial.data[j] - 0x30)
                    self.blen = 0
                    self._start_octet(length)
                    i += 1
                else:
                    self.state = NON_TRANSPARENT
            elif self.state == NON_TRANSPARENT:
                t = self._terminator(p, i, n)
                avail = t - i
                total = self.blen + avail
                if total > 0:
                    last = p[t - 1] if avail > 0 else self.partial.data[self.blen - 1]
                else:
                    last = 0
                if t < n:
                    if p[t] == LF and last == CR:
                        total -= 1
                    if total > max_size:
                        self._emit(p + i, max_size)
                        self.truncated += 1
                    elif total > 0:
                        self._emit(p + i, total)
                    self.blen = 0
                    self.state = FRAME_START
                    i = t + 1
                elif total <= max_size or (total == max_size + 1 and last == CR):
                    # A CR just past the limit may still be the CR of a CRLF.
                    partial_reserve(&self.partial, total, max_size + BUFFER_SLACK)
                    memcpy(self.partial.data + self.blen, p + i, avail)
                    self.blen = total
                    i = n
                else:
                    self._emit(p + i, max_size)
                    self.truncated += 1
                    self.blen = 0
                    self.state = NT_SKIP
                    i = n
            elif self.state == OCTET:
                avail = n - i
                take = self.target - self.blen
                if avail >= take:
                    length = self.target
                    if self.need == take:  # the whole frame: one trailing LF or CR LF goes
                        if length > 0 and self._byte(p + i, length - 1) == LF:
                            length -= 1
                            if length > 0 and self._byte(p + i, length - 1) == CR:
                                length -= 1
                        if length > max_size:
                            length = max_size
                            self.truncated += 1
                    else:
                        self.truncated += 1
                    if length > 0:
                        self._emit(p + i, length)
                    self.blen = 0
                    self.need -= take
                    i += take
                    self.state = OCTET_SKIP if self.need > 0 else FRAME_START
                else:
                    partial_reserve(&self.partial, self.blen + avail, max_size + BUFFER_SLACK)
                    memcpy(self.partial.data + self.blen, p + i, avail)
                    self.blen += avail
                    self.need -= avail
                    i = n
            elif self.state == OCTET_SKIP:
                take = n - i if n - i < self.need else self.need
                self.need -= take
                i += take
                if self.need == 0:
                    self.state = FRAME_START
            else:  # NT_SKIP
                t = self._terminator(p, i, n)
                i = t + 1 if t < n else n
                if t < n:
                    self.state = FRAME_START
        if self.blen == 0:
            partial_release(&self.partial, False)
        return 0

    cdef inline unsigned char _byte(self, const unsigned char* p, Py_ssize_t k) noexcept:
        """Byte k of the frame content: the buffered blen bytes, then p."""
        return self.partial.data[k] if k < self.blen else p[k - self.blen]

    cdef inline void _start_octet(self, long long length) noexcept:
        # A frame up to two bytes over the limit may still fit once its trailing CR LF goes:
        # it is held whole. A longer one is delivered cut as soon as the limit is reached.
        self.state = OCTET
        self.need = <Py_ssize_t>length
        self.target = (<Py_ssize_t>length if length <= self.max_size + 2 else self.max_size)
        self.blen = 0


# GELF over TCP and TLS (docs/contract.md §4.6): NUL-terminated documents.

cdef enum:
    QUOTE = 0x22
    BACKSLASH = 0x5C

# Bytes that end the fast scan inside a JSON string: '"', '\\' and NUL.
cdef unsigned char STRING_STOP[256]
# Bytes skipped between frames: JSON whitespace and NUL.
cdef unsigned char GAP[256]


cdef void init_tables() noexcept:
    cdef int c
    for c in range(256):
        STRING_STOP[c] = c == QUOTE or c == BACKSLASH or c == 0
        GAP[c] = c == 0x20 or c == 0x09 or c == LF or c == CR or c == 0


init_tables()


cdef class GelfStreamFramer(_Framer):
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

    # The current frame's state.
    cdef bint started  # its first byte was seen
    cdef bint skipping  # it was delivered truncated: drop the rest
    cdef Py_ssize_t depth
    cdef bint in_string
    cdef bint escape

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

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n) except -1:
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
                        self._emit(p + i, max_size)
                        self.truncated += 1
                    else:
                        self._emit(p + i, total)
                elif total <= max_size + 1:
                    # One byte over may be the CR of a CRLF, removed at the LF.
                    partial_reserve(&self.partial, total, max_size + 1)
                    memcpy(self.partial.data + self.blen, p + i, avail)
                    self.blen = total
                else:
                    self._emit(p + i, max_size)
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


cdef Py_ssize_t datagram_length(const unsigned char* p, Py_ssize_t n) noexcept:
    """The length of the message in a datagram of n bytes: without one trailing CR LF, LF or
    NUL (before any cut at the size limit)."""
    if n > 0 and (p[n - 1] == LF or p[n - 1] == 0):
        n -= 1
        if p[n] == LF and n > 0 and p[n - 1] == CR:
            n -= 1
    return n


def frame_datagram(data, Py_ssize_t max_message_size) -> tuple:
    """One UDP datagram is one message (RFC 5426 §3.1); drop one trailing CRLF, LF or NUL."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef bint truncated = False
    if max_message_size < 1:
        raise ValueError("max_message_size must be at least 1")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = datagram_length(p, view.len)
        if n > max_message_size:
            n = max_message_size
            truncated = True
        return PyBytes_FromStringAndSize(<const char*>p, n), truncated
    finally:
        PyBuffer_Release(&view)
