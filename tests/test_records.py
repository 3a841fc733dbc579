from __future__ import annotations

import gzip
import json
import logging
import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinesyslog import records
from kinesyslog.constants import FIREHOSE_MAX_RECORD_BYTES
from kinesyslog.records import build_records, encode_record_header, events_of, joined

OWNER = "123456789012"
GROUP = "/kinesyslog/syslog/514"
STREAM = "192.0.2.7"


def event(index: int, message: str) -> bytes:
    return json.dumps({"id": f"{index:056d}", "timestamp": 1519247270240 + index,
                       "message": message}).encode()


def incompressible(rng: random.Random, size: int) -> str:
    """Random bytes decoded as the listener does: invalid UTF-8 becomes \\xNN escapes."""
    return rng.randbytes(size).decode("utf-8", "backslashreplace")


def build(events: list[bytes]) -> list[bytes]:
    """build_records() of a list of encoded events."""
    return build_records(OWNER, GROUP, STREAM, *joined(events))


def documents(built: list[bytes]) -> list[dict]:
    return [json.loads(gzip.decompress(record)) for record in built]


def test_header_exact_bytes() -> None:
    assert encode_record_header(OWNER, GROUP, STREAM) == (
        b'{"owner": "123456789012", "logGroup": "/kinesyslog/syslog/514", '
        b'"logStream": "192.0.2.7", "subscriptionFilters": ["/kinesyslog/syslog/514"], '
        b'"messageType": "DATA_MESSAGE", "logEvents": [')


def test_header_escapes_like_json_dumps() -> None:
    header = encode_record_header('o"1', "/g/\u00fc\\", "2001:db8::1")
    assert header == (
        b'{"owner": "o\\"1", "logGroup": "/g/\\u00fc\\\\", "logStream": "2001:db8::1", '
        b'"subscriptionFilters": ["/g/\\u00fc\\\\"], "messageType": "DATA_MESSAGE", '
        b'"logEvents": [')


def test_one_record_exact_bytes_and_json_dumps_equivalence() -> None:
    events = [event(1, "<13>1 - host app - - - one"), event(2, 'two "quoted" \u00e9')]
    built = build(events)
    assert len(built) == 1
    assert built[0][:3] == b"\x1f\x8b\x08"
    text = gzip.decompress(built[0])
    assert text == (
        b'{"owner": "123456789012", "logGroup": "/kinesyslog/syslog/514", '
        b'"logStream": "192.0.2.7", "subscriptionFilters": ["/kinesyslog/syslog/514"], '
        b'"messageType": "DATA_MESSAGE", "logEvents": ['
        b'{"id": "00000000000000000000000000000000000000000000000000000001", '
        b'"timestamp": 1519247270241, "message": "<13>1 - host app - - - one"}, '
        b'{"id": "00000000000000000000000000000000000000000000000000000002", '
        b'"timestamp": 1519247270242, "message": "two \\"quoted\\" \\u00e9"}]}')
    expected = {"owner": OWNER, "logGroup": GROUP, "logStream": STREAM,
                "subscriptionFilters": [GROUP], "messageType": "DATA_MESSAGE",
                "logEvents": [json.loads(e) for e in events]}
    assert json.loads(text) == expected
    assert text == json.dumps(expected).encode()


def test_no_events_no_record() -> None:
    assert build_records(OWNER, GROUP, STREAM, b"", []) == []


def test_incompressible_events_are_split_in_order() -> None:
    rng = random.Random(5424)
    events = [event(i, incompressible(rng, rng.randrange(2_000, 20_000))) for i in range(400)]
    whole = records._compress(encode_record_header(OWNER, GROUP, STREAM), joined(events)[0])
    assert len(whole) > 2 * FIREHOSE_MAX_RECORD_BYTES  # the test really needs splitting

    built = build(events)

    assert len(built) == -(-len(whole) // FIREHOSE_MAX_RECORD_BYTES)
    assert all(len(record) <= FIREHOSE_MAX_RECORD_BYTES for record in built)
    docs = documents(built)
    assert [e for doc in docs for e in doc["logEvents"]] == [json.loads(e) for e in events]
    assert all(doc["logGroup"] == GROUP and doc["logStream"] == STREAM for doc in docs)
    # Balanced by uncompressed size: no part is more than twice another.
    sizes = [len(gzip.decompress(record)) for record in built]
    assert max(sizes) < 2 * min(sizes)


def split(events: list[bytes], parts: int) -> list[list[bytes]]:
    """_balanced_split() of a whole list of events, as lists of events."""
    ends = joined(events)[1]
    cuts = records._balanced_split(ends, 0, len(events), parts)
    return [events[start:end] for start, end in zip(cuts, cuts[1:])]


def test_balanced_split_cuts_nearest_to_equal_sizes() -> None:
    equal = [b"a" * 8] * 4  # 10 bytes each with the separator
    assert split(equal, 2) == [equal[:2], equal[2:]]
    assert split(equal, 4) == [[e] for e in equal]
    skewed = [b"x" * 98, b"y" * 8, b"z" * 8, b"w" * 98]
    assert split(skewed, 2) == [skewed[:2], skewed[2:]]
    # One huge event first: every part still gets one event.
    huge_first = [b"h" * 298, b"s" * 8, b"t" * 8]
    assert split(huge_first, 3) == [[huge_first[0]], [huge_first[1]], [huge_first[2]]]


def test_a_split_of_a_later_run_counts_from_its_first_event() -> None:
    events = [b"q" * 500, b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8]
    ends = joined(events)[1]
    assert records._balanced_split(ends, 1, 5, 2) == [1, 3, 5]


def test_joined_and_events_of_are_inverse() -> None:
    events = [b"{}", b'{"a": 1}', b"", b"x"]
    body, ends = joined(events)
    assert body == b'{}, {"a": 1}, , x'
    assert ends == [2, 12, 14, 17]
    assert events_of(body, ends) == events
    assert joined([]) == (b"", [])


def test_single_huge_event_is_truncated(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(3164)
    message = incompressible(rng, 1_500_000)
    before = records.truncated_events
    with caplog.at_level(logging.WARNING, logger="kinesyslog.records"):
        built = build([event(7, message)])
    assert records.truncated_events == before + 1
    assert len(built) == 1
    assert 0.9 * FIREHOSE_MAX_RECORD_BYTES < len(built[0]) <= FIREHOSE_MAX_RECORD_BYTES
    (kept,) = documents(built)[0]["logEvents"]
    assert kept["id"] == f"{7:056d}"
    assert kept["timestamp"] == 1519247270247
    assert len(kept["message"]) < len(message)
    assert message.startswith(kept["message"])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "does not fit" in caplog.records[0].getMessage()


def test_huge_event_between_small_ones_keeps_order() -> None:
    rng = random.Random(6587)
    events = [event(0, "first"), event(1, incompressible(rng, 1_500_000)), event(2, "last")]
    before = records.truncated_events
    built = build(events)
    assert records.truncated_events == before + 1
    assert all(len(record) <= FIREHOSE_MAX_RECORD_BYTES for record in built)
    kept = [e for doc in documents(built) for e in doc["logEvents"]]
    assert [e["id"] for e in kept] == [f"{i:056d}" for i in range(3)]
    assert kept[0]["message"] == "first"
    assert kept[2]["message"] == "last"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=3000), min_size=1, max_size=40),
       st.integers(min_value=700, max_value=3000))
def test_split_property_with_a_small_limit(messages: list[str], limit: int) -> None:
    events = [event(i, m) for i, m in enumerate(messages)]
    with mock.patch.object(records, "FIREHOSE_MAX_RECORD_BYTES", limit):
        built = build(events)
    assert all(len(record) <= limit for record in built)
    kept = [e for doc in documents(built) for e in doc["logEvents"]]
    assert [e["id"] for e in kept] == [f"{i:056d}" for i in range(len(messages))]
    for original, got in zip(messages, kept):
        assert original.startswith(got["message"])  # unchanged, or cut short to fit
