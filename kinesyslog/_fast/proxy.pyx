# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO.

`decode(data)` takes the first bytes of a connection, as many as have arrived, and returns
(None, needed) while the header is incomplete, (header, consumed) once it is complete, or
raises ProxyError as soon as the bytes seen cannot start a valid header: the first byte of
a plain syslog sender or a TLS ClientHello is enough.

Version 1, §2.1 (a line of US-ASCII):

    "PROXY" SP ( "TCP4" / "TCP6" ) SP src SP dst SP sport SP dport CRLF
    "PROXY" SP "UNKNOWN" [ SP <anything but CRLF> ] CRLF
    "The receiver must wait for the CRLF sequence before starting to decode the addresses
    ... If the CRLF sequence is not found in the first 107 characters, the receiver should
    declare the line invalid ... The receiver must not tolerate a single CR or LF character
    to end the line when a complete CRLF sequence is expected."

  Addresses must match the family. "IPv4 addresses must be indicated as a series of exactly
  4 integers in the range [0..255] inclusive written in decimal representation separated by
  exactly one dot ... Heading zeroes are not permitted"; IPv6 addresses are read with the
  text grammar of RFC 3986 §3.2.2 (RFC 4291 §2.2), which also admits the mixed form
  "::ffff:192.0.2.1" that inet_ntop-based senders such as HAProxy write:

    IPv6address =                            6( h16 ":" ) ls32
                /                       "::" 5( h16 ":" ) ls32
                / [               h16 ] "::" 4( h16 ":" ) ls32
                / [ *1( h16 ":" ) h16 ] "::" 3( h16 ":" ) ls32
                / [ *2( h16 ":" ) h16 ] "::" 2( h16 ":" ) ls32
                / [ *3( h16 ":" ) h16 ] "::"    h16 ":"   ls32
                / [ *4( h16 ":" ) h16 ] "::"              ls32
                / [ *5( h16 ":" ) h16 ] "::"              h16
                / [ *6( h16 ":" ) h16 ] "::"
    h16         = 1*4HEXDIG
    ls32        = ( h16 ":" h16 ) / IPv4address
    IPv4address = dec-octet "." dec-octet "." dec-octet "." dec-octet
    dec-octet   = DIGIT / %x31-39 DIGIT / "1" 2DIGIT / "2" %x30-34 DIGIT / "25" %x30-35

  Ports: "a decimal integer in the range [0..65535] inclusive. Heading zeroes are not
  permitted". UNKNOWN: "the receiver must ignore anything presented before the CRLF".

Version 2, §2.2 (binary, network byte order):

    struct proxy_hdr_v2 {
        uint8_t sig[12];  /* hex 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A */
        uint8_t ver_cmd;  /* protocol version and command */
        uint8_t fam;      /* protocol family and address */
        uint16_t len;     /* number of following bytes part of the header */
    };
    ver_cmd: high nibble version, must be 2; low nibble 0 LOCAL, 1 PROXY, others invalid.
    fam: high nibble 0 AF_UNSPEC, 1 AF_INET, 2 AF_INET6, 3 AF_UNIX, others invalid;
         low nibble 0 UNSPEC, 1 STREAM, 2 DGRAM, others invalid.
    Address block: IPv4 4+4+2+2 = 12 bytes, IPv6 16+16+2+2 = 36, UNIX 108+108 = 216.
    Then TLVs up to 16 + len:  struct pp2_tlv { uint8_t type; uint8_t length_hi;
                                                 uint8_t length_lo; uint8_t value[0]; };

  LOCAL: "the receiver ... must use the real connection endpoints and discard the protocol
  block including the family which is ignored": its family byte and whole block are skipped.
  PROXY with AF_UNSPEC or UNSPEC transport: "The receiver should ignore address
  information": family UNKNOWN, the block skipped unread. Otherwise the block must be at
  least as long as the family's addresses (checked as soon as the length is known), and the
  bytes after them must be whole TLVs. PP2_TYPE_CRC32C (0x03) is verified, as §2.2.3
  requires of receivers that support it (we do): CRC32c (RFC 4960 App. B) of the whole
  header with the 4 checksum bytes zeroed, big-endian.

Addresses are returned as canonical text (RFC 5952, as str(ipaddress) writes it); an
IPv4-mapped IPv6 address (::ffff:a.b.c.d) is returned as plain IPv4 text, as the listener
writes real peers. UNIX paths end at their first NUL and are decoded as UTF-8 with
backslashreplace.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memchr, memcmp

from kinesyslog.constants import PROXY_V1_MAX_LENGTH, PROXY_V2_MAX_LENGTH

cdef enum:
    LF = 10
    CR = 13
    SP = 32
    DOT = 46
    COLON = 58
    ZERO = 48
    V2_FIXED = 16           # signature, ver_cmd, fam, len
    V2_SIGNATURE_LENGTH = 12
    UNIX_PATH = 108
    TLV_CRC32C = 0x03

cdef Py_ssize_t V1_MAX = PROXY_V1_MAX_LENGTH
cdef Py_ssize_t V2_MAX = PROXY_V2_MAX_LENGTH

cdef const char* V1_SIGNATURE = b"PROXY "
cdef const char* V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
cdef const char* HEX_DIGITS = b"0123456789abcdef"

# Address block size by family nibble (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX).
cdef Py_ssize_t[4] ADDRESS_BLOCK = [0, 12, 36, 216]

PROXY = "PROXY"
LOCAL = "LOCAL"
TCP4 = "TCP4"
TCP6 = "TCP6"
UNIX = "UNIX"
UNKNOWN = "UNKNOWN"
UNSPEC = "UNSPEC"
STREAM = "STREAM"
DGRAM = "DGRAM"
cdef tuple V2_FAMILIES = (UNKNOWN, TCP4, TCP6, UNIX)
cdef tuple V2_TRANSPORTS = (UNSPEC, STREAM, DGRAM)


class ProxyError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why (for logs)."""


cdef class ProxyHeader:
    """A decoded header. Addresses and ports are None where the header carries none."""

    cdef readonly int version
    cdef readonly str command
    cdef readonly str family
    cdef readonly str transport
    cdef readonly object source_address
    cdef readonly object source_port
    cdef readonly object destination_address
    cdef readonly object destination_port

    def __init__(self, int version, str command, str family, str transport,
                 source_address=None, source_port=None,
                 destination_address=None, destination_port=None):
        self.version = version
        self.command = command
        self.family = family
        self.transport = transport
        self.source_address = source_address
        self.source_port = source_port
        self.destination_address = destination_address
        self.destination_port = destination_port

    @property
    def uses_peer(self) -> bool:
        """True when the caller must use the real peer and listener port (LOCAL, UNKNOWN)."""
        return self.command == LOCAL or self.family == UNKNOWN

    cdef tuple _key(self):
        return (self.version, self.command, self.family, self.transport, self.source_address,
                self.source_port, self.destination_address, self.destination_port)

    def __eq__(self, other):
        if not isinstance(other, ProxyHeader):
            return NotImplemented
        return self._key() == (<ProxyHeader>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return ("ProxyHeader(version=%r, command=%r, family=%r, transport=%r, "
                "source_address=%r, source_port=%r, destination_address=%r, "
                "destination_port=%r)" % self._key())


cdef ProxyHeader _header(int version, str command, str family, str transport,
                         object source_address, object source_port,
                         object destination_address, object destination_port):
    cdef ProxyHeader header = ProxyHeader.__new__(ProxyHeader)
    header.version = version
    header.command = command
    header.family = family
    header.transport = transport
    header.source_address = source_address
    header.source_port = source_port
    header.destination_address = destination_address
    header.destination_port = destination_port
    return header


def decode(data) -> tuple:
    """(None, needed) while incomplete, (header, consumed) when complete; ProxyError if bad.

    `needed` is the total length data must reach before the answer can change; the bytes
    after `consumed` are the start of the stream payload.
    """
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _decode(<const uint8_t*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef tuple _decode(const uint8_t* p, Py_ssize_t n):
    if n == 0:
        return None, 1
    if p[0] == V1_SIGNATURE[0]:
        return _decode_v1(p, n)
    if p[0] == V2_SIGNATURE[0]:
        return _decode_v2(p, n)
    raise ProxyError(f"not a PROXY protocol header: starts with {_head(p, n)}")


cdef bytes _head(const uint8_t* p, Py_ssize_t n):
    """The first bytes of the input, for error messages."""
    return (<const char*>p)[:n if n < 16 else 16]


# --- Version 1 ------------------------------------------------------------------------------

cdef tuple _decode_v1(const uint8_t* p, Py_ssize_t n):
    cdef Py_ssize_t limit = n if n < V1_MAX else V1_MAX
    cdef Py_ssize_t i
    cdef uint8_t c
    if memcmp(p, V1_SIGNATURE, 6 if n > 6 else n) != 0:
        raise ProxyError(f"not a PROXY protocol header: starts with {_head(p, n)}")
    for i in range(6, limit):
        c = p[i]
        if c == LF:
            if p[i - 1] != CR:
                raise ProxyError("PROXY v1: LF without CR")
            return _parse_v1_line(p + 6, i - 7), i + 1
        if c == CR and i + 1 < n and p[i + 1] != LF:
            raise ProxyError("PROXY v1: CR without LF")
    # No CRLF yet. It must end within V1_MAX bytes: a line is invalid once it cannot.
    if n >= V1_MAX or (n == V1_MAX - 1 and p[n - 1] != CR):
        raise ProxyError(f"PROXY v1: no CRLF in the first {V1_MAX} bytes")
    return None, n + 1


cdef ProxyHeader _parse_v1_line(const uint8_t* s, Py_ssize_t n):
    """The line after "PROXY ", without its CRLF."""
    cdef const uint8_t* fields[4]
    cdef Py_ssize_t lengths[4]
    cdef Py_ssize_t i, start, k
    cdef int source_port, destination_port
    cdef bint ipv6
    cdef uint8_t address[16]
    if n >= 7 and memcmp(s, b"UNKNOWN", 7) == 0 and (n == 7 or s[7] == SP):
        return _header(1, PROXY, UNKNOWN, UNSPEC, None, None, None, None)
    if n < 5 or memcmp(s, b"TCP", 3) != 0 or (s[3] != b"4"[0] and s[3] != b"6"[0]) \
            or s[4] != SP:
        raise ProxyError(f"PROXY v1: unknown protocol in {_text(s, n)}")
    ipv6 = s[3] == b"6"[0]
    # Exactly four fields separated by single spaces: an empty field means a stray space.
    k = 0
    start = 5
    for i in range(5, n + 1):
        if i == n or s[i] == SP:
            if k == 4:
                raise ProxyError(f"PROXY v1: more than four fields in {_text(s, n)}")
            fields[k] = s + start
            lengths[k] = i - start
            if lengths[k] == 0:
                raise ProxyError(f"PROXY v1: empty field in {_text(s, n)}")
            k += 1
            start = i + 1
    if k != 4:
        raise ProxyError(f"PROXY v1: fewer than four fields in {_text(s, n)}")
    source_port = _parse_port(fields[2], lengths[2])
    destination_port = _parse_port(fields[3], lengths[3])
    if source_port < 0 or destination_port < 0:
        raise ProxyError(f"PROXY v1: bad port in {_text(s, n)}")
    if ipv6:
        if not _parse_ipv6(fields[0], lengths[0], address):
            raise ProxyError(f"PROXY v1: bad TCP6 source address in {_text(s, n)}")
        source = _ipv6_text(address)
        if not _parse_ipv6(fields[1], lengths[1], address):
            raise ProxyError(f"PROXY v1: bad TCP6 destination address in {_text(s, n)}")
        destination = _ipv6_text(address)
        return _header(1, PROXY, TCP6, STREAM, source, source_port, destination,
                       destination_port)
    # Valid IPv4 text is already canonical.
    if not _parse_ipv4(fields[0], lengths[0], address):
        raise ProxyError(f"PROXY v1: bad TCP4 source address in {_text(s, n)}")
    if not _parse_ipv4(fields[1], lengths[1], address):
        raise ProxyError(f"PROXY v1: bad TCP4 destination address in {_text(s, n)}")
    return _header(1, PROXY, TCP4, STREAM,
                   PyUnicode_DecodeASCII(<const char*>fields[0], lengths[0], NULL), source_port,
                   PyUnicode_DecodeASCII(<const char*>fields[1], lengths[1], NULL),
                   destination_port)


cdef str _text(const uint8_t* s, Py_ssize_t n):
    return repr((<const char*>s)[:n])


cdef int _parse_port(const uint8_t* s, Py_ssize_t n) noexcept:
    """0-65535 in decimal without leading zeros, or -1."""
    cdef int value = 0
    cdef Py_ssize_t i
    if n < 1 or n > 5 or (n > 1 and s[0] == ZERO):
        return -1
    for i in range(n):
        if s[i] < ZERO or s[i] > ZERO + 9:
            return -1
        value = value * 10 + (s[i] - ZERO)
    return value if value <= 65535 else -1


cdef bint _parse_ipv4(const uint8_t* s, Py_ssize_t n, uint8_t* out) noexcept:
    """IPv4address (dec-octets, no leading zeros) into 4 bytes."""
    cdef Py_ssize_t i = 0, start
    cdef int octet, value
    for octet in range(4):
        if octet > 0:
            if i >= n or s[i] != DOT:
                return False
            i += 1
        start = i
        value = 0
        while i < n and i - start < 3 and ZERO <= s[i] <= ZERO + 9:
            value = value * 10 + (s[i] - ZERO)
            i += 1
        if i == start or value > 255 or (i - start > 1 and s[start] == ZERO):
            return False
        out[octet] = <uint8_t>value
    return i == n


cdef inline int _hex_value(uint8_t c) noexcept:
    if ZERO <= c <= ZERO + 9:
        return c - ZERO
    c |= 0x20  # lower case
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef bint _parse_ipv6(const uint8_t* s, Py_ssize_t n, uint8_t* out) noexcept:
    """IPv6address (RFC 3986 §3.2.2) into 16 bytes."""
    cdef uint16_t groups[8]
    cdef int count = 0, gap = -1, digit, value, g
    cdef Py_ssize_t i = 0, j
    if n < 2:
        return False
    if s[0] == COLON:
        if s[1] != COLON:
            return False
        gap = 0
        i = 2
    while i < n:
        if count == 8:
            return False
        j = i
        value = 0
        while j < n and j - i < 5:
            digit = _hex_value(s[j])
            if digit < 0:
                break
            value = value * 16 + digit
            j += 1
        if j < n and s[j] == DOT:  # ls32 as IPv4address: the last 32 bits
            if count > 6 or not _parse_ipv4(s + i, n - i, out):
                return False
            groups[count] = (out[0] << 8) | out[1]
            groups[count + 1] = (out[2] << 8) | out[3]
            count += 2
            break
        if j == i or j - i > 4:
            return False
        groups[count] = <uint16_t>value
        count += 1
        if j == n:
            break
        if s[j] != COLON or j + 1 == n:
            return False
        i = j + 1
        if s[i] == COLON:
            if gap >= 0:
                return False
            gap = count
            i += 1
    if gap < 0 and count != 8 or gap >= 0 and count > 7:
        return False
    # Groups after the gap move to the end; the gap is zeros.
    for g in range(8):
        out[2 * g] = 0
        out[2 * g + 1] = 0
    for g in range(count):
        j = g if gap < 0 or g < gap else g + 8 - count
        out[2 * j] = groups[g] >> 8
        out[2 * j + 1] = groups[g] & 0xFF
    return True


cdef Py_ssize_t format_ipv4(const uint8_t* a, char* out) noexcept:
    """Dotted decimal without leading zeros into out (at least 15 bytes); its length."""
    cdef Py_ssize_t k = 0
    cdef int i, v
    for i in range(4):
        if i > 0:
            out[k] = DOT
            k += 1
        v = a[i]
        if v >= 100:
            out[k] = <char>(ZERO + v // 100)
            k += 1
        if v >= 10:
            out[k] = <char>(ZERO + v // 10 % 10)
            k += 1
        out[k] = <char>(ZERO + v % 10)
        k += 1
    return k


cdef str _ipv6_text(const uint8_t* a):
    """RFC 5952 text: lower case, no leading zeros, the first longest run of two or more zero
    groups as "::"; IPv4-mapped addresses as plain IPv4."""
    cdef char out[40]
    cdef uint16_t groups[8]
    cdef int i, shift, best = -1, best_length = 1, run = 0
    cdef Py_ssize_t k = 0
    cdef uint16_t g
    for i in range(8):
        groups[i] = (a[2 * i] << 8) | a[2 * i + 1]
    if groups[0] == 0 and groups[1] == 0 and groups[2] == 0 and groups[3] == 0 \
            and groups[4] == 0 and groups[5] == 0xFFFF:
        k = format_ipv4(a + 12, out)
        return PyUnicode_DecodeASCII(out, k, NULL)
    for i in range(8):
        run = run + 1 if groups[i] == 0 else 0
        if run > best_length:
            best_length = run
            best = i - run + 1
    i = 0
    while i < 8:
        if i == best:
            out[k] = COLON
            out[k + 1] = COLON
            k += 2
            i += best_length
            continue
        if i > 0 and i != best + best_length:
            out[k] = COLON
            k += 1
        g = groups[i]
        shift = 12
        while shift > 0 and (g >> shift) == 0:
            shift -= 4
        while shift >= 0:
            out[k] = HEX_DIGITS[(g >> shift) & 0xF]
            k += 1
            shift -= 4
        i += 1
    return PyUnicode_DecodeASCII(out, k, NULL)


# --- Version 2 ------------------------------------------------------------------------------

cdef tuple _decode_v2(const uint8_t* p, Py_ssize_t n):
    cdef int version, command = 0, family = 0, transport = 0
    cdef Py_ssize_t length, total, block, i, tlv_length
    if memcmp(p, V2_SIGNATURE, V2_SIGNATURE_LENGTH if n > V2_SIGNATURE_LENGTH else n) != 0:
        raise ProxyError(f"not a PROXY protocol header: starts with {_head(p, n)}")
    if n > 12:
        version = p[12] >> 4
        command = p[12] & 0xF
        if version != 2:
            raise ProxyError(f"PROXY v2: version {version}, expected 2")
        if command > 1:
            raise ProxyError(f"PROXY v2: command {command:#x} is neither LOCAL nor PROXY")
    if n > 13 and command == 1:
        family = p[13] >> 4
        transport = p[13] & 0xF
        if family > 3:
            raise ProxyError(f"PROXY v2: unknown address family {family:#x}")
        if transport > 2:
            raise ProxyError(f"PROXY v2: unknown transport protocol {transport:#x}")
    if n < V2_FIXED:
        return None, V2_FIXED
    length = (p[14] << 8) | p[15]
    total = V2_FIXED + length
    if total > V2_MAX:
        raise ProxyError(f"PROXY v2: header of {total} bytes, more than {V2_MAX}")
    if command == 0:
        if n < total:
            return None, total
        return _header(2, LOCAL, UNKNOWN, UNSPEC, None, None, None, None), total
    if family == 0 or transport == 0:
        if n < total:
            return None, total
        return _header(2, PROXY, UNKNOWN, V2_TRANSPORTS[transport], None, None, None,
                       None), total
    block = ADDRESS_BLOCK[family]
    if length < block:
        raise ProxyError(f"PROXY v2: address block of {length} bytes, "
                         f"{V2_FAMILIES[family]} needs {block}")
    if n < total:
        return None, total
    i = V2_FIXED + block
    while i < total:
        if total - i < 3:
            raise ProxyError(f"PROXY v2: {total - i} stray bytes after the TLVs")
        tlv_length = (p[i + 1] << 8) | p[i + 2]
        if tlv_length > total - i - 3:
            raise ProxyError(f"PROXY v2: TLV type {p[i]:#04x} of {tlv_length} bytes runs "
                             f"past the header")
        if p[i] == TLV_CRC32C:
            if tlv_length != 4:
                raise ProxyError(f"PROXY v2: CRC32C TLV of {tlv_length} bytes, expected 4")
            if _header_crc32c(p, total, i + 3) != _be32(p + i + 3):
                raise ProxyError("PROXY v2: CRC32C checksum mismatch")
        i += 3 + tlv_length
    return _v2_addresses(p + V2_FIXED, family, V2_TRANSPORTS[transport]), total


cdef ProxyHeader _v2_addresses(const uint8_t* a, int family, str transport):
    cdef char text[16]
    cdef Py_ssize_t k
    if family == 1:
        k = format_ipv4(a, text)
        source = PyUnicode_DecodeASCII(text, k, NULL)
        k = format_ipv4(a + 4, text)
        destination = PyUnicode_DecodeASCII(text, k, NULL)
        return _header(2, PROXY, TCP4, transport, source, (a[8] << 8) | a[9],
                       destination, (a[10] << 8) | a[11])
    if family == 2:
        return _header(2, PROXY, TCP6, transport, _ipv6_text(a), (a[32] << 8) | a[33],
                       _ipv6_text(a + 16), (a[34] << 8) | a[35])
    return _header(2, PROXY, UNIX, transport, _unix_path(a), None,
                   _unix_path(a + UNIX_PATH), None)


cdef str _unix_path(const uint8_t* a):
    cdef const void* nul = memchr(a, 0, UNIX_PATH)
    cdef Py_ssize_t length = UNIX_PATH if nul == NULL else <const uint8_t*>nul - a
    return PyUnicode_DecodeUTF8(<const char*>a, length, b"backslashreplace")


cdef inline uint32_t _be32(const uint8_t* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


# --- CRC32c (Castagnoli, reflected polynomial 0x82F63B78), RFC 4960 Appendix B --------------

cdef uint32_t CRC32C_TABLE[256]


cdef void _crc32c_init() noexcept:
    cdef uint32_t crc
    cdef int i, bit
    for i in range(256):
        crc = i
        for bit in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        CRC32C_TABLE[i] = crc


_crc32c_init()


cdef inline uint32_t _crc32c_update(uint32_t crc, const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        crc = CRC32C_TABLE[(crc ^ p[i]) & 0xFF] ^ (crc >> 8)
    return crc


cdef uint32_t _header_crc32c(const uint8_t* p, Py_ssize_t n, Py_ssize_t field) noexcept:
    """CRC32c of p[:n] with the four bytes at `field` read as zeros."""
    cdef uint8_t zeros[4]
    cdef uint32_t crc = 0xFFFFFFFF
    zeros[0] = zeros[1] = zeros[2] = zeros[3] = 0
    crc = _crc32c_update(crc, p, field)
    crc = _crc32c_update(crc, zeros, 4)
    crc = _crc32c_update(crc, p + field + 4, n - field - 4)
    return crc ^ 0xFFFFFFFF


def crc32c(data) -> int:
    """CRC32c of a buffer (the PP2_TYPE_CRC32C checksum)."""
    cdef Py_buffer view
    cdef uint32_t crc
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        crc = _crc32c_update(0xFFFFFFFF, <const uint8_t*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return crc ^ 0xFFFFFFFF


def address_text(str host not None) -> str:
    """The canonical text of an address as the kernel reports a peer (socket.accept,
    recvfrom): RFC 5952 for IPv6, an IPv4-mapped address as plain IPv4, a "%scope" suffix
    kept. The same form decode() gives header addresses, by the same code, so one sender is
    one log stream whichever way its address arrived."""
    cdef bytes raw
    cdef uint8_t address[16]
    cdef char out[16]
    cdef Py_ssize_t k
    text, separator, scope = host.partition("%")
    raw = text.encode("ascii", "replace")
    if _parse_ipv4(<const uint8_t*>raw, len(raw), address):
        k = format_ipv4(address, out)
        text = PyUnicode_DecodeASCII(out, k, NULL)
    elif _parse_ipv6(<const uint8_t*>raw, len(raw), address):
        text = _ipv6_text(address)
    else:
        raise ValueError(f"not an IP address: {host!r}")
    return f"{text}%{scope}" if separator else text
