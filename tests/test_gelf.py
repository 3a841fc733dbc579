"""GELF 1.1 input (kinesyslog._fast.gelf_chunks, gelf_payload, json_scan, framing): chunks,
payloads, stream framing, timestamps; run
against both implementations (the `backend` fixture: Cython and tests/reference/gelf.py)
except the check of the extension's memory accounting."""

from __future__ import annotations

import gzip
import itertools
import random
import struct
import time
import tracemalloc
import zlib
from typing import Any

import pytest

from kinesyslog._fast.gelf_chunks import (
    CHUNK_OVERHEAD,
    MESSAGE_OVERHEAD,
    SLOT_OVERHEAD,
    ChunkAssembler,
)
from kinesyslog.constants import (
    GELF_CHUNK_TIMEOUT,
    GELF_MAX_PENDING_BYTES,
    GELF_MAX_PENDING_MESSAGES,
)
from tests.backends import Backend

DOC = b'{"version": "1.1", "host": "h", "short_message": "hello", "timestamp": 1709201472.5}'


def chunk(message_id: int, seq: int, count: int, payload: bytes) -> bytes:
    return b"\x1e\x0f" + struct.pack(">Q", message_id) + bytes([seq, count]) + payload


def split(message_id: int, payload: bytes, count: int) -> list[bytes]:
    """payload in count chunks of equal size (the last one shorter), in sequence order."""
    size = -(-len(payload) // count)
    return [chunk(message_id, k, count, payload[k * size : (k + 1) * size]) for k in range(count)]


def message_cost(count: int, *sizes: int) -> int:
    return MESSAGE_OVERHEAD + SLOT_OVERHEAD * count + sum(CHUNK_OVERHEAD + s for s in sizes)


def test_memory_costs_are_the_same(backend: Backend) -> None:
    """pending_bytes is stated in these units (docs/contract.md §4.5): both implementations
    charge the same."""
    assert (backend.gelf.CHUNK_OVERHEAD, backend.gelf.MESSAGE_OVERHEAD,
            backend.gelf.SLOT_OVERHEAD) == (CHUNK_OVERHEAD, MESSAGE_OVERHEAD, SLOT_OVERHEAD)


def counters(assembler: Any) -> dict[str, int]:
    names = ["expired", "evicted", "invalid", "duplicates", "empty", "oversized"]
    return {name: getattr(assembler, name) for name in names if getattr(assembler, name)}


# --- whole datagrams and payloads -------------------------------------------------------


def test_defaults(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(65536)
    assert assembler.max_pending_bytes == GELF_MAX_PENDING_BYTES == 32 * 1024 * 1024
    assert assembler.max_pending_messages == GELF_MAX_PENDING_MESSAGES == 8192
    assert assembler.timeout == GELF_CHUNK_TIMEOUT == 5.0
    assert assembler.max_reassembled == 128 * 8192
    assert backend.gelf.ChunkAssembler(900 * 1024).max_reassembled == 2 * 900 * 1024
    assert (assembler.pending_bytes, assembler.pending_messages, counters(assembler)) == (0, 0, {})


@pytest.mark.parametrize(
    "arguments", [(0,), (100, 0), (100, 1000, 0), (100, 1000, 10, 0.0), (100, 1000, 10, -1.0)]
)
def test_bad_arguments(backend: Backend, arguments: tuple) -> None:
    with pytest.raises(ValueError):
        backend.gelf.ChunkAssembler(*arguments)


def test_whole_datagrams_are_returned_as_they_are(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(DOC, 0.0) is DOC
    assert assembler.feed(bytearray(DOC), 0.0) == DOC
    assert assembler.feed(memoryview(b"__" + DOC)[2:], 0.0) == DOC
    assert assembler.feed(b"\x1e", 0.0) == b"\x1e"
    assert assembler.feed(b"\x0f\x1e abc", 0.0) == b"\x0f\x1e abc"
    compressed = zlib.compress(DOC)
    assert assembler.feed(compressed, 0.0) is compressed
    assert counters(assembler) == {}


def test_empty_and_truncated_chunk_headers_are_counted(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(b"", 0.0) is None
    assert assembler.feed(bytearray(), 0.0) is None
    for length in range(2, 12):
        assert assembler.feed(chunk(7, 0, 2, b"")[:length], 0.0) is None
    assert counters(assembler) == {"empty": 2, "invalid": 10}
    assert assembler.pending_messages == 0


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_decode_zlib_at_every_level(backend: Backend, level: int) -> None:
    compressed = zlib.compress(DOC, level)
    assert compressed[0] == 0x78
    assert backend.gelf.decode_payload(compressed, 1024) == (DOC, "ok")


@pytest.mark.parametrize(
    ("payload", "max_size", "expected"),
    [
        (DOC, 1024, (DOC, "ok")),
        (DOC, len(DOC), (DOC, "ok")),
        (DOC, 10, (DOC[:10], "truncated")),
        (b"", 10, (b"", "ok")),
        (b"\x1f", 10, (b"\x1f", "ok")),
        (b"x", 10, (b"x", "ok")),
        (b"x\x9d plain", 10, (b"x\x9d plain", "ok")),  # 0x789d % 31 != 0: not zlib
        (b"x^ plain", 10, (None, "corrupt")),  # a valid zlib header ("x^"), then garbage
        (gzip.compress(DOC), 1024, (DOC, "ok")),
        (gzip.compress(DOC), 10, (DOC[:10], "truncated")),
        (gzip.compress(DOC) + b"trailing", 1024, (DOC, "ok")),
        (zlib.compress(DOC), len(DOC), (DOC, "ok")),
        (zlib.compress(DOC), len(DOC) - 1, (DOC[:-1], "truncated")),
        (zlib.compress(DOC)[:-4], 1024, (None, "corrupt")),  # Adler-32 missing
        (zlib.compress(DOC)[:-8], 1024, (None, "corrupt")),  # ends inside the stream
        (zlib.compress(DOC)[:2], 1024, (None, "corrupt")),
        (zlib.compress(DOC)[:2] + b"\xff" * 20, 1024, (None, "corrupt")),
        (gzip.compress(DOC)[:-8] + b"\0" * 8, 1024, (None, "corrupt")),  # bad CRC-32
        (b"\x1f\x8b", 1024, (None, "corrupt")),
        (b"\x1f\x8b\x08\x00garbage", 1024, (None, "corrupt")),
    ],
)
def test_decode_payload(backend: Backend, payload: bytes, max_size: int, expected: tuple) -> None:
    assert backend.gelf.decode_payload(payload, max_size) == expected
    assert backend.gelf.decode_payload(bytearray(payload), max_size) == expected
    assert backend.gelf.decode_payload(memoryview(b"__" + payload)[2:], max_size) == expected


def test_decode_payload_returns_plain_bytes_without_copying(backend: Backend) -> None:
    message, status = backend.gelf.decode_payload(DOC, 1024)
    assert (message is DOC, status) == (True, "ok")
    with pytest.raises(ValueError):
        backend.gelf.decode_payload(DOC, 0)


@pytest.mark.parametrize("wrap", [zlib.compress, gzip.compress])
def test_decompression_bomb_is_capped_without_inflating_it(backend: Backend, wrap: object) -> None:
    zeros = bytes(100 * 1024 * 1024)
    bomb = wrap(zeros)  # type: ignore[operator]
    del zeros
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        started = time.perf_counter()
        message, status = backend.gelf.decode_payload(bomb, 65536)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (message, status) == (bytes(65536), "truncated")
    assert peak < 2 * len(bomb) + 4 * 65536
    assert elapsed < 0.5


# --- chunks ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
@pytest.mark.parametrize("count", [2, 3, 4, 7, 128])
def test_chunks_reassemble_in_any_order(backend: Backend, order: str, count: int) -> None:
    payload = bytes(range(256)) * 5
    chunks = split(0x0102030405060708, payload, count)
    if order == "reversed":
        chunks.reverse()
    elif order == "shuffled":
        random.Random(count).shuffle(chunks)
    assembler = backend.gelf.ChunkAssembler(65536)
    results = [assembler.feed(c, 1.0) for c in chunks]
    assert results == [None] * (count - 1) + [payload]
    assert (assembler.pending_bytes, assembler.pending_messages, counters(assembler)) == (0, 0, {})


def test_every_order_of_four_chunks(backend: Backend) -> None:
    chunks = split(42, DOC, 4)
    for permutation in itertools.permutations(chunks):
        assembler = backend.gelf.ChunkAssembler(1024)
        assert [assembler.feed(c, 0.0) for c in permutation] == [None, None, None, DOC]


def test_a_single_chunk_message_is_returned_at_once(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(chunk(1, 0, 1, DOC), 0.0) == DOC
    assert assembler.feed(chunk(1, 0, 1, b""), 0.0) == b""
    assert (assembler.pending_messages, counters(assembler)) == (0, {})


def test_compressed_payload_in_chunks(backend: Backend) -> None:
    compressed = gzip.compress(DOC * 20)
    assembler = backend.gelf.ChunkAssembler(4096)
    results = [assembler.feed(c, 0.0) for c in reversed(split(9, compressed, 3))]
    assert results[:2] == [None, None]
    assert backend.gelf.decode_payload(results[2], 4096) == (DOC * 20, "ok")


def test_duplicates_are_ignored_and_counted(backend: Backend) -> None:
    chunks = split(5, DOC, 3)
    assembler = backend.gelf.ChunkAssembler(1024)
    feeds = [chunks[0], chunks[0], chunks[2], chunks[0], chunks[2]]
    assert [assembler.feed(c, 0.0) for c in feeds] == [None] * 5
    assert counters(assembler) == {"duplicates": 3}
    # A duplicate's content is not looked at: the first copy counts.
    assert assembler.feed(chunk(5, 2, 3, b"other"), 0.0) is None
    assert assembler.feed(chunks[1], 0.0) == DOC
    assert counters(assembler) == {"duplicates": 4}
    # After completion, a late duplicate starts a new message, which expires.
    assert assembler.feed(chunks[1], 0.5) is None
    assert assembler.pending_messages == 1
    assert assembler.expire(5.5) == 1


def test_interleaved_messages(backend: Backend) -> None:
    first, second = split(1, DOC, 3), split(2, DOC[::-1], 3)
    assembler = backend.gelf.ChunkAssembler(1024)
    feeds = [first[1], second[2], first[0], second[0], second[1], first[2]]
    results = [assembler.feed(c, 0.0) for c in feeds]
    assert results == [None, None, None, None, DOC[::-1], DOC]


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ((0, 0), "count 0"),
        ((0, 129), "count above 128"),
        ((129, 129), "count above 128"),
        ((255, 255), "count above 128"),
        ((2, 2), "seq = count"),
        ((5, 3), "seq > count"),
        ((128, 128), "seq = count"),
    ],
)
def test_invalid_chunk_headers(backend: Backend, header: tuple[int, int], why: str) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(chunk(1, *header, b"data"), 0.0) is None, why
    assert (assembler.pending_messages, counters(assembler)) == (0, {"invalid": 1})


def test_128_chunks_are_the_maximum(backend: Backend) -> None:
    payload = bytes(range(128)) * 3
    chunks = split(3, payload, 128)
    assembler = backend.gelf.ChunkAssembler(1024)
    assert [assembler.feed(c, 0.0) for c in chunks[::-1]][-1] == payload
    assert counters(assembler) == {}


def test_a_count_mismatch_drops_the_chunk_only(backend: Backend) -> None:
    chunks = split(11, DOC, 3)
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(chunks[0], 0.0) is None
    assert assembler.feed(chunk(11, 1, 4, b"xx"), 0.0) is None
    assert assembler.feed(chunk(11, 1, 2, b"xx"), 0.0) is None
    assert counters(assembler) == {"invalid": 2}
    assert assembler.feed(chunks[1], 0.0) is None
    assert assembler.feed(chunks[2], 0.0) == DOC


def test_a_missing_chunk_expires_after_five_seconds(backend: Backend) -> None:
    chunks = split(77, DOC, 3)
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(chunks[0], 100.0) is None
    assert assembler.feed(chunks[1], 102.0) is None
    assert assembler.expire(104.999) == 0
    assert assembler.pending_messages == 1
    assert assembler.expire(105.0) == 1
    assert (assembler.pending_bytes, assembler.pending_messages) == (0, 0)
    assert counters(assembler) == {"expired": 1}
    # The chunk that arrives too late starts a new message, which never completes.
    assert assembler.feed(chunks[2], 105.5) is None
    assert assembler.expire(110.4) == 0
    assert assembler.expire(110.5) == 1
    assert assembler.expired == 2


def test_chunks_expire_their_message_without_expire_calls(backend: Backend) -> None:
    chunks = split(78, DOC, 2)
    assembler = backend.gelf.ChunkAssembler(1024)
    assert assembler.feed(chunks[0], 0.0) is None
    assert assembler.feed(chunks[1], 4.999) == DOC
    assert assembler.feed(chunks[0], 10.0) is None
    assert assembler.feed(chunks[1], 15.0) is None  # 5 s after its first chunk: too late
    assert assembler.expired == 1
    assert assembler.pending_messages == 1  # chunks[1] started a new message


def test_expire_only_discards_old_messages(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024, timeout=10.0)
    for k in range(5):
        assembler.feed(chunk(k, 0, 2, b"x"), float(k))
    assert assembler.expire(12.0) == 3
    assert assembler.pending_messages == 2
    assert assembler.pending_bytes == 2 * message_cost(2, 1)
    assert assembler.feed(chunk(3, 1, 2, b"y"), 4.0) == b"xy"
    assert assembler.expire(100.0) == 1
    assert assembler.expire(100.0) == 0
    assert counters(assembler) == {"expired": 4}


def test_pending_bytes_are_exact(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)
    assembler.feed(chunk(1, 0, 4, b"abc"), 0.0)
    assert assembler.pending_bytes == message_cost(4, 3)
    assembler.feed(chunk(1, 3, 4, b"defgh"), 0.0)
    assembler.feed(chunk(2, 1, 2, b""), 0.0)
    assert assembler.pending_bytes == message_cost(4, 3, 5) + message_cost(2, 0)
    assert assembler.pending_messages == 2
    assembler.feed(chunk(1, 1, 4, b"i"), 0.0)
    assert assembler.feed(chunk(1, 2, 4, b"j"), 0.0) == b"abcijdefgh"
    assert assembler.pending_bytes == message_cost(2, 0)


def test_the_oldest_messages_are_evicted_when_bytes_run_out(backend: Backend) -> None:
    cost = message_cost(2, 100)
    assembler = backend.gelf.ChunkAssembler(1024, max_pending_bytes=3 * cost)
    for k in range(3):
        assembler.feed(chunk(k, 0, 2, b"a" * 100), float(k))
    assert assembler.pending_bytes == 3 * cost
    assembler.feed(chunk(3, 0, 2, b"a" * 100), 3.0)  # evicts message 0
    assembler.feed(chunk(4, 0, 2, b"a" * 250), 4.0)  # needs room for two: evicts 1 and 2
    assert assembler.evicted == 3
    assert assembler.pending_messages == 2
    assert assembler.pending_bytes == cost + message_cost(2, 250)
    assert assembler.feed(chunk(3, 1, 2, b"b"), 5.0) == b"a" * 100 + b"b"
    assert assembler.feed(chunk(4, 1, 2, b"b"), 5.0) == b"a" * 250 + b"b"
    assert assembler.feed(chunk(0, 1, 2, b"b"), 5.0) is None  # its first chunk is gone
    assert (assembler.evicted, assembler.pending_messages) == (3, 1)
    assert assembler.pending_bytes == message_cost(2, 1)


def test_the_oldest_messages_are_evicted_when_slots_run_out(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024, max_pending_messages=3)
    for k in range(5):
        assembler.feed(chunk(k, 0, 2, b"x%d" % k), 0.0)
    assert (assembler.pending_messages, assembler.evicted) == (3, 2)
    assert assembler.feed(chunk(0, 1, 2, b"!"), 0.0) is None  # 0 was evicted
    assert assembler.evicted == 3  # message 2, the oldest, made room for the new message 0
    assert assembler.feed(chunk(3, 1, 2, b"!"), 0.0) == b"x3!"
    assert assembler.feed(chunk(4, 1, 2, b"!"), 0.0) == b"x4!"
    # Completing a message needs no room: it frees some.
    assert assembler.pending_messages == 1


def test_a_message_evicted_for_its_own_chunk_takes_no_other_with_it(backend: Backend) -> None:
    cost = message_cost(3, 100)
    assembler = backend.gelf.ChunkAssembler(1024, max_pending_bytes=2 * cost + 50)
    assembler.feed(chunk(1, 0, 3, b"a" * 100), 0.0)
    assembler.feed(chunk(2, 0, 3, b"b" * 100), 1.0)
    assert assembler.feed(chunk(1, 1, 3, b"a" * 100), 2.0) is None
    assert (assembler.evicted, assembler.pending_messages) == (1, 1)
    assert assembler.pending_bytes == cost
    assert assembler.feed(chunk(2, 1, 3, b"b"), 3.0) is None
    assert assembler.feed(chunk(2, 2, 3, b"b"), 3.0) == b"b" * 100 + b"bb"


def test_a_flood_of_never_completing_ids_does_not_block_others(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(
        65536, max_pending_bytes=200_000, max_pending_messages=1000)
    rng = random.Random(1)
    delivered = []
    for k in range(20_000):
        now = k / 10_000  # 2 seconds: nothing expires, memory must be bounded by eviction
        assembler.feed(chunk(rng.getrandbits(64), 0, 128, b"f" * rng.randrange(200)), now)
        if k % 100 == 0:
            good = split(k, DOC, 2)
            assert assembler.feed(good[1], now) is None
            delivered.append(assembler.feed(good[0], now))
        assert assembler.pending_bytes <= 200_000
        assert assembler.pending_messages <= 1000
    assert delivered == [DOC] * 200
    assert assembler.evicted > 19_000


def test_a_message_beyond_the_reassembly_cap_is_dropped(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024)  # max_reassembled is 128 * 8192
    assert assembler.max_reassembled == 1_048_576
    big = b"z" * 60_000
    for seq in range(17):
        assert assembler.feed(chunk(1, seq, 20, big), 0.0) is None
    assert assembler.pending_bytes == message_cost(20, *[60_000] * 17)
    assert assembler.feed(chunk(1, 17, 20, big), 0.0) is None  # 18 * 60,000 > 1 MiB
    assert counters(assembler) == {"oversized": 1}
    # The rest of it is absorbed without being stored or counted again.
    assert assembler.pending_bytes == MESSAGE_OVERHEAD
    assert assembler.feed(chunk(1, 17, 20, big), 0.0) is None
    assert assembler.duplicates == 1
    assert assembler.feed(chunk(1, 18, 20, big), 0.0) is None
    assert assembler.feed(chunk(1, 19, 20, b""), 0.0) is None
    assert (assembler.pending_messages, assembler.pending_bytes) == (0, 0)
    assert counters(assembler) == {"oversized": 1, "duplicates": 1}
    # Dropped records expire silently.
    assembler.feed(chunk(2, 0, 30, big), 0.0)
    for seq in range(1, 18):
        assembler.feed(chunk(2, seq, 30, big), 0.0)
    assert assembler.oversized == 2
    assert assembler.expire(10.0) == 0
    assert assembler.pending_messages == 0


def test_a_chunk_larger_than_the_byte_bound_is_oversized(backend: Backend) -> None:
    assembler = backend.gelf.ChunkAssembler(1024, max_pending_bytes=1000)
    assert assembler.feed(chunk(1, 0, 2, b"x" * 1000), 0.0) is None
    assert (assembler.pending_messages, counters(assembler)) == (0, {"oversized": 1})
    assembler.feed(chunk(2, 0, 2, b"x"), 0.0)
    assert assembler.feed(chunk(2, 1, 2, b"x" * 1000), 0.0) == b"x" * 1001  # completes
    assembler.feed(chunk(3, 0, 3, b"x"), 0.0)
    assert assembler.feed(chunk(3, 1, 3, b"x" * 1000), 0.0) is None
    assert assembler.oversized == 2
    assert assembler.pending_bytes == MESSAGE_OVERHEAD


@pytest.mark.parametrize(("count", "size"), [(2, 0), (2, 1), (128, 1), (16, 1000)])
def test_pending_bytes_cover_the_real_memory(count: int, size: int) -> None:
    bound = 1_000_000
    assembler = ChunkAssembler(65536, max_pending_bytes=bound, max_pending_messages=100_000)
    messages = 2 * bound // message_cost(count, *[size] * (count - 1))
    chunks = [chunk(k, s, count, b"m" * size) for k in range(messages) for s in range(count - 1)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for c in chunks:
            assembler.feed(c, 0.0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert assembler.evicted > 0
    assert used <= assembler.max_pending_bytes


# --- timestamps ------------------------------------------------------------------------

R = 1709294400000  # the receive time


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b'{"timestamp": 1700000000}', 1700000000000),
        (b'{"timestamp":1700000000.1}', 1700000000100),
        (b'{"timestamp":1700000000.12}', 1700000000120),
        (b'{"timestamp":1700000000.123}', 1700000000123),
        (b'{"timestamp":1700000000.1234}', 1700000000123),
        (b'{"timestamp":1700000000.12345}', 1700000000123),
        (b'{"timestamp":1700000000.123456}', 1700000000123),
        (b'{"timestamp":1700000000.1234567}', 1700000000123),
        (b'{"timestamp":1700000000.12345678}', 1700000000123),
        (b'{"timestamp":1700000000.123456789}', 1700000000123),
        (b'{"timestamp":1700000000.999999999}', 1700000000999),
        (b'{"timestamp":1700000000.00}', 1700000000000),
        (b'{"timestamp": "1700000000"}', 1700000000000),
        (b'{"timestamp": "1700000000.5"}', 1700000000500),
        (b'{"timestamp": "1.7e9"}', 1700000000000),
        (b'{"timestamp": 1.7e9}', 1700000000000),
        (b'{"timestamp": 1.7E+9}', 1700000000000),
        (b'{"timestamp": 17000000005e-1}', 1700000000500),
        (b'{"timestamp": 1.7000000001234e9}', 1700000000123),
        (b'{"timestamp": 1700000000123e-3}', 1700000000123),
        (b'{"timestamp": 1700000000123456e-6}', 1700000000123),
        (b'{"timestamp": 0.0017e12}', 1700000000000),
        (b'{"timestamp": 0.0000000017e18}', 1700000000000),
        (b'{"timestamp": 0}', 0),
        (b'{"timestamp": -0}', 0),
        (b'{"timestamp": -0.0e5}', 0),
        (b'{"timestamp": 0.0009}', 0),
        (b'{"timestamp": 1e-400}', 0),
        (b'{"timestamp": 0e999999999999999999999}', 0),
        (b'{"timestamp": 253402300799.999}', 253402300799999),
        (b'{"timestamp": 253402300799.9999999}', 253402300799999),
        (b'{"timestamp": 253402300800}', R),
        (b'{"timestamp": 1e300}', R),
        (b'{"timestamp": 1e999999999999999999999}', R),
        (b'{"timestamp": ' + b"1" * 5000 + b"}", R),
        (b'{"timestamp": 0.' + b"0" * 5000 + b"1}", 0),
        (b'{"timestamp": -1}', R),
        (b'{"timestamp": -0.0001}', R),
        (b'{"timestamp": "-1"}', R),
        # Only the top-level member counts; the last of duplicates wins, as in parsers.
        (b'{"a": {"timestamp": 5}, "timestamp": 6}', 6000),
        (b'{"timestamp": 6, "a": {"timestamp": 5}}', 6000),
        (b'{"a": {"timestamp": 5}}', R),
        (b'{"a": [{"timestamp": 5}]}', R),
        (b'{"a": "\\"timestamp\\": 5"}', R),
        (b'{"short_message": "timestamp: 5", "timestamp": 9}', 9000),
        (b'{"timestamp": 1, "timestamp": 2}', 2000),
        (b'{"timestamp": 1, "timestamp": "x"}', R),
        (b'{"time\\u0073tamp": 7}', 7000),
        (b'{"\\u0074imestam\\u0070": 7}', 7000),
        (b'{"timestamp\\u0000": 7}', R),
        (b'{"Timestamp": 7}', R),
        (b'{"timestamps": 7}', R),
        (b'{"time": 7}', R),
        # Other types and non-numeric strings.
        (b'{"timestamp": true}', R),
        (b'{"timestamp": null}', R),
        (b'{"timestamp": {}}', R),
        (b'{"timestamp": [1]}', R),
        (b'{"timestamp": ""}', R),
        (b'{"timestamp": "abc"}', R),
        (b'{"timestamp": " 1"}', R),
        (b'{"timestamp": "1 "}', R),
        (b'{"timestamp": "+1"}', R),
        (b'{"timestamp": "0x10"}', R),
        (b'{"timestamp": "1."}', R),
        (b'{"timestamp": "\\u0031"}', R),
        ('{"timestamp": "\u0661"}'.encode(), R),  # ARABIC-INDIC DIGIT ONE
        # Invalid JSON.
        (b"", R),
        (b"garbage", R),
        (b"<13>Feb 29 10:11:12 host: m", R),
        (b'{"timestamp": 1', R),
        (b'{"timestamp": 1,}', R),
        (b'{"timestamp": 01}', R),
        (b'{"timestamp": 1.}', R),
        (b'{"timestamp": .5}', R),
        (b'{"timestamp": +1}', R),
        (b'{"timestamp": NaN}', R),
        (b'{"timestamp": Infinity}', R),
        (b'[{"timestamp": 1}]', R),
        (b'{"timestamp": 1} x', R),
        (b'{"timestamp": 1}\x00', R),
        (b'\xef\xbb\xbf{"timestamp": 1}', R),
        (b'{"a": "\x01", "timestamp": 1}', R),
        (b'  {"timestamp": 1}\r\n\t ', 1000),
        (b'{"a": "\xff\xfe", "timestamp": 1}', 1000),  # UTF-8 is not checked
    ],
)
def test_gelf_timestamp(backend: Backend, document: bytes, expected: int) -> None:
    assert backend.gelf.gelf_timestamp(document, R) == expected
    assert backend.gelf.gelf_timestamp(bytearray(document), R) == expected
    assert backend.gelf.gelf_timestamp(memoryview(b"__" + document)[2:], R) == expected


@pytest.mark.parametrize(
    "document",
    [
        b"{}",
        b" {} ",
        b'{"a":[]}',
        b'{"a": [1, -2.5e-3, true, false, null, "s", {"b": {}}, []]}',
        b'{"a": "\\u00e9\\n\\"\\\\\\/\\b\\f\\r\\t"}',
        b'{"a": "\x7f\xc3\xa9"}',
        b'{"a":' + b"[" * 511 + b"]" * 511 + b"}",
        DOC,
    ],
)
def test_valid_json_objects(backend: Backend, document: bytes) -> None:
    assert backend.gelf.is_json_object(document) is True


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"   ",
        b"[]",
        b'"s"',
        b"1",
        b"{",
        b"}",
        b'{"a"}',
        b'{"a":}',
        b'{"a" 1}',
        b'{"a":1,}',
        b"{,}",
        b'{"a":1 "b":2}',
        b'{"a":[1,]}',
        b'{"a":[,1]}',
        b'{"a":[1}',
        b'{"a":1]',
        b'{"a":{"b":1]}',
        b'{"a":tru}',
        b'{"a":nul}',
        b'{"a":"\\x"}',
        b'{"a":"\\u12"}',
        b'{"a":"\\u12g4"}',
        b'{"a":"\\',
        b'{"a":"abc',
        b'{"a":"\n"}',
        b"{a:1}",
        b"{'a':1}",
        b'{"a":1}{}',
        b'{"a":1}}',
        b'{"a":-}',
        b'{"a":1e}',
        b'{"a":1e+}',
        b'{"a":-01}',
        b"\xef\xbb\xbf{}",
        b"\x00{}",
        b'{"a":' + b"[" * 512 + b"]" * 512 + b"}",
    ],
)
def test_invalid_json_objects(backend: Backend, document: bytes) -> None:
    assert backend.gelf.is_json_object(document) is False
    assert backend.gelf.gelf_timestamp(document, 5) == 5


# --- TCP/TLS framing -------------------------------------------------------------------

PRETTY = b'{\n  "version": "1.1",\n  "a": [\n    1,\n    {"b": "}\\n]"}\n  ]\n}'


def frame_all(backend: Backend, chunks: list[bytes], max_size: int = 64,
              ) -> tuple[list[bytes], int, int]:
    framer = backend.gelf.GelfStreamFramer(max_size)
    messages: list[bytes] = []
    for data in chunks:
        messages += framer.feed(data)
        assert framer.buffered <= max_size + 1
    messages += framer.close()
    assert framer.buffered == 0
    return messages, framer.truncated, framer.incomplete_dropped


# (stream, max_size, expected messages, truncated, incomplete_dropped)
FRAMES = [
    (b"", 64, [], 0, 0),
    (b'{"a":1}\x00', 64, [b'{"a":1}'], 0, 0),
    (b'{"a":1}\x00{"b":2}\x00', 64, [b'{"a":1}', b'{"b":2}'], 0, 0),
    (b'{"a":1}\n{"b":2}\n', 64, [b'{"a":1}', b'{"b":2}'], 0, 0),
    (b'{"a":1}\r\n{"b":2}\r\x00', 64, [b'{"a":1}', b'{"b":2}\r'], 0, 0),
    (PRETTY + b"\x00", 64, [PRETTY], 0, 0),
    (PRETTY + b"\n\x00" + PRETTY + b"\r\n", 64, [PRETTY, PRETTY], 0, 0),
    (b'{"a": "x\ny"}\n', 64, [b'{"a": "x\ny"}'], 0, 0),  # raw LF inside a string
    (b'{"a": "x\\"}\n{"}\n', 64, [b'{"a": "x\\"}\n{"}'], 0, 0),
    (b'{"a": "x\\\\"}\n{}\n', 64, [b'{"a": "x\\\\"}', b"{}"], 0, 0),
    (b'{"a": "}}}"}\n{"b": "{{{"}\n', 64, [b'{"a": "}}}"}', b'{"b": "{{{"}'], 0, 0),
    (b'{"a": "x\x00{"b":1}\n', 64, [b'{"a": "x', b'{"b":1}'], 0, 0),  # NUL always ends
    (b'{"a": "x\\\x00{}\n', 64, [b'{"a": "x\\', b"{}"], 0, 0),
    (b"\n\n \t\r\n\x00\x00  \x00", 64, [], 0, 0),
    (b'  \t{"a":1} \n', 64, [b'{"a":1} '], 0, 0),
    (b'hello\nworld "x\n', 64, [b"hello", b'world "x'], 0, 0),  # not JSON: lines
    (b"[1,\n2]\n", 64, [b"[1,", b"2]"], 0, 0),  # only objects span lines
    (b'x {"a":\n1}\n', 64, [b'x {"a":\n1}'], 0, 0),
    (b'{"a":1} {"b":\n2}\n', 64, [b'{"a":1} {"b":\n2}'], 0, 0),
    (b'{"a": 1\n{"b": 2}\n', 64, [], 0, 1),  # never closed
    (b'{"a": 1\n{"b": 2}\n\x00{}', 64, [b'{"a": 1\n{"b": 2}\n', b"{}"], 0, 0),
    (b'{"a":1}', 64, [b'{"a":1}'], 0, 0),
    (b'{"a":1}\r', 64, [b'{"a":1}'], 0, 0),
    (b'{"a":', 64, [], 0, 1),
    (b'{"a":"}', 64, [], 0, 1),
    (b"garbage", 64, [b"garbage"], 0, 0),
    # Truncation keeps the framing of the next document.
    (b'{"a":"0123456789"}\x00{"b":1}\x00', 8, [b'{"a":"01', b'{"b":1}'], 1, 0),
    (b'{"a":\n"0123456789"}\n{"b":1}\n', 8, [b'{"a":\n"0', b'{"b":1}'], 1, 0),
    (b'{"a":"\n0123456789\n"}\n{}\n', 8, [b'{"a":"\n0', b"{}"], 1, 0),
    (b'{"a":12}\n', 8, [b'{"a":12}'], 0, 0),
    (b'{"a":12}\r\n', 8, [b'{"a":12}'], 0, 0),
    (b'{"a":12}\r\x00', 8, [b'{"a":12}'], 1, 0),
    (b'{"a":12}\r', 8, [b'{"a":12}'], 0, 0),
    (b'{"a":123}\n', 8, [b'{"a":123'], 1, 0),
    (b'{"a":123}', 8, [b'{"a":123'], 1, 0),
    (b'{"a":"12345678', 8, [b'{"a":"12'], 1, 0),  # delivered once cut, even if never closed
    (b" " * 100 + b"{}\n", 8, [b"{}"], 0, 0),
    (b"\x00" * 100 + b"{}", 8, [b"{}"], 0, 0),
]


@pytest.mark.parametrize(("stream", "max_size", "expected", "truncated", "dropped"), FRAMES)
def test_stream_framing(
    backend: Backend,
    stream: bytes, max_size: int, expected: list[bytes], truncated: int, dropped: int
) -> None:
    assert frame_all(backend, [stream], max_size) == (expected, truncated, dropped)
    assert frame_all(backend, [bytes([b]) for b in stream], max_size) == (
        expected, truncated, dropped)
    for cut in range(len(stream) + 1):
        assert frame_all(backend, [stream[:cut], stream[cut:]], max_size) == (
            expected,
            truncated,
            dropped,
        ), cut


def test_framer_accepts_any_buffer_and_is_reusable_after_close(backend: Backend) -> None:
    framer = backend.gelf.GelfStreamFramer(64)
    assert framer.feed(bytearray(b'{"a":1}\x00{"b"')) == [b'{"a":1}']
    assert framer.buffered == 4
    assert framer.feed(memoryview(b':2}\n{"c":3}\n')) == [b'{"b":2}', b'{"c":3}']
    assert framer.close() == []
    assert framer.feed(b'{"d":4}') == []
    assert framer.close() == [b'{"d":4}']
    with pytest.raises(ValueError):
        backend.gelf.GelfStreamFramer(0)


def test_framer_memory_stays_bounded_on_endless_input(backend: Backend) -> None:
    framer = backend.gelf.GelfStreamFramer(1000)
    piece = b"1, " * 300
    delivered = framer.feed(b'{"a": [')
    for _ in range(1000):
        delivered += framer.feed(piece)
        assert framer.buffered <= 1001
    assert delivered == [(b'{"a": [' + piece * 4)[:1000]]
    assert (framer.truncated, framer.incomplete_dropped) == (1, 0)
    assert framer.feed(b"]}\n{}\n") == [b"{}"]
