"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), the reference.

The public API of kinesyslog/_fast/proxy.pyi, written from proxy-protocol.txt and
docs/contract.md §4.4 and §4.7 for clarity, not speed. decode() raises ProxyError with the
same reasons, in the same words, as the extension: they are what the relay logs.

Version 1, §2.1 (a line of US-ASCII, at most 107 bytes with its CRLF):

    "PROXY" SP ( "TCP4" / "TCP6" ) SP src SP dst SP sport SP dport CRLF
    "PROXY" SP "UNKNOWN" [ SP <anything but CRLF> ] CRLF

IPv4 addresses are RFC 3986 §3.2.2 IPv4address ("exactly 4 integers in the range [0..255]
... Heading zeroes are not permitted"); IPv6 addresses RFC 3986 §3.2.2 IPv6address, which
includes the mixed form ::ffff:192.0.2.1:

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
permitted".

Version 2, §2.2 (binary, network byte order, at most 16 + 4096 bytes here):

    sig[12] = 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    ver_cmd = version (high nibble, 2) | command (low nibble: 0 LOCAL, 1 PROXY)
    fam     = AF_UNSPEC/INET/INET6/UNIX (high nibble) | UNSPEC/STREAM/DGRAM (low nibble)
    len     = 16-bit length of the address block and the TLVs that follow
    address block: IPv4 4+4+2+2 = 12 bytes, IPv6 16+16+2+2 = 36, UNIX 108+108 = 216
    TLV     = type (1 byte) length (2 bytes) value (length bytes)

PP2_TYPE_CRC32C (0x03) holds the CRC32c (RFC 4960 Appendix B) of the whole header with its
own four bytes zeroed, and is verified.

Addresses are returned as text in the canonical form of docs/contract.md §4.7: RFC 5952 for
IPv6, an IPv4-mapped IPv6 address as plain IPv4. UNIX paths end at their first NUL and are
decoded as UTF-8 with backslashreplace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Union

from kinesyslog.constants import PROXY_V1_MAX_LENGTH, PROXY_V2_MAX_LENGTH

Buffer = Union[bytes, bytearray, memoryview]

PROXY = "PROXY"
LOCAL = "LOCAL"
TCP4 = "TCP4"
TCP6 = "TCP6"
UNIX = "UNIX"
UNKNOWN = "UNKNOWN"
UNSPEC = "UNSPEC"
STREAM = "STREAM"
DGRAM = "DGRAM"

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, ver_cmd, fam, len
V2_FAMILIES = (UNKNOWN, TCP4, TCP6, UNIX)  # by the high nibble of fam
V2_TRANSPORTS = (UNSPEC, STREAM, DGRAM)  # by its low nibble
ADDRESS_BLOCK = {TCP4: 12, TCP6: 36, UNIX: 216}
UNIX_PATH = 108
TLV_CRC32C = 0x03

# RFC 3986 §3.2.2, the ABNF above, as regular expressions.
DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
IPV4_ADDRESS = rf"{DEC_OCTET}\.{DEC_OCTET}\.{DEC_OCTET}\.{DEC_OCTET}"
H16 = r"[0-9A-Fa-f]{1,4}"
LS32 = rf"(?:{H16}:{H16}|{IPV4_ADDRESS})"


def _h16s(count: str) -> str:
    return f"(?:{H16}:){count}"


IPV6_ADDRESS = "|".join(
    [
        rf"{_h16s('{6}')}{LS32}",
        rf"::{_h16s('{5}')}{LS32}",
        rf"(?:{H16})?::{_h16s('{4}')}{LS32}",
        rf"(?:{_h16s('{0,1}')}{H16})?::{_h16s('{3}')}{LS32}",
        rf"(?:{_h16s('{0,2}')}{H16})?::{_h16s('{2}')}{LS32}",
        rf"(?:{_h16s('{0,3}')}{H16})?::{H16}:{LS32}",
        rf"(?:{_h16s('{0,4}')}{H16})?::{LS32}",
        rf"(?:{_h16s('{0,5}')}{H16})?::{H16}",
        rf"(?:{_h16s('{0,6}')}{H16})?::",
    ]
)
IPV4_TEXT = re.compile(IPV4_ADDRESS, re.ASCII)
IPV6_TEXT = re.compile(IPV6_ADDRESS, re.ASCII)
PORT_TEXT = re.compile(rb"0|[1-9][0-9]{0,4}")


class ProxyError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why (for logs)."""


@dataclasses.dataclass(frozen=True)
class ProxyHeader:
    """A decoded header. Addresses and ports are None where the header carries none."""

    version: int
    command: str  # PROXY or LOCAL
    family: str  # TCP4, TCP6, UNIX or UNKNOWN
    transport: str  # STREAM, DGRAM or UNSPEC
    source_address: str | None = None
    source_port: int | None = None
    destination_address: str | None = None
    destination_port: int | None = None

    @property
    def uses_peer(self) -> bool:
        """True when the caller must use the real peer and listener port (docs/contract.md
        §4.4: LOCAL, UNKNOWN)."""
        return self.command == LOCAL or self.family == UNKNOWN


# --- Text addresses ---------------------------------------------------------------------------


def canonical_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """docs/contract.md §4.7: RFC 5952 (Python's str), IPv4-mapped IPv6 as plain IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_address(text: str, ipv6: bool) -> str | None:
    """The canonical text of an IPv4address or IPv6address (RFC 3986 §3.2.2), or None."""
    grammar = IPV6_TEXT if ipv6 else IPV4_TEXT
    if not grammar.fullmatch(text):
        return None
    return canonical_text(ipaddress.IPv6Address(text) if ipv6 else ipaddress.IPv4Address(text))


def address_text(host: str) -> str:
    """The canonical text of an address as the kernel reports a peer: RFC 5952 for IPv6, an
    IPv4-mapped address as plain IPv4, a "%scope" suffix kept (docs/contract.md §4.7)."""
    if not isinstance(host, str):
        raise TypeError(f"address_text() takes a str, not {type(host).__name__}")
    text, separator, scope = host.partition("%")
    canonical = parse_address(text, ipv6=False) or parse_address(text, ipv6=True)
    if canonical is None:
        raise ValueError(f"not an IP address: {host!r}")
    return f"{canonical}%{scope}" if separator else canonical


# --- CRC32c ----------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data: Buffer) -> int:
    """CRC32c (Castagnoli, reflected polynomial 0x82F63B78, RFC 4960 Appendix B)."""
    crc = 0xFFFFFFFF
    for byte in memoryview(data).cast("B"):
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- decode ----------------------------------------------------------------------------------


def decode(data: Buffer) -> tuple[ProxyHeader | None, int]:
    """(None, needed) while the header is incomplete, `needed` being the length the data
    must reach before the answer can change; (header, consumed) once it is complete; raises
    ProxyError as soon as the bytes seen cannot start a valid header."""
    head = memoryview(data).tobytes()
    if not head:
        return None, 1
    if head[0] == V2_SIGNATURE[0]:
        return _decode_v2(head)
    if head[0] == V1_SIGNATURE[0]:
        return _decode_v1(head)
    raise _not_a_header(head)


def _not_a_header(data: bytes) -> ProxyError:
    return ProxyError(f"not a PROXY protocol header: starts with {data[:16]!r}")


def _decode_v1(data: bytes) -> tuple[ProxyHeader | None, int]:
    if not V1_SIGNATURE.startswith(data[: len(V1_SIGNATURE)]):
        raise _not_a_header(data)
    # "The receiver must not tolerate a single CR or LF character to end the line": the
    # first CR or LF after the signature must be the CR of the CRLF that ends the line.
    line_end = re.compile(rb"[\r\n]").search(data, len(V1_SIGNATURE), PROXY_V1_MAX_LENGTH)
    if line_end:
        at = line_end.start()
        if data[at] == 0x0A:
            raise ProxyError("PROXY v1: LF without CR")
        if at + 1 < len(data):
            if data[at + 1] != 0x0A:
                raise ProxyError("PROXY v1: CR without LF")
            if at + 1 < PROXY_V1_MAX_LENGTH:
                return _v1_line(data[len(V1_SIGNATURE) : at]), at + 2
    # No CRLF yet: the line is invalid once it can no longer end within the limit.
    if len(data) >= PROXY_V1_MAX_LENGTH or (
        len(data) == PROXY_V1_MAX_LENGTH - 1 and not data.endswith(b"\r")
    ):
        raise ProxyError(f"PROXY v1: no CRLF in the first {PROXY_V1_MAX_LENGTH} bytes")
    return None, len(data) + 1


def _v1_line(line: bytes) -> ProxyHeader:
    """The header of the line after "PROXY ", without its CRLF."""
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, PROXY, UNKNOWN, UNSPEC)
    if line[:5] not in (b"TCP4 ", b"TCP6 "):
        raise ProxyError(f"PROXY v1: unknown protocol in {line!r}")
    family = line[:4].decode()
    fields = line[5:].split(b" ")
    for index, field in enumerate(fields):
        if index == 4:
            raise ProxyError(f"PROXY v1: more than four fields in {line!r}")
        if not field:  # exactly one space between fields
            raise ProxyError(f"PROXY v1: empty field in {line!r}")
    if len(fields) < 4:
        raise ProxyError(f"PROXY v1: fewer than four fields in {line!r}")
    source, destination, source_port, destination_port = fields
    if not PORT_TEXT.fullmatch(source_port) or not PORT_TEXT.fullmatch(destination_port) or max(
        int(source_port), int(destination_port)
    ) > 65535:
        raise ProxyError(f"PROXY v1: bad port in {line!r}")
    addresses = []
    for role, field in (("source", source), ("destination", destination)):
        text = parse_address(field.decode("latin-1"), ipv6=family == TCP6)
        if text is None:
            raise ProxyError(f"PROXY v1: bad {family} {role} address in {line!r}")
        addresses.append(text)
    return ProxyHeader(1, PROXY, family, STREAM, addresses[0], int(source_port),
                       addresses[1], int(destination_port))


def _decode_v2(data: bytes) -> tuple[ProxyHeader | None, int]:
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise _not_a_header(data)
    # Each fixed byte is judged as soon as it arrives.
    command = family = transport = 0
    if len(data) > 12:
        version, command = divmod(data[12], 16)
        if version != 2:
            raise ProxyError(f"PROXY v2: version {version}, expected 2")
        if command > 1:
            raise ProxyError(f"PROXY v2: command {command:#x} is neither LOCAL nor PROXY")
    if len(data) > 13 and command == 1:  # LOCAL ignores the family byte
        family, transport = divmod(data[13], 16)
        if family >= len(V2_FAMILIES):
            raise ProxyError(f"PROXY v2: unknown address family {family:#x}")
        if transport >= len(V2_TRANSPORTS):
            raise ProxyError(f"PROXY v2: unknown transport protocol {transport:#x}")
    if len(data) < V2_FIXED:
        return None, V2_FIXED
    length = int.from_bytes(data[14:16], "big")
    total = V2_FIXED + length
    if total > PROXY_V2_MAX_LENGTH:
        raise ProxyError(f"PROXY v2: header of {total} bytes, more than {PROXY_V2_MAX_LENGTH}")
    if command == 0 or family == 0 or transport == 0:
        # LOCAL: "use the real connection endpoints"; AF_UNSPEC or UNSPEC: "ignore address
        # information". The block is skipped unread.
        if len(data) < total:
            return None, total
        if command == 0:
            return ProxyHeader(2, LOCAL, UNKNOWN, UNSPEC), total
        return ProxyHeader(2, PROXY, UNKNOWN, V2_TRANSPORTS[transport]), total
    family_name = V2_FAMILIES[family]
    block = ADDRESS_BLOCK[family_name]
    if length < block:
        raise ProxyError(f"PROXY v2: address block of {length} bytes, {family_name} needs "
                         f"{block}")
    if len(data) < total:
        return None, total
    header = data[:total]
    _check_tlvs(header, V2_FIXED + block)
    return _v2_addresses(header[V2_FIXED:], family_name, V2_TRANSPORTS[transport]), total


def _check_tlvs(header: bytes, offset: int) -> None:
    """The bytes after the address block must be whole TLVs; a CRC32C TLV must match."""
    while offset < len(header):
        if len(header) - offset < 3:
            raise ProxyError(f"PROXY v2: {len(header) - offset} stray bytes after the TLVs")
        tlv_type = header[offset]
        length = int.from_bytes(header[offset + 1 : offset + 3], "big")
        value_at = offset + 3
        if value_at + length > len(header):
            raise ProxyError(f"PROXY v2: TLV type {tlv_type:#04x} of {length} bytes runs past "
                             f"the header")
        if tlv_type == TLV_CRC32C:
            if length != 4:
                raise ProxyError(f"PROXY v2: CRC32C TLV of {length} bytes, expected 4")
            zeroed = header[:value_at] + bytes(4) + header[value_at + 4 :]
            if crc32c(zeroed) != int.from_bytes(header[value_at : value_at + 4], "big"):
                raise ProxyError("PROXY v2: CRC32C checksum mismatch")
        offset = value_at + length


def _v2_addresses(block: bytes, family: str, transport: str) -> ProxyHeader:
    if family == UNIX:
        source, destination = (
            block[start : start + UNIX_PATH].split(b"\0")[0].decode("utf-8", "backslashreplace")
            for start in (0, UNIX_PATH)
        )
        return ProxyHeader(2, PROXY, UNIX, transport, source, None, destination, None)
    size = 4 if family == TCP4 else 16
    address = ipaddress.IPv4Address if family == TCP4 else ipaddress.IPv6Address
    source_text = canonical_text(address(block[:size]))
    destination_text = canonical_text(address(block[size : 2 * size]))
    ports = block[2 * size : 2 * size + 4]
    return ProxyHeader(2, PROXY, family, transport, source_text,
                       int.from_bytes(ports[:2], "big"), destination_text,
                       int.from_bytes(ports[2:], "big"))
