"""Fuzz the RFC 6587 framer: round trips, chunking, and a pure-Python reference framer."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog._fast.framing import StreamFramer, frame_datagram

OCTET_PREFIX = re.compile(rb"[1-9][0-9]{0,8} ")


def reference_frames(stream: bytes, max_size: int) -> tuple[list[bytes], int, int]:
    """docs/contract.md §4.2 framing of a whole stream, then close:
    (messages, truncated, dropped)."""
    messages: list[bytes] = []
    truncated = dropped = 0
    i = 0
    while i < len(stream):
        prefix = OCTET_PREFIX.match(stream, i, i + 10)
        if prefix:
            length = int(prefix.group()[:-1])
            start = prefix.end()
            content = stream[start : start + length]
            if len(content) < length and not length > max_size <= len(content):
                dropped += 1  # incomplete, and not delivered truncated before the end
                break
            i = start + length
            cut = length > max_size
        else:
            ends = [k for k in (stream.find(b"\n", i), stream.find(b"\0", i)) if k >= 0]
            end = min(ends, default=len(stream))
            content = stream[i:end]
            if (end == len(stream) or stream[end] == 10) and content.endswith(b"\r"):
                content = content[:-1]
            i = end + 1
            cut = len(content) > max_size
        if cut:
            content = content[:max_size]
            truncated += 1
        if content:
            messages.append(content)
    return messages, truncated, dropped


def feed_chunks(stream: bytes, cuts: list[int], max_size: int) -> tuple[list[bytes], int, int]:
    framer = StreamFramer(max_size)
    messages: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        messages += framer.feed(stream[a:b])
        assert framer.buffered <= max_size + 16
    messages += framer.close()
    assert all(len(m) <= max_size for m in messages)
    return messages, framer.truncated, framer.incomplete_dropped


cuts_strategy = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


@st.composite
def framed_messages(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Messages of at most 64 bytes, each framed in a way that gives it back unchanged."""
    messages = draw(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
    parts = []
    for message in messages:
        forms = ["octet"]
        if b"\n" not in message and b"\0" not in message and not OCTET_PREFIX.match(message):
            forms.append("nul")
            if not message.endswith(b"\r"):
                forms += ["lf", "crlf"]
        form = draw(st.sampled_from(forms))
        if form == "octet":
            parts.append(b"%d %s" % (len(message), message))
        else:
            parts.append(message + {"nul": b"\0", "lf": b"\n", "crlf": b"\r\n"}[form])
    return messages, b"".join(parts)


@given(framed_messages(), cuts_strategy)
def test_round_trip_in_any_chunking(framed: tuple[list[bytes], bytes], cuts: list[int]) -> None:
    messages, stream = framed
    assert feed_chunks(stream, cuts, 64) == (messages, 0, 0)


# Bytes that matter to the framer, so that random streams hit its edge cases often.
edgy_bytes = st.lists(
    st.sampled_from([b"1", b"9", b"0", b"5", b" ", b"\n", b"\r", b"\0", b"a", b"<"]),
    max_size=80,
).map(b"".join)


@given(
    st.one_of(edgy_bytes, st.binary(max_size=200)),
    cuts_strategy,
    st.integers(min_value=1, max_value=24),
)
def test_matches_the_reference_framer(stream: bytes, cuts: list[int], max_size: int) -> None:
    assert feed_chunks(stream, cuts, max_size) == reference_frames(stream, max_size)


@given(st.binary(max_size=3000), cuts_strategy, st.integers(min_value=1, max_value=1100))
def test_arbitrary_bytes_never_raise(stream: bytes, cuts: list[int], max_size: int) -> None:
    assert feed_chunks(stream, cuts, max_size) == reference_frames(stream, max_size)


@given(st.one_of(edgy_bytes, st.binary(max_size=100)), st.integers(min_value=1, max_value=24))
def test_datagram_matches_reference(datagram: bytes, max_size: int) -> None:
    expected = datagram
    for trailer in (b"\r\n", b"\n", b"\0"):
        if expected.endswith(trailer):
            expected = expected[: -len(trailer)]
            break
    assert frame_datagram(datagram, max_size) == (
        expected[:max_size],
        len(expected) > max_size,
    )
