"""Fuzz the RFC 6587 framer: round trips, chunking, and the Cython framer against the
pure-Python reference (tests/reference/framing.py) on random streams, feed by feed."""

from __future__ import annotations

from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog._fast import framing as cython
from tests import framer_check as framers
from tests.reference import framing as reference
from tests.reference.framing import MSG_LEN_SP, frame_stream

IMPLEMENTATIONS = (cython, reference)


def feed_chunks(implementation: ModuleType, stream: bytes, cuts: list[int], max_size: int,
                ) -> tuple[list[bytes], int, int]:
    """Feed the stream cut at `cuts`, then close: (messages, truncated, dropped)."""
    framer = implementation.StreamFramer(max_size)
    messages: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        messages += framer.feed(stream[a:b])
        assert framer.buffered <= max_size + 16
    messages += framer.close()
    assert all(len(m) <= max_size for m in messages)
    return messages, framer.truncated, framer.incomplete_dropped


def assert_same_framing(stream: bytes, cuts: list[int], max_size: int) -> None:
    framers.assert_same_framing(
        lambda size: [implementation.StreamFramer(size) for implementation in IMPLEMENTATIONS],
        frame_stream, stream, cuts, max_size, held_at_most=max_size + 16)


cuts_strategy = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


@st.composite
def framed_messages(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Messages of at most 64 bytes, each framed in a way that gives it back unchanged."""
    messages = draw(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
    parts = []
    for message in messages:
        # Inside an octet-counted frame one trailing LF or CR LF is dropped: a message that
        # ends with LF needs a CR LF after it, one that ends with CR none or a CR LF.
        forms = ["octet+crlf"]
        if not message.endswith(b"\n"):
            forms.append("octet")
            if not message.endswith(b"\r"):
                forms.append("octet+lf")
        if b"\n" not in message and b"\0" not in message and not MSG_LEN_SP.match(message):
            forms.append("nul")
            if not message.endswith(b"\r"):
                forms += ["lf", "crlf"]
        form = draw(st.sampled_from(forms))
        if form.startswith("octet"):
            content = message + {"octet": b"", "octet+lf": b"\n", "octet+crlf": b"\r\n"}[form]
            parts.append(b"%d %s" % (len(content), content))
        else:
            parts.append(message + {"nul": b"\0", "lf": b"\n", "crlf": b"\r\n"}[form])
    return messages, b"".join(parts)


@given(framed_messages(), cuts_strategy)
def test_round_trip_in_any_chunking(framed: tuple[list[bytes], bytes], cuts: list[int]) -> None:
    messages, stream = framed
    for implementation in IMPLEMENTATIONS:
        assert feed_chunks(implementation, stream, cuts, 64) == (messages, 0, 0)
    assert frame_stream(stream, 64) == (messages, 0, 0)


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
    assert_same_framing(stream, cuts, max_size)


@given(st.binary(max_size=3000), cuts_strategy, st.integers(min_value=1, max_value=1100))
def test_arbitrary_bytes_never_raise(stream: bytes, cuts: list[int], max_size: int) -> None:
    assert_same_framing(stream, cuts, max_size)


@given(st.one_of(edgy_bytes, st.binary(max_size=100)), st.integers(min_value=1, max_value=24))
def test_datagram_matches_reference(datagram: bytes, max_size: int) -> None:
    assert cython.frame_datagram(datagram, max_size) == reference.frame_datagram(
        datagram, max_size)
