"""kinesyslog/_fast/b64.pyx: base64 written into a buffer, as RFC 4648 §4 and binascii have it."""

from __future__ import annotations

import binascii
import random

import pytest

from kinesyslog._fast.b64 import encode_into, encoded_length


@pytest.mark.parametrize(("data", "text"), [
    # RFC 4648 §10.
    (b"", b""), (b"f", b"Zg=="), (b"fo", b"Zm8="), (b"foo", b"Zm9v"), (b"foob", b"Zm9vYg=="),
    (b"fooba", b"Zm9vYmE="), (b"foobar", b"Zm9vYmFy"),
    # Both ends of the alphabet, and the bytes that make "+" and "/".
    (b"\x00\x00\x00", b"AAAA"), (b"\xff\xff\xff", b"////"), (b"\xfb\xef\xbe", b"++++"),
    (b"\x00", b"AA=="), (b"\xff\xff", b"//8="),
])
def test_rfc_4648_vectors(data: bytes, text: bytes) -> None:
    out = bytearray(b"<" + b"." * len(text) + b">")
    assert encode_into(data, out, 1) == 1 + len(text)
    assert out == b"<" + text + b">"
    assert encoded_length(len(data)) == len(text)


def test_every_length_and_byte_matches_binascii() -> None:
    rng = random.Random(7)
    samples = [bytes(range(256)), bytes(range(255, -1, -1))]
    samples += [rng.randbytes(size) for size in range(200)]
    samples += [rng.randbytes(size) for size in (3 * 16384 - 1, 3 * 16384, 3 * 16384 + 1)]
    for data in samples:
        out = bytearray(encoded_length(len(data)))
        assert encode_into(data, out, 0) == len(out)
        assert out == binascii.b2a_base64(data, newline=False)


def test_bytearray_and_memoryview_input() -> None:
    data = bytearray(b"\x01\x02\x03\x04\x05")
    out = bytearray(8)
    assert encode_into(memoryview(data)[1:4], out, 0) == 4
    assert out[:4] == b"AgME"
    assert encode_into(data, out, 0) == 8
    assert out == b"AQIDBAU="


def test_consecutive_chunks_of_whole_groups_join() -> None:
    data = bytes(range(90))
    out = bytearray(encoded_length(len(data)))
    at = 0
    for start in range(0, len(data), 30):
        at = encode_into(data[start:start + 30], out, at)
    assert out == binascii.b2a_base64(data, newline=False)


@pytest.mark.parametrize(("size", "at"), [(5, 0), (8, 1), (8, -1)])
def test_no_room_raises_and_writes_nothing(size: int, at: int) -> None:
    out = bytearray(b"x" * size)
    with pytest.raises(ValueError, match="does not fit"):
        encode_into(b"abcdef", out, at)
    assert out == b"x" * size


def test_encoded_length() -> None:
    assert [encoded_length(size) for size in range(8)] == [0, 4, 4, 4, 8, 8, 8, 12]
    with pytest.raises(ValueError):
        encoded_length(-1)
