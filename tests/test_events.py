"""Event JSON encoding, ids and per-stream buffers (kinesyslog._fast.events), run against both
implementations (the `backend` fixture: Cython and tests/reference/events.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kinesyslog.constants import KIND_GELF, KIND_SYSLOG
from kinesyslog.records import events_of
from tests.backends import Backend

PREFIX = b"123456789012345678901234567890123456"


def taken(buffers: Any) -> list[tuple[tuple[int, int, bytes], list[bytes]]]:
    """buffers.take() with each group's events as a list."""
    return [(key, events_of(body, memoryview(ends).cast("q")))
            for key, body, ends in buffers.take()]


def reference(message: bytes) -> bytes:
    """docs/contract.md §4.8, literally."""
    return json.dumps(message.decode("utf-8", "backslashreplace"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", b'""'),
        (b"hello", b'"hello"'),
        (b'say "hi"\\', b'"say \\"hi\\"\\\\"'),
        (b"\n\r\t\x08\x0c", b'"\\n\\r\\t\\b\\f"'),
        (b"\x00\x01\x1f\x7f", b'"\\u0000\\u0001\\u001f\x7f"'),
        ("é€😀".encode(), '"é€😀"'.encode()),
        (b"\xff", b'"\\\\xff"'),
        (b"a\x80b", b'"a\\\\x80b"'),
        (b"\xed\xa0\x80", b'"\\\\xed\\\\xa0\\\\x80"'),  # UTF-16 surrogate
        (b"\xc0\xaf", b'"\\\\xc0\\\\xaf"'),  # overlong "/"
        (b"\xe2\x82", b'"\\\\xe2\\\\x82"'),  # truncated at the end
        (b"\xef\xbb\xbf<13>", '"\ufeff<13>"'.encode()),  # BOM kept as text
        (b"\\xff", b'"\\\\xff"'),  # the same text, sent literally
    ],
)
def test_json_string_exact(backend: Backend, message: bytes, expected: bytes) -> None:
    assert backend.events.json_string(message) == expected
    assert reference(message) == expected


JSON_INPUTS = [
    b"",
    b"plain ascii message of some length, longer than eight bytes",
    b"<13>1 2024-02-29T10:11:12Z host app - - - msg",
    bytes(range(256)),
    bytes(range(256)) * 3,
    "naïve café — 日本語 — 😀 — \u2028\u2029".encode(),
    "x\u0800\uffff\U00010000\U0010ffff".encode(),
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf0\x8f\xbf\xbf",  # overlong 4-byte
    b"\xe0\x9f\xbf",  # overlong 3-byte
    b"\xed\x9f\xbf\xed\xa0\x80\xee\x80\x80",  # last before, first of, first after surrogates
    b"\xc1\xbf\xc2\x80\xdf\xbf",
    b"\xf5\x80\x80\x80\xf8\x88\x80\x80\x80\xfe\xff",
    b"\xe2\x82\xac\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98\x80\x80",
    b"\x80\xbf\x80\xbf",
    b'"' * 40 + b"\\" * 40 + b"\n" * 40,
    b"1234567\x00abcdefg\x1fABCDEFG\x7fhijklmn\xc3\xa9",
    b"\xef\xbb\xbf\xef\xbb\xbf",
]


@pytest.mark.parametrize("message", JSON_INPUTS)
def test_json_string_matches_json_dumps(backend: Backend, message: bytes) -> None:
    expected = reference(message)
    assert backend.events.json_string(message) == expected
    # Every alignment of the 8-byte fast path.
    for start in range(1, 9):
        shifted = b"a" * start + message
        assert backend.events.json_string(shifted) == reference(shifted)
    assert backend.events.json_string(bytearray(message)) == expected
    assert backend.events.json_string(memoryview(b"__" + message)[2:]) == expected


def test_id_generator_counts_from_zero(backend: Backend) -> None:
    ids = backend.events.IdGenerator(PREFIX)
    assert ids.next_id() == PREFIX + b"0" * 20
    assert ids.next_id() == PREFIX + b"0" * 19 + b"1"
    for _ in range(7):
        ids.next_id()
    assert ids.next_id() == PREFIX + b"0" * 19 + b"9"
    assert ids.next_id() == PREFIX + b"0" * 18 + b"10"
    seen = {ids.next_id() for _ in range(1000)}
    assert len(seen) == 1000
    assert ids.next_id() == PREFIX + b"0" * 16 + b"1011"
    assert all(len(i) == 56 and i.isdigit() for i in seen)


@pytest.mark.parametrize("prefix", [b"", b"1" * 35, b"1" * 37, b"1" * 35 + b"a", b"1" * 35 + b" "])
def test_id_prefix_must_be_36_digits(backend: Backend, prefix: bytes) -> None:
    with pytest.raises(ValueError):
        backend.events.IdGenerator(prefix)


def test_id_prefix_must_be_bytes(backend: Backend) -> None:
    with pytest.raises(TypeError):
        backend.events.IdGenerator("1" * 36)  # type: ignore[arg-type]


def test_new_id_prefix(backend: Backend) -> None:
    before = time.time_ns()
    prefix = backend.events.new_id_prefix()
    after = time.time_ns()
    assert len(prefix) == 36
    assert prefix.isdigit()
    assert before <= int(prefix[:20]) <= after
    assert backend.events.new_id_prefix() != prefix
    backend.events.IdGenerator(prefix)


def make_buffers(backend: Backend) -> Any:
    return backend.events.EventBuffers(backend.syslog.TimestampExtractor("UTC"),
                                       backend.events.IdGenerator(PREFIX))


def event_id(n: int) -> bytes:
    return PREFIX + b"%020d" % n


def test_encoded_events_exact_bytes(backend: Backend) -> None:
    buffers = make_buffers(backend)
    buffers.add_batch(
        [
            (0, 514, b"192.0.2.7", 1519247270240, b"<13>1 2018-02-21T21:07:50.123Z host - - - hi"),
            (0, 514, b"192.0.2.7", 1519247270241, b'no "timestamp"\n\xff'),
            (0, 514, b"192.0.2.7", -5, b"negative receive time"),
        ]
    )
    assert taken(buffers) == [
        (
            (0, 514, b"192.0.2.7"),
            [
                b'{"id": "' + event_id(0) + b'", "timestamp": 1519247270123, '
                b'"message": "<13>1 2018-02-21T21:07:50.123Z host - - - hi"}',
                b'{"id": "' + event_id(1) + b'", "timestamp": 1519247270241, '
                b'"message": "no \\"timestamp\\"\\n\\\\xff"}',
                b'{"id": "' + event_id(2) + b'", "timestamp": -5, '
                b'"message": "negative receive time"}',
            ],
        )
    ]


def test_timestamps_of_consecutive_events(backend: Backend) -> None:
    """The digits of a timestamp's seconds are kept from one event to the next: each event
    still carries its own timestamp, whatever came before it."""
    stamps = [1519247270123, 1519247270124, 1519247270999, 1519247271000, 1519247270005,
              999, 0, 1000, 1001, 10000, -1, -999, -1000, -1001, 2**62, -(2**63), 2**63 - 1,
              1519247270123]
    buffers = make_buffers(backend)
    buffers.add_batch([(KIND_SYSLOG, 514, b"h", stamp, b"no timestamp") for stamp in stamps])
    [(_, events)] = taken(buffers)
    assert [json.loads(event)["timestamp"] for event in events] == stamps
    assert [event.split(b'"timestamp": ')[1].split(b",")[0] for event in events] == [
        str(stamp).encode() for stamp in stamps]


@pytest.mark.parametrize(
    "special",
    [b'"', b"\\", b"\n", b"\x01", b"\x1f", b"\x7f", b"\x80", b"\xff", "é".encode(),
     "€".encode(), "😀".encode(), b"\xe2\x82"],
)
def test_json_string_with_the_special_byte_anywhere(backend: Backend, special: bytes) -> None:
    """Plain text is copied up to 16 bytes at a time: a byte that needs work is found at each
    position of a block and across blocks."""
    for length in range(0, 40):
        for at in range(length + 1):
            message = b"a" * at + special + b"b" * (length - at)
            assert backend.events.json_string(message) == reference(message), message
            doubled = message + message[::-1]
            assert backend.events.json_string(doubled) == reference(doubled), doubled


def test_events_are_json_dumps_of_the_event(backend: Backend) -> None:
    buffers = make_buffers(backend)
    message = "<13>Feb 29 10:11:12 host: é \x01".encode() + b"\xc3"
    buffers.add_batch([(KIND_SYSLOG, 12201, b"2001:db8::1", 1709294400000, message)])
    [(_, [event])] = taken(buffers)
    expected = {
        "id": event_id(0).decode(),
        "timestamp": 1709201472000,
        "message": message.decode("utf-8", "backslashreplace"),
    }
    assert event == json.dumps(expected, ensure_ascii=False).encode()


def test_gelf_entries_take_the_gelf_timestamp(backend: Backend) -> None:
    buffers = make_buffers(backend)
    gelf = b'{"version": "1.1", "short_message": "<13>Feb 29 10:11:12 x", "timestamp": 1.5}'
    syslog_like = b"<13>Feb 29 10:11:12 host: m"
    buffers.add_batch(
        [
            (KIND_GELF, 12201, b"a", 1709294400000, gelf),
            (KIND_GELF, 12201, b"a", 1709294400000, syslog_like),  # not GELF: receive time
            (KIND_GELF, 12201, b"a", 1709294400000, gelf[:-1]),  # invalid JSON: receive time
            (KIND_SYSLOG, 514, b"a", 1709294400000, syslog_like),
            (KIND_SYSLOG, 514, b"a", 1709294400000, gelf),  # syslog without a header
        ]
    )
    groups = taken(buffers)
    timestamps = {key: [json.loads(e)["timestamp"] for e in events] for key, events in groups}
    assert timestamps == {
        (KIND_GELF, 12201, b"a"): [1500, 1709294400000, 1709294400000],
        (KIND_SYSLOG, 514, b"a"): [1709201472000, 1709294400000],
    }
    # Decided where the message is parsed: the two GELF entries that are not one JSON object
    # (a syslog entry that is not JSON is no GELF error).
    assert buffers.gelf_invalid_json == 2


def test_grouping_order_and_totals(backend: Backend) -> None:
    buffers = make_buffers(backend)
    entries = [
        (0, 514, b"a", 300, b"m0"),
        (0, 514, b"a", 100, b"m1"),
        (0, 514, b"b", 200, b"m2"),
        (0, 515, b"a", 400, b"m3"),
        (1, 514, b"a", 500, b"m4"),
        (0, 514, b"a", 600, b"m5"),
        (0, 514, b"b", 700, b"m6"),
    ]
    assert (buffers.total_bytes, buffers.event_count, buffers.oldest_receive_ms) == (0, 0, 0)
    buffers.add_batch(entries[:3])
    buffers.add_batch([])
    buffers.add_batch(entries[3:])
    groups = taken(buffers)
    assert [key for key, _ in groups] == [
        (0, 514, b"a"),
        (0, 514, b"b"),
        (0, 515, b"a"),
        (1, 514, b"a"),
    ]
    messages = {key: [json.loads(e)["message"] for e in events] for key, events in groups}
    assert messages == {
        (0, 514, b"a"): ["m0", "m1", "m5"],
        (0, 514, b"b"): ["m2", "m6"],
        (0, 515, b"a"): ["m3"],
        (1, 514, b"a"): ["m4"],
    }
    ids = [json.loads(e)["id"] for _, events in groups for e in events]
    assert sorted(ids) == [event_id(n).decode() for n in range(7)]
    assert [json.loads(e)["timestamp"] for e in groups[0][1]] == [300, 100, 600]


def test_totals_and_take_resets(backend: Backend) -> None:
    buffers = make_buffers(backend)
    buffers.add_batch([(0, 514, b"a", 300, b"x"), (0, 514, b"b", 100, b"yy")])
    first = b'{"id": "' + event_id(0) + b'", "timestamp": 300, "message": "x"}'
    second = b'{"id": "' + event_id(1) + b'", "timestamp": 100, "message": "yy"}'
    assert buffers.total_bytes == len(first) + len(second) == 201
    assert buffers.event_count == 2
    assert buffers.oldest_receive_ms == 100
    assert taken(buffers) == [((0, 514, b"a"), [first]), ((0, 514, b"b"), [second])]
    assert (buffers.total_bytes, buffers.event_count, buffers.oldest_receive_ms) == (0, 0, 0)
    assert taken(buffers) == []
    buffers.add_batch([(0, 514, b"a", 900, b"z")])
    assert buffers.oldest_receive_ms == 900
    assert taken(buffers) == [
        ((0, 514, b"a"), [b'{"id": "' + event_id(2) + b'", "timestamp": 900, "message": "z"}'])
    ]


def test_equal_sources_share_a_group_whatever_the_object(backend: Backend) -> None:
    buffers = make_buffers(backend)
    source = b"198.51.100.1"
    buffers.add_batch(
        [
            (0, 514, source, 1, b"a"),
            (0, 514, bytes(bytearray(source)), 2, b"b"),
            (0, 514, b"198.51.100.2", 3, b"c"),
            (0, 514, b"198.51.100." + b"1", 4, b"d"),
        ]
    )
    assert [(key, len(events)) for key, events in taken(buffers)] == [
        ((0, 514, source), 3),
        ((0, 514, b"198.51.100.2"), 1),
    ]


def test_large_message_grows_the_scratch_buffer(backend: Backend) -> None:
    buffers = make_buffers(backend)
    message = b"\x01\xff" * 300_000
    buffers.add_batch([(0, 514, b"a", 1, message)])
    [(_, [event])] = taken(buffers)
    assert event.endswith(b'"message": ' + reference(message) + b"}")
    assert len(event) == 80 + 1 + 13 + 2 + 300_000 * 11 + 1


def test_messages_may_be_any_buffer(backend: Backend) -> None:
    buffers = make_buffers(backend)
    buffers.add_batch([(0, 514, b"a", 1, bytearray(b"x")), (0, 514, b"a", 2, memoryview(b"y"))])
    [(_, events)] = taken(buffers)
    assert [json.loads(e)["message"] for e in events] == ["x", "y"]


@pytest.mark.parametrize(
    "entry",
    [
        (0, 514, b"a", 1),
        (0, 514, b"a", 1, b"m", 9),
        ("0", 514, b"a", 1, b"m"),
        (0, 514, b"a", 1, "text"),
        [0, 514, b"a", 1, b"m"],
    ],
)
def test_malformed_entries_raise(backend: Backend, entry: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        make_buffers(backend).add_batch([entry])


def test_add_from_ring_reads_until_the_byte_limit(tmp_path: Any) -> None:
    """Straight from the ring (Cython only): the same events as add_batch of read_batch, and
    reading stops once total_bytes reaches max_bytes."""
    from kinesyslog._fast.events import EventBuffers, IdGenerator
    from kinesyslog._fast.ring import Ring
    from kinesyslog._fast.syslog import TimestampExtractor

    ring = Ring(str(tmp_path / "ring"), 1 << 20)
    messages = [b"<13>1 2024-02-29T10:11:12.%03dZ h a - - - m%d" % (n, n) for n in range(50)]
    assert ring.write_batch(messages, 0, b"192.0.2.1", 514, KIND_SYSLOG, 1_000) == 50
    direct = EventBuffers(TimestampExtractor("UTC"), IdGenerator(PREFIX))
    first = direct.add_from_ring(ring, 4096, 1000)
    one_event = direct.total_bytes // first
    assert direct.total_bytes >= 1000 > direct.total_bytes - one_event
    assert first + direct.add_from_ring(ring, 4096, 1 << 30) == 50
    assert direct.add_from_ring(ring, 4096, 1 << 30) == 0
    ring.rewind()
    via_tuples = EventBuffers(TimestampExtractor("UTC"), IdGenerator(PREFIX))
    via_tuples.add_batch(ring.read_batch(100))
    assert taken(direct) == taken(via_tuples)
