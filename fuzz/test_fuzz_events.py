"""Fuzz event encoding: the Cython module against the pure-Python reference
(tests/reference/events.py: json.dumps of the event, as docs/contract.md §4.8 says)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog._fast import events as cython
from kinesyslog._fast.syslog import TimestampExtractor
from kinesyslog.records import events_of
from tests.reference import events as reference
from tests.reference import syslog as reference_syslog

PREFIX = b"987654321098765432109876543210987654"


# Pieces that make the UTF-8 validator and the 8-byte fast path work: sequence starts,
# continuation bytes, boundaries of the valid ranges, escapes.
pieces = st.sampled_from(
    [
        b"a",
        b"abcdefgh",
        b'"',
        b"\\",
        b"\n",
        b"\x00",
        b"\x1f",
        b"\x7f",
        b"\x80",
        b"\xbf",
        b"\xc1",
        b"\xc2",
        b"\xdf",
        b"\xe0",
        b"\xe0\xa0",
        b"\xed",
        b"\xed\x9f",
        b"\xed\xa0",
        b"\xef",
        b"\xf0",
        b"\xf0\x90",
        b"\xf4",
        b"\xf4\x8f",
        b"\xf4\x90",
        b"\xf5",
        b"\xff",
    ]
)
edgy = st.lists(pieces, max_size=40).map(b"".join)
texts = st.text().map(lambda t: t.encode("utf-8", "surrogatepass"))


@given(st.one_of(st.binary(max_size=300), edgy, texts))
def test_json_string_matches_json_dumps(message: bytes) -> None:
    assert cython.json_string(message) == reference.json_string(message)


entries = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),
        st.sampled_from([514, 1514, 12201]),
        st.sampled_from([b"192.0.2.7", b"2001:db8::1", b"198.51.100.23"]),
        st.integers(0, 4102444800000),
        st.one_of(
            st.binary(max_size=80),
            edgy,
            st.sampled_from(
                [
                    b"<13>1 2024-02-29T10:11:12.345Z host app - - - msg",
                    b"<13>Mar  1 10:11:12 host app: msg",
                    b"<13>2024-02-29T10:11:12+01:00 host tag: msg",
                    b'{"version": "1.1", "timestamp": 1709201472.5, "short_message": "m"}',
                ]
            ),
        ),
    ),
    max_size=30,
)


@given(st.lists(entries, max_size=4))
def test_event_buffers_match_the_reference(batches: list[list[tuple]]) -> None:
    """The same batches in both: the same events (timestamps from each implementation's own
    parsers), groups, totals and counts."""
    buffers = cython.EventBuffers(TimestampExtractor("Europe/Paris"), cython.IdGenerator(PREFIX))
    model = reference.EventBuffers(reference_syslog.TimestampExtractor("Europe/Paris"),
                                   reference.IdGenerator(PREFIX))
    for batch in batches:
        buffers.add_batch(batch)
        model.add_batch(batch)
        assert (buffers.event_count, buffers.total_bytes, buffers.oldest_receive_ms,
                buffers.gelf_invalid_json) == (model.event_count, model.total_bytes,
                                               model.oldest_receive_ms, model.gelf_invalid_json)
    all_entries = [entry for batch in batches for entry in batch]
    assert buffers.event_count == len(all_entries)
    assert buffers.oldest_receive_ms == min((e[3] for e in all_entries), default=0)
    total_bytes = buffers.total_bytes
    raw = [(key, bytes(memoryview(body)), ends) for key, body, ends in buffers.take()]
    assert raw == model.take()
    taken = [(key, events_of(body, memoryview(ends).cast("q"))) for key, body, ends in raw]
    assert sum(len(e) for _, events in taken for e in events) == total_bytes
    assert [key for key, _ in taken] == list(dict.fromkeys(e[:3] for e in all_entries))
    for _, events in taken:
        for event in events:
            assert list(json.loads(event)) == ["id", "timestamp", "message"]
    assert (buffers.event_count, buffers.total_bytes, buffers.take()) == (0, 0, [])
