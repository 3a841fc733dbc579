"""Fuzz the PROXY protocol decoder: pack/decode round trips, every prefix, random and mutated
bytes, and the Cython decoder against the pure-Python reference written from
proxy-protocol.txt (tests/reference/proxy.py): the same headers, the same byte counts, the
same errors in the same words."""

from __future__ import annotations

import ipaddress
from types import ModuleType
from typing import Any, Union

from hypothesis import example, given
from hypothesis import strategies as st

from kinesyslog._fast import proxy as cython
from kinesyslog.constants import PROXY_V1_MAX_LENGTH, PROXY_V2_MAX_LENGTH
from tests.proxy_encoder import pack_v1, pack_v2
from tests.reference import proxy as reference
from tests.reference.proxy import canonical_text as canonical
from tests.reference.proxy import crc32c as reference_crc32c

IMPLEMENTATIONS = (cython, reference)
V2_SIGNATURE = reference.V2_SIGNATURE
FAMILIES = reference.V2_FAMILIES
TRANSPORTS = reference.V2_TRANSPORTS
ADDRESS_BLOCK = {1: 12, 2: 36, 3: 216}

# What decode() did: (the header's fields or None, the count), or the ProxyError's message.
Outcome = Union[tuple[Union[tuple, None], int], str]


def as_tuple(header: Any) -> tuple:
    return (header.version, header.command, header.family, header.transport,
            header.source_address, header.source_port, header.destination_address,
            header.destination_port)


def outcome(implementation: ModuleType, data: bytes) -> Outcome:
    try:
        header, count = implementation.decode(data)
    except implementation.ProxyError as error:
        return str(error)
    return (None if header is None else as_tuple(header)), count


def assert_agrees(data: bytes) -> None:
    assert outcome(cython, data) == outcome(reference, data)


# --- Strategies -----------------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.one_of(
    st.ip_addresses(v=6),
    ipv4.map(lambda a: ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed)),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8).map(
        lambda groups: ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))),
)
unix_paths = st.one_of(st.text(max_size=30), st.binary(max_size=108).map(
    lambda b: b.decode("utf-8", "surrogateescape"))).filter(
    lambda p: len(p.encode("utf-8", "surrogateescape")) <= 108)
tlv_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=255).filter(lambda t: t != 0x03),
              st.binary(max_size=64)),
    max_size=5,
)


@st.composite
def ipv6_texts(draw: st.DrawFn, address: ipaddress.IPv6Address) -> str:
    """Any text form of the address: exploded or compressed, any case, leading zeros,
    a dotted IPv4 tail."""
    groups = [int.from_bytes(address.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    form = draw(st.sampled_from(["str", "exploded", "padded", "dotted"]))
    if form == "str":
        text = str(address)
    elif form == "exploded":
        text = address.exploded
    elif form == "padded":
        text = ":".join(f"{g:0{draw(st.integers(1, 4))}x}" for g in groups)
    else:
        tail = ipaddress.IPv4Address(address.packed[12:])
        text = ":".join(f"{g:x}" for g in groups[:6]) + f":{tail}"
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, tuple]:
    """A valid header from the encoders and the tuple it must decode to."""
    version = draw(st.sampled_from([1, 2]))
    family = draw(st.sampled_from(FAMILIES if version == 2 else FAMILIES[:3]))
    addresses = ipv4 if family == "TCP4" else ipv6
    source, destination = draw(addresses), draw(addresses)
    source_port, destination_port = draw(ports), draw(ports)
    if version == 1:
        if family == "UNKNOWN":
            fields = draw(st.sampled_from([(None,) * 4, (str(source), str(destination),
                                                         source_port, destination_port)]))
            return pack_v1("UNKNOWN", *fields), (1, "PROXY", "UNKNOWN", "UNSPEC") + (None,) * 4
        texts = [str(source), str(destination)] if family == "TCP4" else [
            draw(ipv6_texts(source)), draw(ipv6_texts(destination))]
        packed = b"PROXY %s %s %s %d %d\r\n" % (family.encode(), texts[0].encode(),
                                                 texts[1].encode(), source_port,
                                                 destination_port)
        if len(packed) > PROXY_V1_MAX_LENGTH:
            packed = pack_v1(family, str(source), str(destination), source_port,
                             destination_port)
        return packed, (1, "PROXY", family, "STREAM", canonical(source), source_port,
                        canonical(destination), destination_port)
    command = draw(st.sampled_from(["PROXY", "LOCAL"]))
    tlvs = draw(tlv_lists)
    if draw(st.booleans()):
        tlvs.insert(draw(st.integers(0, len(tlvs))), (0x03, b"\0\0\0\0"))
    transport = draw(st.sampled_from([None, "STREAM", "DGRAM"]))
    if family == "UNIX":
        source, destination = draw(unix_paths), draw(unix_paths)
        source_port = destination_port = None
    elif family == "UNKNOWN":
        source = destination = source_port = destination_port = None
    packed = pack_v2(command, family, str(source) if source is not None else None,
                     str(destination) if destination is not None else None, source_port,
                     destination_port, tlvs, transport)
    if command == "LOCAL":
        return packed, (2, "LOCAL", "UNKNOWN", "UNSPEC") + (None,) * 4
    transport = transport or ("UNSPEC" if family == "UNKNOWN" else "STREAM")
    if family == "UNKNOWN":
        return packed, (2, "PROXY", "UNKNOWN", transport) + (None,) * 4
    if family == "UNIX":
        texts = [p.encode("utf-8", "surrogateescape").split(b"\0")[0].decode(
            "utf-8", "backslashreplace") for p in (source, destination)]
        return packed, (2, "PROXY", "UNIX", transport, texts[0], None, texts[1], None)
    return packed, (2, "PROXY", family, transport, canonical(source), source_port,
                    canonical(destination), destination_port)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid header with a few bytes flipped, inserted, deleted or cut."""
    data = bytearray(draw(headers())[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        byte = draw(st.one_of(st.sampled_from(b"\r\n \x00:.0123456789aFPX"),
                              st.integers(0, 255)))
        if action == "set" and at < len(data):
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif action == "delete" and at < len(data):
            del data[at]
        elif action == "cut":
            del data[at:]
    return bytes(data) + draw(st.binary(max_size=8))


# v1 lines assembled from the tokens that matter to its parser.
v1_tokens = st.lists(
    st.sampled_from([b"PROXY", b" ", b"TCP4", b"TCP6", b"UNKNOWN", b"1", b"0", b"255", b"256",
                     b"65535", b"65536", b"01", b".", b":", b"::", b"ffff", b"FfFf", b"abcd0",
                     b"1.2.3.4", b"::ffff:", b"-", b"\r", b"\n", b"\r\n", b"%", b"g"]),
    max_size=30,
).map(b"".join)


@st.composite
def ipv6_candidates(draw: st.DrawFn) -> str:
    """IPv6-like text: hex groups, "::" and dotted tails, each of which may be wrong (group
    of 0 or 5 digits, a second "::", a group too many, an octet out of range or padded)."""
    faults = set(draw(st.lists(st.sampled_from(
        ["digits", "gap", "count", "octet", "octets", "colon", "zone"]), max_size=2)))
    tail = draw(st.booleans())
    gap = draw(st.booleans())
    count = (8 if not gap else draw(st.integers(0, 7))) - 2 * tail + ("count" in faults)
    count = max(count, 0)
    digits = st.sampled_from([0, 5]) if "digits" in faults else st.integers(1, 4)
    groups = [draw(st.text("0123456789abcdefABCDEF", min_size=d, max_size=d))
              for d in [draw(digits) for _ in range(count)]]
    if tail:
        octets = [str(draw(st.integers(0, 255))) for _ in range(3 + ("octets" not in faults))]
        if "octet" in faults:
            octets[draw(st.integers(0, len(octets) - 1))] = draw(st.sampled_from(
                ["256", "01", "", "1a", "0x1"]))
        groups.append(".".join(octets))
    separators = [":"] * max(len(groups) - 1, 0)
    for _ in range(gap + ("gap" in faults)):
        at = draw(st.integers(0, len(separators) + 1))
        if at == 0 or not groups:
            groups.insert(0, "")
            separators.insert(0, "::")
        elif at > len(separators):
            groups.append("")
            separators.append("::")
        else:
            separators[at - 1] = "::"
    if "colon" in faults:
        separators = [draw(st.sampled_from([":", ":::", "."])) for _ in separators]
    text = groups[0] if groups else ""
    for separator, group in zip(separators, groups[1:]):
        text += separator + group
    if "zone" in faults:
        text = draw(st.sampled_from(["%s%%eth0", "%s%%1", "[%s]", " %s", "%s\x00"])) % text
    return text


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    """v1 lines with up to two faults in the family, a field, a separator or the end."""
    faults = draw(st.lists(st.sampled_from(
        ["family", "field", "separator", "end", "count"]), max_size=2))
    family = draw(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN"]))
    if "family" in faults:
        family = draw(st.sampled_from([b"TCP5", b"tcp4", b"UNKNOWNX", b"", b"TCP"]))
    address = ipv4.map(str) if family == b"TCP4" else ipv6_candidates()
    fields = [draw(address).encode(), draw(address).encode(),
              b"%d" % draw(ports), b"%d" % draw(ports)]
    if "field" in faults:
        fields[draw(st.integers(0, 3))] = draw(st.sampled_from(
            [b"65536", b"01", b"-1", b"", b"00", b"+5", b"1a", b"123456", b"::1", b"1.2.3.4",
             b"256.0.0.1", b"1.2.3"]))
    if "count" in faults:
        fields = fields[: draw(st.integers(0, 3))] + [b"x"] * draw(st.integers(0, 1))
    separators = [b" "] * len(fields)
    if "separator" in faults and separators:
        separators[draw(st.integers(0, len(separators) - 1))] = draw(st.sampled_from(
            [b"  ", b"\t", b"", b"\r", b"\n"]))
    end = b"\r\n"
    if "end" in faults:
        end = draw(st.sampled_from([b"\n", b"\r", b"", b" \r\n", b"\r\r\n"]))
    if family == b"UNKNOWN" and draw(st.booleans()):
        fields = separators = []
    return b"PROXY " + family + b"".join(s + f for s, f in zip(separators, fields)) + end


@st.composite
def v2_random(draw: st.DrawFn) -> bytes:
    """v2 headers with random addresses and TLVs and up to two faults: in the version,
    command or family byte, the address block size, a TLV length, stray bytes, the CRC32C,
    or the length field."""
    faults = set(draw(st.lists(st.sampled_from(
        ["ver_cmd", "fam", "block", "tlv", "stray", "crc", "length"]), max_size=2)))
    ver_cmd = draw(st.sampled_from([0x20, 0x21, 0x21, 0x21]))
    if "ver_cmd" in faults:
        ver_cmd = draw(st.sampled_from([0x22, 0x11, 0x2F, 0x31, 0x01]))
    fam = draw(st.sampled_from([0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x00, 0x10, 0x01]))
    if "fam" in faults:
        fam = draw(st.one_of(st.sampled_from([0x13, 0x41, 0xFF, 0x03]), st.integers(0, 255)))
    block = ADDRESS_BLOCK.get(fam >> 4, 0) + ("block" in faults) * draw(st.sampled_from([-1, 1]))
    body = draw(st.binary(min_size=max(block, 0), max_size=max(block, 0)))
    for tlv_type, value in draw(st.lists(st.tuples(st.sampled_from([0x04, 0x20, 0xEA, 0x05]),
                                                   st.binary(max_size=8)), max_size=3)):
        length = len(value) + ("tlv" in faults) * draw(st.sampled_from([1, -1, 300]))
        body += bytes([tlv_type]) + max(length, 0).to_bytes(2, "big") + value
    if "stray" in faults:
        body += draw(st.sampled_from([b"\x00", b"\x04\x00"]))
    if "crc" in faults or draw(st.booleans()):
        body += b"\x03\x00\x04\x00\x00\x00\x00"
        zeroed = V2_SIGNATURE + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body
        checksum = reference_crc32c(zeroed) ^ ("crc" in faults) * (1 << draw(st.integers(0, 31)))
        body = body[:-4] + checksum.to_bytes(4, "big")
    length = len(body)
    if "length" in faults:
        length = draw(st.one_of(st.integers(0, 300), st.sampled_from(
            [PROXY_V2_MAX_LENGTH - 16, PROXY_V2_MAX_LENGTH - 15, 0xFFFF])))
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + length.to_bytes(2, "big") + body


# --- Properties -----------------------------------------------------------------------------

@given(headers(), st.binary(max_size=32))
def test_pack_then_decode_round_trips(header: tuple[bytes, tuple], payload: bytes) -> None:
    packed, expected = header
    for implementation in IMPLEMENTATIONS:
        assert outcome(implementation, packed + payload) == (expected, len(packed))


@given(headers())
def test_every_prefix_is_incomplete(header: tuple[bytes, tuple]) -> None:
    packed, _ = header
    for implementation in IMPLEMENTATIONS:
        for k in range(len(packed)):
            decoded, needed = implementation.decode(packed[:k])
            assert decoded is None
            assert k < needed <= len(packed)


@given(headers(), st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_a_caller_feeding_segments(header: tuple[bytes, tuple], sizes: list[int]) -> None:
    """Accumulating arbitrary segments and calling again only once `needed` is reached
    finds the header at the same place."""
    packed, expected = header
    stream = packed + b"payload"
    for implementation in IMPLEMENTATIONS:
        received = 0
        needed = 0
        for size in [*sizes, len(stream)]:
            received = min(received + size, len(stream))
            if received < needed:
                continue
            decoded, count = implementation.decode(stream[:received])
            if decoded is not None:
                assert (as_tuple(decoded), count) == (expected, len(packed))
                break
            needed = count
        else:
            raise AssertionError("the whole stream did not complete the header")


@given(st.one_of(st.binary(max_size=300), mutated(), v1_tokens, v1_lines(), v2_random()))
@example(b"PROXY TCP6 ::1.2.3.4 ::ffff:1:2 1 2\r\n")
@example(b"PROXY UNKNOWN\r\r\n")
def test_random_bytes_raise_only_proxy_error(data: bytes) -> None:
    for implementation in IMPLEMENTATIONS:
        try:
            decoded, count = implementation.decode(data)
        except implementation.ProxyError:
            continue
        if decoded is None:
            assert count > len(data)
        else:
            assert 0 < count <= len(data)


def assert_agrees_on_every_prefix(data: bytes) -> None:
    for k in range(len(data) + 1):
        assert_agrees(data[:k])


@given(st.one_of(mutated(), v1_tokens, st.binary(max_size=120), headers().map(lambda h: h[0])))
def test_matches_the_reference_decoder(data: bytes) -> None:
    assert_agrees(data)


@given(v1_lines(), st.binary(max_size=4))
def test_matches_the_reference_on_v1_lines(line: bytes, payload: bytes) -> None:
    assert_agrees_on_every_prefix(line + payload)


@given(v2_random(), st.binary(max_size=4))
def test_matches_the_reference_on_v2_headers(header: bytes, payload: bytes) -> None:
    assert_agrees_on_every_prefix(header + payload)


@given(ipv6_candidates(), st.sampled_from([b"TCP6", b"TCP4"]))
@example("1:2:3:4:5:6:7::", b"TCP6")
@example("::2:3:4:5:6:7:8", b"TCP6")
@example("1::2:3:4:5:6:7:8", b"TCP6")
@example("::1.2.3.4.5", b"TCP6")
@example("fe80::1%eth0", b"TCP6")
def test_matches_the_reference_on_address_text(text: str, family: bytes) -> None:
    assert_agrees(b"PROXY %s %s ::1 1 2\r\n" % (family, text.encode()))
    assert_agrees(b"PROXY %s 10.0.0.1 %s 1 2\r\n" % (family, text.encode()))


@given(st.text("0123456789+- x", max_size=7), st.booleans())
def test_matches_the_reference_on_ports(text: str, destination: bool) -> None:
    ports_text = b"1 %s" % text.encode() if destination else b"%s 2" % text.encode()
    assert_agrees(b"PROXY TCP4 10.0.0.1 10.0.0.2 %s\r\n" % ports_text)


@given(st.integers(min_value=85, max_value=110),
       st.sampled_from([b"", b"\r", b"\r\n", b"\r\nmore", b"x", b"\n"]))
def test_matches_the_reference_near_the_v1_length_limit(size: int, end: bytes) -> None:
    assert_agrees_on_every_prefix(b"PROXY UNKNOWN " + b"x" * size + end)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.booleans(), st.booleans())
def test_address_text_is_the_canonical_form_of_any_spelling(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, exploded: bool,
        upper: bool) -> None:
    """Whatever spelling the kernel or a header uses, one address has one text: RFC 5952
    (Python's str), IPv4-mapped IPv6 as plain IPv4."""
    text = address.exploded if exploded else address.compressed
    expected = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = str(address.ipv4_mapped)
    for implementation in IMPLEMENTATIONS:
        assert implementation.address_text(text.upper() if upper else text) == expected
