# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The JSON scanner for GELF documents: whether a message is one JSON object, and its
"timestamp" member in milliseconds (docs/contract.md §4.9). Sans-IO, no allocation, nothing
raises on any input bytes.

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

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memcmp

from kinesyslog.constants import GELF_MAX_JSON_DEPTH, GELF_MAX_TIMESTAMP_MS

cdef enum:
    MAX_DEPTH = 512
    LF = 10
    CR = 13
    QUOTE = 0x22
    BACKSLASH = 0x5C

assert GELF_MAX_JSON_DEPTH == MAX_DEPTH

cdef long long MAX_TIMESTAMP_MS = GELF_MAX_TIMESTAMP_MS

# Bytes that end the fast scan inside a JSON string: '"', '\\' and NUL.
cdef unsigned char STRING_STOP[256]
# Bytes other than JSON whitespace.
cdef unsigned char NOT_SPACE[256]


cdef void init_tables() noexcept:
    cdef int c
    for c in range(256):
        STRING_STOP[c] = c == QUOTE or c == BACKSLASH or c == 0
        NOT_SPACE[c] = not (c == 0x20 or c == 0x09 or c == LF or c == CR)


init_tables()


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
