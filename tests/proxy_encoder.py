"""PROXY protocol encoders for tests, fuzzers and the chaos suite (the relay only decodes).

Written from HAProxy's proxy-protocol.txt independently of kinesyslog/_fast/proxy.pyx, so
that decode(pack(...)) round trips check the decoder against a second reading of the text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kinesyslog._fast.proxy import crc32c
from kinesyslog.constants import PROXY_V1_MAX_LENGTH as V1_MAX

PROXY = "PROXY"
LOCAL = "LOCAL"
TCP4 = "TCP4"
TCP6 = "TCP6"
UNIX = "UNIX"
UNKNOWN = "UNKNOWN"
UNSPEC = "UNSPEC"
STREAM = "STREAM"
DGRAM = "DGRAM"
V2_FAMILIES = (UNKNOWN, TCP4, TCP6, UNIX)
V2_TRANSPORTS = (UNSPEC, STREAM, DGRAM)
V2_SIGNATURE_BYTES = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, ver_cmd, fam, len
UNIX_PATH = 108
TLV_CRC32C = 0x03



def _ip(family: str, text: str | None,
        role: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """IPv4Address for TCP4; IPv6Address for TCP6 (IPv4 text given as IPv4-mapped)."""
    if text is None:
        raise ValueError(f"{family} needs a {role} address")
    address = ipaddress.ip_address(text)
    if family == TCP4:
        if address.version != 4:
            raise ValueError(f"TCP4 {role} address {text!r} is not IPv4")
        return address
    if address.version == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    return address


def _v1_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text; IPv4-mapped in the mixed form inet_ntop writes, whatever the Python."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _port(value: int | None, role: str) -> int:
    if value is None or not 0 <= value <= 65535:
        raise ValueError(f"{role} port {value!r} is not 0-65535")
    return value


def pack_v1(family: str, source: str | None, destination: str | None,
            source_port: int | None, destination_port: int | None) -> bytes:
    """A version 1 line. TCP4/TCP6 addresses are written canonically (IPv4 text under TCP6
    as ::ffff:a.b.c.d); UNKNOWN writes the address part only when it is given."""
    fields = (source, destination, source_port, destination_port)
    if family == UNKNOWN:
        if all(field is None for field in fields):
            return b"PROXY UNKNOWN\r\n"
        if any(field is None for field in fields):
            raise ValueError("PROXY v1 UNKNOWN takes all four address fields or none")
        line = "PROXY UNKNOWN {} {} {} {}\r\n".format(*fields)
    elif family in (TCP4, TCP6):
        line = (f"PROXY {family} {_v1_text(_ip(family, source, 'source'))} "
                f"{_v1_text(_ip(family, destination, 'destination'))} "
                f"{_port(source_port, 'source')} {_port(destination_port, 'destination')}\r\n")
    else:
        raise ValueError(f"PROXY v1 family {family!r} is not TCP4, TCP6 or UNKNOWN")
    encoded = line.encode("ascii")
    if len(encoded) > V1_MAX:
        raise ValueError(f"PROXY v1 line of {len(encoded)} bytes, more than {V1_MAX}")
    return encoded


def pack_v2(command: str, family: str, source: str | None, destination: str | None,
            source_port: int | None, destination_port: int | None,
            tlvs: Iterable[tuple[int, bytes]] = (), transport: str | None = None) -> bytes:
    """A version 2 header. `transport` defaults to UNSPEC for UNKNOWN, else STREAM. A CRC32C
    TLV given as four zero bytes gets its checksum filled in (the sender's procedure of
    §2.2.3); any other value is written as given."""
    if command not in (LOCAL, PROXY):
        raise ValueError(f"PROXY v2 command {command!r} is not LOCAL or PROXY")
    if family not in V2_FAMILIES:
        raise ValueError(f"PROXY v2 family {family!r} is not one of {V2_FAMILIES}")
    if transport is None:
        transport = UNSPEC if family == UNKNOWN else STREAM
    if transport not in V2_TRANSPORTS:
        raise ValueError(f"PROXY v2 transport {transport!r} is not one of {V2_TRANSPORTS}")
    if family in (TCP4, TCP6):
        block = (_ip(family, source, "source").packed
                 + _ip(family, destination, "destination").packed
                 + _port(source_port, "source").to_bytes(2, "big")
                 + _port(destination_port, "destination").to_bytes(2, "big"))
    elif family == UNIX:
        block = b""
        for path in (source, destination):
            encoded = path.encode("utf-8", "surrogateescape")
            if len(encoded) > UNIX_PATH:
                raise ValueError(f"UNIX path of {len(encoded)} bytes, more than {UNIX_PATH}")
            block += encoded.ljust(UNIX_PATH, b"\0")
    else:
        block = b""
    checksums = []
    for tlv_type, value in tlvs:
        if tlv_type == TLV_CRC32C and value == b"\0\0\0\0":
            checksums.append(V2_FIXED + len(block) + 3)
        block += bytes([tlv_type]) + len(value).to_bytes(2, "big") + value
    if len(block) > 0xFFFF:
        raise ValueError(f"PROXY v2 address block and TLVs of {len(block)} bytes, "
                         f"more than 65535")
    header = bytearray(
        V2_SIGNATURE_BYTES
        + bytes([0x20 | (command == PROXY),
                 (V2_FAMILIES.index(family) << 4) | V2_TRANSPORTS.index(transport)])
        + len(block).to_bytes(2, "big")
        + block
    )
    for offset in checksums:
        header[offset : offset + 4] = crc32c(header).to_bytes(4, "big")
    return bytes(header)
