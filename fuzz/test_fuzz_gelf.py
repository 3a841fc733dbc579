"""Fuzz GELF input against pure-Python references: chunk reassembly, framing, timestamps."""

from __future__ import annotations

import json
import re
import struct
from collections import OrderedDict
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

from hypothesis import assume, given
from hypothesis import strategies as st

from kinesyslog._fast.gelf import (
    CHUNK_OVERHEAD,
    MESSAGE_OVERHEAD,
    SLOT_OVERHEAD,
    ChunkAssembler,
    GelfStreamFramer,
    decode_payload,
    gelf_timestamp,
    is_json_object,
)
from kinesyslog.constants import GELF_MAX_CHUNKS, GELF_MAX_TIMESTAMP_MS

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
    assembler = ChunkAssembler(65536)
    results = [assembler.feed(c, 0.0) for c in feeds]
    assert results == [None] * (len(feeds) - 1) + [payload]
    assert assembler.duplicates == len(feeds) - count
    assert (assembler.pending_bytes, assembler.pending_messages) == (0, 0)


class Pending:
    def __init__(self, first_seen: float, count: int) -> None:
        self.first_seen = first_seen
        self.count = count
        self.seen: set[int] = set()
        self.chunks: dict[int, bytes] | None = {}

    def cost(self) -> int:
        if self.chunks is None:
            return MESSAGE_OVERHEAD
        return (
            MESSAGE_OVERHEAD
            + SLOT_OVERHEAD * self.count
            + sum(CHUNK_OVERHEAD + len(c) for c in self.chunks.values())
        )


class ReferenceAssembler:
    """ChunkAssembler's documented behaviour, written plainly."""

    def __init__(
        self, max_message_size: int, max_bytes: int, max_messages: int, timeout: float
    ) -> None:
        self.max_reassembled = max(2 * max_message_size, GELF_MAX_CHUNKS * 8192)
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.timeout = timeout
        self.pending: OrderedDict[bytes, Pending] = OrderedDict()
        self.counts = dict.fromkeys(COUNTERS, 0)

    @property
    def pending_bytes(self) -> int:
        return sum(m.cost() for m in self.pending.values())

    def _drop_oldest(self, counter: str) -> None:
        _, msg = self.pending.popitem(last=False)
        if msg.chunks is not None:
            self.counts[counter] += 1

    def expire(self, now: float) -> None:
        limit = now - self.timeout
        while self.pending and next(iter(self.pending.values())).first_seen <= limit:
            self._drop_oldest("expired")

    def feed(self, datagram: bytes, now: float) -> bytes | None:
        if not datagram:
            self.counts["empty"] += 1
            return None
        if datagram[:2] != b"\x1e\x0f":
            return datagram
        if len(datagram) < 12:
            self.counts["invalid"] += 1
            return None
        key, seq, count, payload = datagram[2:10], datagram[10], datagram[11], datagram[12:]
        if not 0 < count <= GELF_MAX_CHUNKS or seq >= count:
            self.counts["invalid"] += 1
            return None
        if count == 1:
            return payload
        self.expire(now)
        msg = self.pending.get(key)
        if msg is None:
            cost = MESSAGE_OVERHEAD + SLOT_OVERHEAD * count + CHUNK_OVERHEAD + len(payload)
            if cost > self.max_bytes:
                self.counts["oversized"] += 1
                return None
            while len(self.pending) >= self.max_messages:
                self._drop_oldest("evicted")
            while self.pending_bytes + cost > self.max_bytes:
                self._drop_oldest("evicted")
            msg = self.pending[key] = Pending(now, count)
            msg.seen.add(seq)
            msg.chunks[seq] = payload  # type: ignore[index]
            return None
        if msg.count != count:
            self.counts["invalid"] += 1
            return None
        if seq in msg.seen:
            self.counts["duplicates"] += 1
            return None
        msg.seen.add(seq)
        complete = len(msg.seen) == count
        if msg.chunks is None:
            if complete:
                del self.pending[key]
            return None
        if complete:
            del self.pending[key]
            msg.chunks[seq] = payload
            return b"".join(msg.chunks[k] for k in range(count))
        if CHUNK_OVERHEAD + len(payload) > self.max_bytes:
            self.counts["oversized"] += 1
            msg.chunks = None
            return None
        while self.pending_bytes + CHUNK_OVERHEAD + len(payload) > self.max_bytes:
            self._drop_oldest("evicted")
            if key not in self.pending:
                return None
        msg.chunks[seq] = payload
        return None


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
    assembler = ChunkAssembler(1024, max_bytes, max_messages, timeout)
    reference = ReferenceAssembler(1024, max_bytes, max_messages, timeout)
    now = 0.0
    for datagram, step in ops:
        now += step
        if datagram is None:
            before = reference.counts["expired"]
            reference.expire(now)
            assert assembler.expire(now) == reference.counts["expired"] - before
        else:
            assert assembler.feed(datagram, now) == reference.feed(datagram, now)
        assert {name: getattr(assembler, name) for name in COUNTERS} == reference.counts
        assert assembler.pending_bytes == reference.pending_bytes <= max_bytes
        assert assembler.pending_messages == len(reference.pending) <= max_messages


@given(st.lists(st.binary(max_size=300), max_size=50), st.integers(1, 3000))
def test_random_datagrams_never_raise(datagrams: list[bytes], max_bytes: int) -> None:
    assembler = ChunkAssembler(100, max_bytes, 3)
    for k, datagram in enumerate(datagrams):
        for data in (datagram, b"\x1e\x0f" + datagram):
            result = assembler.feed(data, k * 0.7)
            assert result is None or isinstance(result, bytes)
            assert assembler.pending_bytes <= max_bytes
            message, status = decode_payload(result or data, 100)
            assert status in ("ok", "truncated", "corrupt")
            assert (message is None) == (status == "corrupt")
            assert message is None or len(message) <= 100
            assert gelf_timestamp(data, 7) >= 0
            assert isinstance(is_json_object(data), bool)


# --- stream framing --------------------------------------------------------------------


def reference_frames(stream: bytes, max_size: int) -> tuple[list[bytes], int, int]:
    """GelfStreamFramer's documented rules on a whole stream, then close."""
    messages: list[bytes] = []
    truncated = dropped = 0
    i, n = 0, len(stream)
    while True:
        while i < n and stream[i] in b" \t\r\n\x00":
            i += 1
        if i >= n:
            return messages, truncated, dropped
        depth, in_string, escape, j = 0, False, False, i
        while j < n:
            c = stream[j]
            if in_string:
                if c == 0:
                    break
                if escape:
                    escape = False
                elif c == 0x5C:
                    escape = True
                elif c == 0x22:
                    in_string = False
            elif c == 0 or (c == 0x0A and depth == 0):
                break
            elif depth == 0:
                depth = 1 if c == 0x7B else 0
            elif c == 0x22:
                in_string = True
            elif c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
            j += 1
        frame = stream[i:j]
        if j == n and len(frame) <= max_size + 1 and depth > 0:
            dropped += 1  # cut off at close, and not already delivered truncated
            return messages, truncated, dropped
        if (j == n or stream[j] == 0x0A) and frame.endswith(b"\r"):
            frame = frame[:-1]
        if len(frame) > max_size:
            frame = frame[:max_size]
            truncated += 1
        messages.append(frame)
        i = j + 1


def feed_in_pieces(stream: bytes, cuts: list[int], max_size: int) -> tuple[list[bytes], int, int]:
    framer = GelfStreamFramer(max_size)
    messages: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        messages += framer.feed(stream[a:b])
        assert framer.buffered <= max_size + 1
    messages += framer.close()
    return messages, framer.truncated, framer.incomplete_dropped


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
    assert feed_in_pieces(stream, cut, 1_000_000) == (texts, 0, 0)
    assert reference_frames(stream, 1_000_000) == (texts, 0, 0)


pieces = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b"\r", b"\x00", b" ", b"a", b'{"k": "v"}']
)
edgy_streams = st.lists(pieces, max_size=60).map(b"".join)


@given(st.one_of(st.binary(max_size=300), edgy_streams), st.integers(1, 40), cuts)
def test_framer_matches_the_reference(stream: bytes, max_size: int, cut: list[int]) -> None:
    assert feed_in_pieces(stream, cut, max_size) == reference_frames(stream, max_size)


# --- timestamps ------------------------------------------------------------------------

NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _no_constants(name: str) -> object:
    raise ValueError(name)


def reference_timestamp(document: bytes, receive_ms: int) -> int:
    try:
        value = json.loads(
            document.decode("utf-8", "surrogateescape"),
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):
        return receive_ms
    if not isinstance(value, dict):
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
    document = render(pairs)
    try:
        expected = reference_timestamp(document, receive_ms)
    except InvalidOperation:
        assume(False)
    assert gelf_timestamp(document, receive_ms) == expected
    assert is_json_object(document) == _valid(document)


def _valid(document: bytes) -> bool:
    try:
        value = json.loads(
            document.decode("utf-8", "surrogateescape"),
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict)


@given(members, st.integers(0, 10_000), st.binary(max_size=3), st.integers(0, 2))
def test_damaged_documents_match_the_reference(
    pairs: list[tuple[str, str]], position: int, insert: bytes, delete: int
) -> None:
    document = render(pairs)
    k = position % (len(document) + 1)
    document = document[:k] + insert + document[k + delete :]
    try:
        expected = reference_timestamp(document, 5)
    except InvalidOperation:
        assume(False)
    assert gelf_timestamp(document, 5) == expected
    assert is_json_object(document) == _valid(document)


@given(st.binary(max_size=200))
def test_random_bytes_match_the_reference(data: bytes) -> None:
    assert is_json_object(data) == _valid(data)
    assert gelf_timestamp(data, 5) == reference_timestamp(data, 5)
