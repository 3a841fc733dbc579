"""RFC 6587 stream framing and RFC 5426 datagram framing (kinesyslog._fast.framing), run
against both implementations (the `backend` fixture: Cython and tests/reference/framing.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.backends import Backend


def frame_all(backend: Backend, chunks: list[bytes], max_size: int = 64,
              ) -> tuple[list[bytes], int, int]:
    """Messages from feeding chunks then closing, with (truncated, incomplete_dropped)."""
    framer = backend.framing.StreamFramer(max_size)
    messages: list[bytes] = []
    for chunk in chunks:
        messages += framer.feed(chunk)
        assert framer.buffered <= max_size + 16
    messages += framer.close()
    return messages, framer.truncated, framer.incomplete_dropped


def splits(data: bytes, points: tuple[int, ...]) -> list[bytes]:
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# (stream, max_size, expected messages, truncated, incomplete_dropped)
CASES = [
    (b"", 64, [], 0, 0),
    (b"<13>hello\n", 64, [b"<13>hello"], 0, 0),
    (b"a\nb\x00c\r\nd", 64, [b"a", b"b", b"c", b"d"], 0, 0),
    (b"\n\n\r\n\x00\x00", 64, [], 0, 0),
    (b"a\r\r\nb\r\x00c\rd\n", 64, [b"a\r", b"b\r", b"c\rd"], 0, 0),
    (b"a\r", 64, [b"a"], 0, 0),
    (b"\r", 64, [], 0, 0),
    (b"5 hello3 abc", 64, [b"hello", b"abc"], 0, 0),
    (b"5 he\nl\x00", 64, [b"he\nl\x00"], 0, 0),
    (b"5 hello\n3 abc\r\n", 64, [b"hello", b"abc"], 0, 0),
    (b"123456789 x", 64, [], 0, 1),
    (b"1234567890 x\n", 64, [b"1234567890 x"], 0, 0),
    (b"05 hello\n", 64, [b"05 hello"], 0, 0),
    (b"0 \n", 64, [b"0 "], 0, 0),
    (b"12x\n", 64, [b"12x"], 0, 0),
    (b"12\n", 64, [b"12"], 0, 0),
    (b"12", 64, [b"12"], 0, 0),
    (b"12 ", 64, [], 0, 1),
    (b"5 abc", 64, [], 0, 1),
    (b"-5 abc\n", 64, [b"-5 abc"], 0, 0),
    (b" 5 abc\n", 64, [b" 5 abc"], 0, 0),
    # Truncation keeps the framing of the next message.
    (b"abcdef\nxy\n", 4, [b"abcd", b"xy"], 1, 0),
    (b"abcd\nxy\n", 4, [b"abcd", b"xy"], 0, 0),
    (b"abcd\r\nxy\n", 4, [b"abcd", b"xy"], 0, 0),
    (b"abcd\r\x00xy\n", 4, [b"abcd", b"xy"], 1, 0),
    (b"abcd\rz\nxy\n", 4, [b"abcd", b"xy"], 1, 0),
    (b"abcd\r", 4, [b"abcd"], 0, 0),
    (b"abcde\r", 4, [b"abcd"], 1, 0),
    (b"abcdefgh", 4, [b"abcd"], 1, 0),
    (b"6 abcdef3 xyz", 4, [b"abcd", b"xyz"], 1, 0),
    (b"4 abcd3 xyz", 4, [b"abcd", b"xyz"], 0, 0),
    (b"7 abcd", 4, [b"abcd"], 1, 0),  # 3 over the limit: cut as soon as 4 bytes are in
    (b"7 abcdefg3 xyz", 4, [b"abcd", b"xyz"], 1, 0),
    (b"6 abcd", 4, [], 0, 1),  # 2 over: held whole (a CR LF may end it), never completed
    # One trailing LF or CR LF inside the counted bytes is not part of the message.
    (b"6 hello\n", 64, [b"hello"], 0, 0),
    (b"7 hello\r\n", 64, [b"hello"], 0, 0),
    (b"7 hello\n\n", 64, [b"hello\n"], 0, 0),
    (b"8 hello\r\n\n", 64, [b"hello\r\n"], 0, 0),
    (b"6 hel\nlo", 64, [b"hel\nlo"], 0, 0),
    (b"6 hello\r", 64, [b"hello\r"], 0, 0),
    (b"7 hello\n\r", 64, [b"hello\n\r"], 0, 0),
    (b"1 \n2 \r\n3 abc", 64, [b"abc"], 0, 0),  # nothing but the LF: skipped
    (b"5 abcd\n", 4, [b"abcd"], 0, 0),  # fits once the LF is gone
    (b"6 abcd\r\n", 4, [b"abcd"], 0, 0),
    (b"6 abcde\n", 4, [b"abcd"], 1, 0),
    (b"5 abcde", 4, [b"abcd"], 1, 0),
    (b"6 abc", 4, [], 0, 1),
    (b"123456 x\n", 4, [], 0, 1),
    (b"123456x\n", 4, [b"1234"], 1, 0),
    (b"123456", 4, [b"1234"], 1, 0),
    (b"1234567890\n", 8, [b"12345678"], 1, 0),
]


@pytest.mark.parametrize(("stream", "max_size", "expected", "truncated", "dropped"), CASES)
def test_one_feed(
    backend: Backend, stream: bytes, max_size: int, expected: list[bytes], truncated: int,
    dropped: int,
) -> None:
    assert frame_all(backend, [stream], max_size) == (expected, truncated, dropped)


@pytest.mark.parametrize(("stream", "max_size", "expected", "truncated", "dropped"), CASES)
def test_every_split_gives_the_same_result(
    backend: Backend, stream: bytes, max_size: int, expected: list[bytes], truncated: int,
    dropped: int,
) -> None:
    result = (expected, truncated, dropped)
    positions = range(len(stream) + 1)
    for count in (1, 2):
        for points in itertools.combinations_with_replacement(positions, count):
            assert frame_all(backend, splits(stream, points), max_size) == result, points
    assert frame_all(backend, [bytes([b]) for b in stream], max_size) == result


def test_random_splits_of_a_long_mixed_stream(backend: Backend) -> None:
    rng = random.Random(6587)
    parts = []
    expected = []
    for k in range(300):
        body = b"<%d>msg %d " % (k % 192, k) + b"x" * rng.randrange(0, 40)
        form = k % 4
        if form == 0:
            parts.append(b"%d %s" % (len(body), body))
        elif form == 1:
            parts.append(body + b"\n")
        elif form == 2:
            parts.append(body + b"\r\n")
        else:
            parts.append(body + b"\x00")
        expected.append(body)
    stream = b"".join(parts)
    assert frame_all(backend, [stream], 128) == (expected, 0, 0)
    for _ in range(50):
        points = tuple(sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(30))))
        assert frame_all(backend, splits(stream, points), 128) == (expected, 0, 0)


def test_accepts_any_buffer(backend: Backend) -> None:
    framer = backend.framing.StreamFramer(64)
    assert framer.feed(bytearray(b"a\nb")) == [b"a"]
    assert framer.feed(memoryview(b"__\ncd\n")[2:]) == [b"b", b"cd"]
    assert framer.feed(bytearray(b"3 abc")) == [b"abc"]
    with pytest.raises(TypeError):
        framer.feed("text")  # type: ignore[arg-type]


def test_messages_are_bytes_even_from_a_bytearray(backend: Backend) -> None:
    messages = backend.framing.StreamFramer(64).feed(bytearray(b"abc\n"))
    assert messages == [b"abc"]
    assert type(messages[0]) is bytes


def test_buffered_counts_the_incomplete_tail(backend: Backend) -> None:
    framer = backend.framing.StreamFramer(64)
    assert framer.feed(b"a\nbcd") == [b"a"]
    assert framer.buffered == 3
    assert framer.feed(b"12") == []
    assert framer.buffered == 5
    assert framer.feed(b"\n12") == [b"bcd12"]
    assert framer.buffered == 2
    assert framer.feed(b" abc") == []
    assert framer.buffered == 3
    assert framer.feed(b"defghijkl") == [b"abcdefghijkl"]
    assert framer.buffered == 0


def test_huge_octet_count_is_skipped_across_many_feeds(backend: Backend) -> None:
    framer = backend.framing.StreamFramer(1024)
    assert framer.feed(b"999999999 ") == []
    chunk = b"z" * 65536
    messages = framer.feed(chunk)
    assert messages == [b"z" * 1024]
    assert framer.truncated == 1
    fed = len(chunk)
    while fed + len(chunk) <= 999_999_999:
        assert framer.feed(chunk) == []
        assert framer.buffered == 0
        fed += len(chunk)
    rest = 999_999_999 - fed
    assert framer.feed(b"z" * rest + b"4 next") == [b"next"]
    assert framer.close() == []
    assert (framer.truncated, framer.incomplete_dropped) == (1, 0)


def test_endless_line_holds_bounded_memory(backend: Backend) -> None:
    framer = backend.framing.StreamFramer(1024)
    assert framer.feed(b"y" * 1000) == []
    assert framer.feed(b"y" * 1000) == [b"y" * 1024]
    for _ in range(100):
        assert framer.feed(b"y" * 4096) == []
        assert framer.buffered == 0
    assert framer.feed(b"y\nok\n") == [b"ok"]
    assert framer.truncated == 1


def test_close_resets_the_framer(backend: Backend) -> None:
    framer = backend.framing.StreamFramer(64)
    assert framer.feed(b"7 abc") == []
    assert framer.close() == []
    assert framer.incomplete_dropped == 1
    assert framer.buffered == 0
    assert framer.feed(b"3 abc") == [b"abc"]
    assert framer.close() == []
    assert framer.incomplete_dropped == 1


def test_max_message_size_must_be_positive(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.framing.StreamFramer(0)
    with pytest.raises(ValueError):
        backend.framing.frame_datagram(b"x", 0)


@pytest.mark.parametrize(
    ("datagram", "max_size", "expected"),
    [
        (b"<13>hello", 64, (b"<13>hello", False)),
        (b"hello\n", 64, (b"hello", False)),
        (b"hello\r\n", 64, (b"hello", False)),
        (b"hello\x00", 64, (b"hello", False)),
        (b"hello\n\n", 64, (b"hello\n", False)),
        (b"hello\r\x00", 64, (b"hello\r", False)),
        (b"hello\r", 64, (b"hello\r", False)),
        (b"a\nb", 64, (b"a\nb", False)),
        (b"", 64, (b"", False)),
        (b"\n", 64, (b"", False)),
        (b"\r\n", 64, (b"", False)),
        (b"abcdef", 4, (b"abcd", True)),
        (b"abcd\n", 4, (b"abcd", False)),
        (b"abcd\r\n", 4, (b"abcd", False)),
        (b"5 hello", 64, (b"5 hello", False)),
    ],
)
def test_frame_datagram(
    backend: Backend, datagram: bytes, max_size: int, expected: tuple[bytes, bool]
) -> None:
    assert backend.framing.frame_datagram(datagram, max_size) == expected
    assert backend.framing.frame_datagram(memoryview(datagram), max_size) == expected
