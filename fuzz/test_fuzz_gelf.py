"""Fuzz GELF input: the Cython module against the pure-Python reference (tests/reference/
gelf.py) on chunk reassembly, stream framing, JSON and timestamps; and both against Python's
json module and exact decimal arithmetic."""

from __future__ import annotations

import contextlib
import json
import re
import struct
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from types import ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog.constants import GELF_MAX_CHUNKS, GELF_MAX_JSON_DEPTH, GELF_MAX_TIMESTAMP_MS
from tests import framer_check as framers
from tests.backends import cython_gelf as cython
from tests.reference import gelf as reference

IMPLEMENTATIONS = (cython, reference)
COUNTERS = ("expired", "evicted", "invalid", "duplicates", "empty", "oversized")


def chunk(message_id: int, seq: int, count: int, payload: bytes) -> bytes:
    return b"\x1e\x0f" + struct.pack(">Q", message_id) + bytes([seq, count]) + payload


# --- chunk reassembly ------------------------------------------------------------------


@given(
    st.binary(max_size=3000),
    st.one_of(st.integers(1, 16), st.just(GELF_MAX_CHUNKS)),
    st.randoms(use_true_random=False),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_order_with_duplicates_reassembles(
    payload: bytes, count: int, rng: object, duplicates: list[int]
) -> None:
    size = -(-len(payload) // count) if payload else 0
    chunks = [chunk(99, k, count, payload[k * size : (k + 1) * size]) for k in range(count)]
    rng.shuffle(chunks)  # type: ignore[attr-defined]
    # Copies of chunks already sent, anywhere before the last new chunk.
    feeds = chunks[:-1]
    for d in duplicates:
        if feeds:
            feeds.insert(d % (len(feeds) + 1), feeds[d % len(feeds)])
    feeds.append(chunks[-1])
    for implementation in IMPLEMENTATIONS:
        assembler = implementation.ChunkAssembler(65536)
        results = [assembler.feed(c, 0.0) for c in feeds]
        assert results == [None] * (len(feeds) - 1) + [payload]
        assert assembler.duplicates == len(feeds) - count
        assert (assembler.pending_bytes, assembler.pending_messages) == (0, 0)


chunk_datagrams = st.builds(
    chunk,
    st.integers(2, 5),  # message 2 of operations() may meet chunks with other counts
    st.integers(0, 5),
    st.sampled_from([0, 1, 2, 3, 4, 5, 128, 129, 255]),
    st.binary(max_size=400),
)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[bytes | None, float]]:
    """Every chunk of three messages in any order, so that they complete, collide and get
    evicted, interleaved with duplicates, random chunks, cut headers, other datagrams and
    expire() calls."""
    counts = draw(st.lists(st.sampled_from([2, 2, 3, 4, 128]), min_size=3, max_size=3))
    planned = [
        chunk(m, seq, count, draw(st.binary(max_size=120)))
        for m, count in enumerate(counts)
        for seq in range(count)
    ]
    feeds: list[bytes | None] = list(draw(st.permutations(planned)))
    noise = st.one_of(
        st.sampled_from(planned),  # a duplicate, or a chunk again after completion
        chunk_datagrams,
        chunk_datagrams.map(lambda d: d[: len(d) // 2]),
        st.binary(max_size=20),
        st.none(),  # an expire() call
    )
    for position, extra in draw(st.lists(st.tuples(st.integers(0, 500), noise), max_size=40)):
        feeds.insert(position % (len(feeds) + 1), extra)
    step = st.sampled_from([0.0] * 30 + [0.001, 0.5, 1.0, 2.5, 4.999, 5.0])
    return [(datagram, draw(step)) for datagram in feeds]


@given(
    operations(),
    st.one_of(st.integers(300, 3000), st.integers(3000, 200_000)),
    st.integers(1, 6),
    st.sampled_from([1.0, 5.0]),
)
def test_assembler_matches_the_reference(
    ops: list[tuple[bytes | None, float]], max_bytes: int, max_messages: int, timeout: float
) -> None:
    assemblers = [implementation.ChunkAssembler(1024, max_bytes, max_messages, timeout)
                  for implementation in IMPLEMENTATIONS]
    now = 0.0
    for datagram, step in ops:
        now += step
        if datagram is None:
            results = [assembler.expire(now) for assembler in assemblers]
        else:
            results = [assembler.feed(datagram, now) for assembler in assemblers]
        assert results[0] == results[1]
        states = [state(assembler) for assembler in assemblers]
        assert states[0] == states[1]
        assert states[0]["pending_bytes"] <= max_bytes
        assert states[0]["pending_messages"] <= max_messages


def state(assembler: Any) -> dict[str, int]:
    return {name: getattr(assembler, name)
            for name in (*COUNTERS, "pending_bytes", "pending_messages")}


@given(st.lists(st.binary(max_size=300), max_size=50), st.integers(1, 3000))
def test_random_datagrams_never_raise(datagrams: list[bytes], max_bytes: int) -> None:
    assemblers = [implementation.ChunkAssembler(100, max_bytes, 3)
                  for implementation in IMPLEMENTATIONS]
    for k, datagram in enumerate(datagrams):
        for data in (datagram, b"\x1e\x0f" + datagram):
            results = [assembler.feed(data, k * 0.7) for assembler in assemblers]
            assert results[0] == results[1]
            assert results[0] is None or isinstance(results[0], bytes)
            assert state(assemblers[0]) == state(assemblers[1])
            assert assemblers[0].pending_bytes <= max_bytes
            decoded = [implementation.decode_payload(results[0] or data, 100)
                       for implementation in IMPLEMENTATIONS]
            assert decoded[0] == decoded[1]
            message, status = decoded[0]
            assert status in ("ok", "truncated", "corrupt")
            assert (message is None) == (status == "corrupt")
            assert message is None or len(message) <= 100
            assert cython.gelf_timestamp(data, 7) == reference.gelf_timestamp(data, 7) >= 0
            assert cython.is_json_object(data) is reference.is_json_object(data)


# --- stream framing --------------------------------------------------------------------


def feed_in_pieces(implementation: ModuleType, stream: bytes, cuts: list[int], max_size: int,
                   ) -> tuple[list[bytes], int, int]:
    framer = implementation.GelfStreamFramer(max_size)
    messages: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        messages += framer.feed(stream[a:b])
        assert framer.buffered <= max_size + 1
    messages += framer.close()
    return messages, framer.truncated, framer.incomplete_dropped


def assert_same_framing(stream: bytes, cuts: list[int], max_size: int) -> None:
    framers.assert_same_framing(
        lambda size: [implementation.GelfStreamFramer(size)
                      for implementation in IMPLEMENTATIONS],
        reference.frame_stream, stream, cuts, max_size, held_at_most=max_size + 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
cuts = st.lists(st.integers(0, 100_000), max_size=12)


@given(
    st.lists(st.tuples(documents, st.sampled_from([None, 0, 2])), max_size=8),
    st.sampled_from([b"\x00", b"\n", b"\r\n", b"\n\x00"]),
    st.booleans(),
    cuts,
)
def test_framer_round_trip(
    docs: list[tuple[dict, int | None]], terminator: bytes, ascii_only: bool, cut: list[int]
) -> None:
    texts = [json.dumps(d, indent=indent, ensure_ascii=ascii_only).encode() for d, indent in docs]
    stream = b"".join(t + terminator for t in texts)
    for implementation in IMPLEMENTATIONS:
        assert feed_in_pieces(implementation, stream, cut, 1_000_000) == (texts, 0, 0)
    assert reference.frame_stream(stream, 1_000_000) == (texts, 0, 0)


pieces = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b"\r", b"\x00", b" ", b"a", b'{"k": "v"}']
)
edgy_streams = st.lists(pieces, max_size=60).map(b"".join)


@given(st.one_of(st.binary(max_size=300), edgy_streams), st.integers(1, 40), cuts)
def test_framer_matches_the_reference(stream: bytes, max_size: int, cut: list[int]) -> None:
    assert_same_framing(stream, cut, max_size)


# --- JSON and timestamps -------------------------------------------------------------
# Besides the two implementations, Python's json module and exact decimals judge the
# documents: an independent check of the JSON reader and the number arithmetic of both.
# (json.loads decodes escapes in a string timestamp, which docs/contract.md §4.9 does not:
# the documents below never write a number string with escapes.)

NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
NOT_AN_OBJECT = object()


def _no_constants(name: str) -> object:
    raise ValueError(name)


def _depth(value: object) -> int:
    """Nesting levels of objects and arrays."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def python_json_object(document: bytes) -> Any:
    """The object json.loads reads from document (numbers as Decimal), or NOT_AN_OBJECT when
    it is not one JSON object nested at most GELF_MAX_JSON_DEPTH levels."""
    try:
        value = json.loads(
            document.decode("utf-8", "surrogateescape"),
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):
        return NOT_AN_OBJECT
    if not isinstance(value, dict) or _depth(value) > GELF_MAX_JSON_DEPTH:
        return NOT_AN_OBJECT
    return value


def python_timestamp(document: bytes, receive_ms: int) -> int:
    """docs/contract.md §4.9 with json.loads and Decimal; InvalidOperation where Decimal
    cannot hold the number exactly."""
    value = python_json_object(document)
    if value is NOT_AN_OBJECT:
        return receive_ms
    value = value.get("timestamp")
    if isinstance(value, str) and NUMBER.fullmatch(value):
        value = Decimal(value)
    if (
        not isinstance(value, Decimal)
        or value < 0
        or value.scaleb(3, EXACT) >= (GELF_MAX_TIMESTAMP_MS + 1)
    ):
        return receive_ms
    return int(value.scaleb(3, EXACT))


def assert_agree(document: bytes, receive_ms: int) -> None:
    """The two implementations agree on the document's timestamp and validity, and so does
    Python's json module (where Decimal can hold the numbers)."""
    timestamp = cython.gelf_timestamp(document, receive_ms)
    is_object = cython.is_json_object(document)
    assert reference.gelf_timestamp(document, receive_ms) == timestamp
    assert reference.is_json_object(document) is is_object
    assert is_object is (python_json_object(document) is not NOT_AN_OBJECT)
    with contextlib.suppress(InvalidOperation):
        assert python_timestamp(document, receive_ms) == timestamp


numbers = st.from_regex(r"\A-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,12})?([eE][-+]?[0-9]{1,3})?\Z")
timestamp_values = st.one_of(
    numbers,
    numbers.map(lambda s: f'"{s}"'),
    st.integers(0, 300_000_000_000).map(str),
    st.sampled_from(["true", "null", '"x"', '""', "{}", '{"timestamp": 1}', "[1]", '" 1"']),
)
members = st.lists(
    st.tuples(
        st.sampled_from(["timestamp", "time\\u0073tamp", "timestamps", "host", "short_message"]),
        st.one_of(timestamp_values, json_values.map(json.dumps)),
    ),
    max_size=5,
)


def render(pairs: list[tuple[str, str]]) -> bytes:
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}").encode()


@given(members, st.integers(0, 2**40))
def test_timestamps_match_the_reference(pairs: list[tuple[str, str]], receive_ms: int) -> None:
    assert_agree(render(pairs), receive_ms)


@given(members, st.integers(0, 10_000), st.binary(max_size=3), st.integers(0, 2))
def test_damaged_documents_match_the_reference(
    pairs: list[tuple[str, str]], position: int, insert: bytes, delete: int
) -> None:
    document = render(pairs)
    k = position % (len(document) + 1)
    assert_agree(document[:k] + insert + document[k + delete :], 5)


@given(st.binary(max_size=200))
def test_random_bytes_match_the_reference(data: bytes) -> None:
    assert_agree(data, 5)
