"""PROXY protocol v1/v2 decoding (kinesyslog._fast.proxy, run against both implementations:
the `backend` fixture, Cython and tests/reference/proxy.py) and the encoders of
tests/proxy_encoder.py."""

from __future__ import annotations

import ipaddress
from typing import Optional

import pytest

from kinesyslog.constants import PROXY_V1_MAX_LENGTH, PROXY_V2_MAX_LENGTH
from tests.backends import Backend
from tests.proxy_encoder import pack_v1, pack_v2

# A header's fields, in ProxyHeader's argument order: version, command, family, transport,
# source address, source port, destination address, destination port.
Fields = tuple[int, str, str, str, Optional[str], Optional[int], Optional[str], Optional[int]]

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PAYLOAD = b"<13>1 2024-02-29T10:11:12Z host app - - - hello\n"
FFFF6 = ":".join(["ffff"] * 8)  # the longest IPv6 text, 39 characters


def v1(family: str, src: str | None = None, sport: int | None = None,
       dst: str | None = None, dport: int | None = None, transport: str = "STREAM",
       ) -> Fields:
    return (1, "PROXY", family, transport, src, sport, dst, dport)


def v2(family: str, src: str | None = None, sport: int | None = None,
       dst: str | None = None, dport: int | None = None, transport: str = "STREAM",
       command: str = "PROXY") -> Fields:
    return (2, command, family, transport, src, sport, dst, dport)


def header(backend: Backend, fields: Fields) -> object:
    """The backend's ProxyHeader of these fields."""
    return backend.proxy.ProxyHeader(*fields)


UNKNOWN_V1 = v1("UNKNOWN", transport="UNSPEC")
LOCAL_V2 = v2("UNKNOWN", transport="UNSPEC", command="LOCAL")


def tlv(tlv_type: int, value: bytes) -> bytes:
    return bytes([tlv_type]) + len(value).to_bytes(2, "big") + value


def v2_bytes(ver_cmd: int, fam: int, body: bytes) -> bytes:
    """A v2 header whose length field matches its body."""
    return SIG + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body


# HAProxy's v2 header for TCP over IPv4, 172.19.0.1:42578 -> 172.19.0.3:80.
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
IPV4_BLOCK = HAPROXY_V2[16:]
IPV6_BLOCK = (ipaddress.IPv6Address("2001:db8::7").packed
              + ipaddress.IPv6Address("2001:db8:0:1::1").packed + bytes.fromhex("9c40 05ea"))
UNIX_BLOCK = b"/run/haproxy.sock".ljust(108, b"\0") + b"/run/\xffrelay".ljust(108, b"\0")
# AWS NLB: PP2_TYPE_AWS (0xEA), subtype PP2_SUBTYPE_AWS_VPCE_ID (0x01), the endpoint id.
NLB_VALUE = b"\x01vpce-08d2bf15fd6f0c5a1"
NLB_TLV = tlv(0xEA, NLB_VALUE)
# PP2_TYPE_SSL: client = SSL|CERT_CONN|CERT_SESS, verify = 0, then SSL_VERSION and SSL_CN.
SSL_VALUE = b"\x07\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"example.com")
SSL_TLV = tlv(0x20, SSL_VALUE)


def crc32c_bitwise(data: bytes) -> int:
    """RFC 4960 Appendix B, one bit at a time: an independent check of the table version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(header_without_crc: bytes) -> bytes:
    """Appends a CRC32C TLV to a v2 header and fixes its length and checksum."""
    body = header_without_crc[16:] + b"\x03\x00\x04\x00\x00\x00\x00"
    zeroed = header_without_crc[:14] + len(body).to_bytes(2, "big") + body
    return zeroed[:-4] + crc32c_bitwise(zeroed).to_bytes(4, "big")


CRC_V2 = with_crc(HAPROXY_V2 + SSL_TLV)

# (header bytes, the decoded header's fields)
VALID = [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     v1("TCP4", "192.168.0.1", 56324, "192.168.0.11", 443)),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     v1("TCP4", "255.255.255.255", 65535, "255.255.255.255", 65535)),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 514\r\n", v1("TCP4", "0.0.0.0", 0, "10.0.0.1", 514)),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 40000 514\r\n",
     v1("TCP6", "2001:db8::1", 40000, "::1", 514)),
    (b"PROXY TCP6 %s %s 65535 65535\r\n" % (FFFF6.encode(), FFFF6.upper().encode()),
     v1("TCP6", FFFF6, 65535, FFFF6, 65535)),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::FFFF:c633:6401 1 2\r\n",
     v1("TCP6", "192.0.2.7", 1, "198.51.100.1", 2)),
    (b"PROXY UNKNOWN\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN %s %s 65535 65535\r\n" % (FFFF6.encode(), FFFF6.encode()), UNKNOWN_V1),
    (b"PROXY UNKNOWN anything at all, \x00\xff\t even this\r\n", UNKNOWN_V1),
    (b"PROXY UNKNOWN \r\n", UNKNOWN_V1),
    (HAPROXY_V2, v2("TCP4", "172.19.0.1", 42578, "172.19.0.3", 80)),
    (SIG + b"\x21\x12\x00\x0c" + bytes([192, 0, 2, 1, 10, 0, 0, 1, 0, 53, 0x12, 0x34]),
     v2("TCP4", "192.0.2.1", 53, "10.0.0.1", 0x1234, transport="DGRAM")),
    (SIG + b"\x21\x21\x00\x24" + IPV6_BLOCK,
     v2("TCP6", "2001:db8::7", 40000, "2001:db8:0:1::1", 1514)),
    (SIG + b"\x21\x22\x00\x24" + b"\0" * 10 + b"\xff\xff" + bytes([203, 0, 113, 9])
     + b"\0" * 15 + b"\x01" + b"\x13\x88\x00\x00",
     v2("TCP6", "203.0.113.9", 5000, "::1", 0, transport="DGRAM")),
    (SIG + b"\x21\x31\x00\xd8" + UNIX_BLOCK,
     v2("UNIX", "/run/haproxy.sock", None, "/run/\\xffrelay", None)),
    (SIG + b"\x20\x00\x00\x00", LOCAL_V2),
    # LOCAL: the family byte and the address block are ignored.
    (SIG + b"\x20\x11\x00\x0c" + IPV4_BLOCK, LOCAL_V2),
    (SIG + b"\x20\xff\x00\x05" + b"\xff" * 5, LOCAL_V2),
    # PROXY with AF_UNSPEC or UNSPEC transport: no addresses, whatever the block holds.
    (SIG + b"\x21\x00\x00\x00", v2("UNKNOWN", transport="UNSPEC")),
    (SIG + b"\x21\x00\x00\x03" + b"abc", v2("UNKNOWN", transport="UNSPEC")),
    (SIG + b"\x21\x01\x00\x00", v2("UNKNOWN", transport="STREAM")),
    (SIG + b"\x21\x10\x00\x02" + b"\x01\x02", v2("UNKNOWN", transport="UNSPEC")),
    # TLVs after the address block.
    (v2_bytes(0x21, 0x11, IPV4_BLOCK + NLB_TLV),
     v2("TCP4", "172.19.0.1", 42578, "172.19.0.3", 80)),
    (v2_bytes(0x21, 0x21, IPV6_BLOCK + SSL_TLV + tlv(0x04, b"")),
     v2("TCP6", "2001:db8::7", 40000, "2001:db8:0:1::1", 1514)),
    (CRC_V2, v2("TCP4", "172.19.0.1", 42578, "172.19.0.3", 80)),
    (SIG + b"\x21\x11" + (PROXY_V2_MAX_LENGTH - 16).to_bytes(2, "big") + IPV4_BLOCK
     + b"\xee" + (PROXY_V2_MAX_LENGTH - 16 - 12 - 3).to_bytes(2, "big")
     + b"\0" * (PROXY_V2_MAX_LENGTH - 16 - 12 - 3),
     v2("TCP4", "172.19.0.1", 42578, "172.19.0.3", 80)),
]
VALID_IDS = [f"{i}-{data[:24]!r}" for i, (data, _) in enumerate(VALID)]


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_valid_header_then_payload(backend: Backend, data: bytes, expected: Fields) -> None:
    decode = backend.proxy.decode
    decoded = header(backend, expected)
    assert decode(data) == (decoded, len(data))
    assert decode(data + PAYLOAD) == (decoded, len(data))
    found, consumed = decode(bytearray(data + PAYLOAD))
    assert found == decoded
    assert (data + PAYLOAD)[consumed:] == PAYLOAD
    assert decode(memoryview(b"xx" + data + PAYLOAD)[2:]) == (decoded, len(data))


@pytest.mark.parametrize(("data", "expected"), VALID, ids=VALID_IDS)
def test_every_prefix_is_incomplete(backend: Backend, data: bytes, expected: Fields) -> None:
    for k in range(len(data)):
        found, needed = backend.proxy.decode(data[:k])
        assert found is None, k
        assert k < needed <= len(data), k


def test_needed_values(backend: Backend) -> None:
    decode = backend.proxy.decode
    assert decode(b"") == (None, 1)
    assert decode(b"P") == (None, 2)
    assert decode(b"PROXY TCP4 1.2.3.4") == (None, 19)
    assert decode(b"PROXY UNKNOWN\r") == (None, 15)
    assert decode(b"\r") == (None, 16)
    assert decode(SIG + b"\x21") == (None, 16)
    assert decode(HAPROXY_V2[:16]) == (None, 28)
    assert decode(HAPROXY_V2[:27]) == (None, 28)
    assert decode(SIG + b"\x21\x11\x10\x00") == (None, 16 + 4096)
    line = b"PROXY UNKNOWN " + b"x" * 91  # 105 bytes: only CRLF fits now
    assert decode(line) == (None, 106)
    assert decode(line + b"\r") == (None, 107)


def test_uses_peer(backend: Backend) -> None:
    def uses_peer(fields: Fields) -> bool:
        return backend.proxy.ProxyHeader(*fields).uses_peer

    assert uses_peer(UNKNOWN_V1)
    assert uses_peer(LOCAL_V2)
    assert uses_peer(v2("UNKNOWN", transport="STREAM"))
    assert uses_peer((2, "LOCAL", "TCP4", "STREAM", "1.2.3.4", 1, "5.6.7.8", 2))
    assert not uses_peer(v1("TCP4", "1.2.3.4", 1, "5.6.7.8", 2))
    assert not uses_peer(v2("TCP6", "::1", 1, "::2", 2, transport="DGRAM"))
    assert not uses_peer(v2("UNIX", "/a", None, "/b", None))
    assert [uses_peer(fields) for _, fields in VALID].count(True) == 11


def test_header_value_semantics(backend: Backend) -> None:
    a = header(backend, v2("TCP4", "1.2.3.4", 1, "5.6.7.8", 2))
    assert a == header(backend, v2("TCP4", "1.2.3.4", 1, "5.6.7.8", 2))
    assert a != header(backend, v2("TCP4", "1.2.3.4", 1, "5.6.7.8", 3))
    assert a != header(backend, v1("TCP4", "1.2.3.4", 1, "5.6.7.8", 2))
    assert a != ("TCP4",)
    assert a != v2("TCP4", "1.2.3.4", 1, "5.6.7.8", 2)
    assert len({a, header(backend, v2("TCP4", "1.2.3.4", 1, "5.6.7.8", 2))}) == 1
    assert repr(a) == (
        "ProxyHeader(version=2, command='PROXY', family='TCP4', transport='STREAM', "
        "source_address='1.2.3.4', source_port=1, destination_address='5.6.7.8', "
        "destination_port=2)"
    )
    assert (a.version, a.command, a.family, a.transport) == (2, "PROXY", "TCP4", "STREAM")
    assert (a.source_address, a.source_port) == ("1.2.3.4", 1)
    assert (a.destination_address, a.destination_port) == ("5.6.7.8", 2)
    with pytest.raises(AttributeError):
        a.source_port = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
        ("0:0:0:0:0:0:0:0", "::"),
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
        ("::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"),
        ("fe80::ABCD:0:0:1", "fe80::abcd:0:0:1"),
        ("::1.2.3.4", "::102:304"),
        ("64:ff9b::192.0.2.33", "64:ff9b::c000:221"),
        ("::ffff:0.0.0.0", "0.0.0.0"),
        ("0:0:0:0:0:FFFF:255.255.255.255", "255.255.255.255"),
        ("::ffff:1:2", "0.1.0.2"),
        ("::fffe:1.2.3.4", "::fffe:102:304"),
    ],
)
def test_ipv6_text_is_canonical(backend: Backend, text: str, canonical: str) -> None:
    line = f"PROXY TCP6 {text} ::1 1 2\r\n".encode()
    found, _ = backend.proxy.decode(line)
    assert found is not None
    assert found.source_address == canonical
    packed = ipaddress.IPv6Address(text).packed
    found, _ = backend.proxy.decode(SIG + b"\x21\x21\x00\x24" + packed + packed + b"\0\1\0\2")
    assert found is not None
    assert found.source_address == found.destination_address == canonical
    assert backend.proxy.address_text(text) == canonical


BAD_SIGNATURES = [
    b"<13>1 2024-02-29T10:11:12Z host app - - - plain syslog\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS ClientHello
    b"GET / HTTP/1.1\r\n",
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXZ",
    b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXYTCP4",
    b"\r\n\r\n\x01",
    b"\r\r",
    b"\r\n\r\n\x00\r\nQUIT\r",
    b"\r\n\r\n\x00\r\nquit\n\x21\x11\x00\x0c",
    b"\x00",
]


@pytest.mark.parametrize("data", BAD_SIGNATURES)
def test_bad_signature_is_rejected_at_the_first_wrong_byte(backend: Backend, data: bytes,
                                                           ) -> None:
    decode, ProxyError = backend.proxy.decode, backend.proxy.ProxyError
    expected = SIG if data[:1] == b"\r" else b"PROXY "
    first_wrong = next(i for i, byte in enumerate(data) if expected[i : i + 1] != bytes([byte]))
    assert decode(data[:first_wrong]) == (None, 16 if data[:1] == b"\r" else first_wrong + 1)
    for end in (first_wrong + 1, len(data)):
        with pytest.raises(ProxyError, match="not a PROXY protocol header"):
            decode(data[:end])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # v2 fixed part, decided as soon as the byte arrives
        (SIG + b"\x11", "version 1, expected 2"),
        (SIG + b"\x31\x11\x00\x0c", "version 3"),
        (SIG + b"\x22", "command 0x2"),
        (SIG + b"\x2f", "command 0xf"),
        (SIG + b"\x21\x41", "address family 0x4"),
        (SIG + b"\x21\xf1", "address family 0xf"),
        (SIG + b"\x21\x13", "transport protocol 0x3"),
        (SIG + b"\x21\x0f", "transport protocol 0xf"),
        # v2 lengths, decided at 16 bytes
        (SIG + b"\x21\x11\x00\x0b", "address block of 11 bytes, TCP4 needs 12"),
        (SIG + b"\x21\x11\x00\x00", "address block of 0 bytes, TCP4 needs 12"),
        (SIG + b"\x21\x22\x00\x23", "address block of 35 bytes, TCP6 needs 36"),
        (SIG + b"\x21\x31\x00\xd7", "address block of 215 bytes, UNIX needs 216"),
        (SIG + b"\x21\x11" + (PROXY_V2_MAX_LENGTH - 15).to_bytes(2, "big"),
         f"header of {PROXY_V2_MAX_LENGTH + 1} bytes, more than {PROXY_V2_MAX_LENGTH}"),
        (SIG + b"\x20\x00\xff\xff", "header of 65551 bytes"),
        # v2 TLVs
        (SIG + b"\x21\x11\x00\x0e" + IPV4_BLOCK + b"\x04\x00", "2 stray bytes"),
        (SIG + b"\x21\x11\x00\x0d" + IPV4_BLOCK + b"\x04", "1 stray bytes"),
        (SIG + b"\x21\x11\x00\x0f" + IPV4_BLOCK + b"\x04\x00\x01",
         "TLV type 0x04 of 1 bytes runs past"),
        (v2_bytes(0x21, 0x11, IPV4_BLOCK + b"\xea\x00\x18" + NLB_VALUE),
         "TLV type 0xea of 24 bytes runs past"),
        (SIG + b"\x21\x11\x00\x12" + IPV4_BLOCK + b"\x04\x00\x00\x03\x00\x00",
         "CRC32C TLV of 0 bytes"),
        (CRC_V2[:-1] + bytes([CRC_V2[-1] ^ 1]), "CRC32C checksum mismatch"),
        (CRC_V2[:20] + b"\x00" + CRC_V2[21:], "CRC32C checksum mismatch"),
        # v1 line
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        (b"PROXY \n", "LF without CR"),
        (b"PROXY UNKNOWN\rx", "CR without LF"),
        (b"PROXY UNKNOWN\r\r\n", "CR without LF"),
        (b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n", "no CRLF in the first 107 bytes"),
        (b"PROXY UNKNOWN " + b"x" * 93, "no CRLF in the first 107 bytes"),
        (b"PROXY UNKNOWN " + b"x" * 92, "no CRLF in the first 107 bytes"),
        (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF in the first 107 bytes"),
        (b"PROXY " + b"x" * 200, "no CRLF in the first 107 bytes"),
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535" + b" " * 53 + b"\r\n",
         "no CRLF"),
        # v1 protocol word and fields
        (b"PROXY \r\n", "unknown protocol"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"PROXY UNKNOW\r\n", "unknown protocol"),
        (b"PROXY TCP4\r\n", "unknown protocol"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "empty field"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "more than four fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more than four fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "fewer than four fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "fewer than four fields"),
        (b"PROXY TCP4 \r\n", "empty field"),
        # v1 addresses
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "bad TCP4 destination address"),
        (b"PROXY TCP4 1.2.3.4 ::ffff:5.6.7.8 1 2\r\n", "bad TCP4 destination address"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.00 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3. 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1.2.3.4a 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP4 1234.2.3.4 5.6.7.8 1 2\r\n", "bad TCP4 source address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "bad TCP6 destination address"),
        (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 :::1 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 :1:: ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1: ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 : ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 g::1 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1:2:3:4::5:6:7:8 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 1::2:3:4:5:6:1.2.3.4 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 ::1.2.3.4:5 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 ::1.2.3.04 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 ::1.2.3 ::1 1 2\r\n", "bad TCP6 source address"),
        (b"PROXY TCP6 [::1] ::1 1 2\r\n", "bad TCP6 source address"),
        # v1 ports
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n", "bad port"),
        (b"PROXY TCP6 ::1 ::1 1 0x2\r\n", "bad port"),
    ],
)
def test_malformed(backend: Backend, data: bytes, match: str) -> None:
    decode, ProxyError = backend.proxy.decode, backend.proxy.ProxyError
    with pytest.raises(ProxyError, match=match.replace("(", r"\(")):
        decode(data)
    with pytest.raises(ProxyError):
        decode(data + PAYLOAD)


def test_v2_errors_are_decided_before_the_rest_arrives(backend: Backend) -> None:
    decode, ProxyError = backend.proxy.decode, backend.proxy.ProxyError
    with pytest.raises(ProxyError):
        decode(SIG + b"\x21\x11\x00\x0b")
    with pytest.raises(ProxyError):
        decode(SIG + b"\x21\x11\x10\x01")
    # LOCAL skips what the family would need: a short block is fine.
    assert decode(SIG + b"\x20\x11\x00\x02") == (None, 18)
    assert decode(SIG + b"\x20\x11\x00\x02\x00\x00") == (header(backend, LOCAL_V2), 18)


def test_v1_line_of_exactly_107_bytes(backend: Backend) -> None:
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == PROXY_V1_MAX_LENGTH == 107
    assert backend.proxy.decode(line + b"more") == (header(backend, UNKNOWN_V1), 107)


def test_crc32c(backend: Backend) -> None:
    crc32c = backend.proxy.crc32c
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = bytes(range(256)) * 3
    assert crc32c(data) == crc32c_bitwise(data)
    assert crc32c(memoryview(data)[5:]) == crc32c_bitwise(data[5:])


def test_pack_v1() -> None:
    assert pack_v1("TCP4", "192.168.0.1", "192.168.0.11", 56324, 443) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert pack_v1("TCP6", "2001:DB8:0:0:0:0:0:1", "192.0.2.1", 0, 65535) == (
        b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 0 65535\r\n")
    assert pack_v1("UNKNOWN", None, None, None, None) == b"PROXY UNKNOWN\r\n"
    assert pack_v1("UNKNOWN", "::1", "::2", 1, 2) == b"PROXY UNKNOWN ::1 ::2 1 2\r\n"
    for bad in [("TCP5", "1.2.3.4", "1.2.3.4", 1, 2), ("TCP4", "::1", "1.2.3.4", 1, 2),
                ("TCP4", "1.2.3.4", "1.2.3.4", 1, 65536), ("TCP4", None, "1.2.3.4", 1, 2),
                ("TCP6", "::1", "::1", -1, 2), ("UNKNOWN", "::1", None, None, None),
                ("UNKNOWN", "x" * 100, "y", 1, 2)]:
        with pytest.raises(ValueError):
            pack_v1(*bad)


def test_pack_v2() -> None:
    assert pack_v2("PROXY", "TCP4", "172.19.0.1", "172.19.0.3", 42578, 80) == HAPROXY_V2
    assert pack_v2("LOCAL", "UNKNOWN", None, None, None, None) == SIG + b"\x20\x00\x00\x00"
    assert pack_v2("PROXY", "TCP4", "172.19.0.1", "172.19.0.3", 42578, 80,
                   [(0xEA, NLB_VALUE)]) == v2_bytes(0x21, 0x11, IPV4_BLOCK + NLB_TLV)
    assert pack_v2("PROXY", "TCP4", "172.19.0.1", "172.19.0.3", 42578, 80,
                   [(0x20, SSL_VALUE), (0x03, b"\0\0\0\0")]) == CRC_V2
    assert pack_v2("PROXY", "TCP6", "2001:db8::7", "2001:db8:0:1::1", 40000, 1514,
                   transport="DGRAM") == SIG + b"\x21\x22\x00\x24" + IPV6_BLOCK
    assert pack_v2("PROXY", "UNIX", "/run/haproxy.sock", "/run/\udcffrelay", None,
                   None) == SIG + b"\x21\x31\x00\xd8" + UNIX_BLOCK
    wrong_crc = pack_v2("PROXY", "UNKNOWN", None, None, None, None, [(3, b"abcd")])
    assert wrong_crc == SIG + b"\x21\x00\x00\x07\x03\x00\x04abcd"
    for bad in [("SEND", "TCP4", "1.2.3.4", "1.2.3.4", 1, 2),
                ("PROXY", "TCP5", "1.2.3.4", "1.2.3.4", 1, 2),
                ("PROXY", "TCP4", None, "1.2.3.4", 1, 2),
                ("PROXY", "TCP4", "1.2.3.4", "::1", 1, 2),
                ("PROXY", "TCP6", "::1", "::1", 1, None),
                ("PROXY", "UNIX", "x" * 109, "y", None, None)]:
        with pytest.raises(ValueError):
            pack_v2(*bad)
    with pytest.raises(ValueError):
        pack_v2("PROXY", "TCP4", "1.2.3.4", "1.2.3.4", 1, 2, transport="RAW")
    with pytest.raises(ValueError):
        pack_v2("PROXY", "UNKNOWN", None, None, None, None, [(0xEE, b"x" * 65533)])


@pytest.mark.parametrize(
    ("packed", "expected"),
    [
        (pack_v1("TCP4", "10.1.2.3", "10.3.2.1", 1, 2), v1("TCP4", "10.1.2.3", 1, "10.3.2.1", 2)),
        (pack_v1("TCP6", "2001:db8::5", "1.2.3.4", 3, 4),
         v1("TCP6", "2001:db8::5", 3, "1.2.3.4", 4)),
        (pack_v1("UNKNOWN", "a", "b", "c", "d"), UNKNOWN_V1),
        (pack_v2("PROXY", "TCP4", "10.1.2.3", "10.3.2.1", 1, 2),
         v2("TCP4", "10.1.2.3", 1, "10.3.2.1", 2)),
        (pack_v2("PROXY", "TCP6", "10.1.2.3", "::", 1, 2, [(3, b"\0\0\0\0"), (4, b"")]),
         v2("TCP6", "10.1.2.3", 1, "::", 2)),
        (pack_v2("PROXY", "UNIX", "/a", "", None, None, transport="DGRAM"),
         v2("UNIX", "/a", None, "", None, transport="DGRAM")),
        (pack_v2("PROXY", "UNKNOWN", None, None, None, None, transport="DGRAM"),
         v2("UNKNOWN", transport="DGRAM")),
        (pack_v2("LOCAL", "TCP6", "::1", "::2", 1, 2), LOCAL_V2),
    ],
)
def test_pack_then_decode(backend: Backend, packed: bytes, expected: Fields) -> None:
    assert backend.proxy.decode(packed) == (header(backend, expected), len(packed))
