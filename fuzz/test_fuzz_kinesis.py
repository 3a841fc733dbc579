"""Fuzz the Kinesis records the worker makes (kinesyslog/kinesis.py): any events, in any
format and partition-key mode, become spool files of records within Kinesis' limits that hold
every event once, in order per sender, each aggregated record under one key only."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from kinesyslog.kinesis import RecordMaker, decode_spooled
from kinesyslog.kpl import deaggregate
from kinesyslog.records import joined

GROUP = "/kinesyslog/syslog/514"
sources = st.sampled_from(["192.0.2.7", "2001:db8::1", "10.0.0.1"])
messages = st.one_of(
    st.text(max_size=200),
    st.builds(lambda ch, n: ch * n, st.characters(), st.integers(0, 300_000)),
)


@settings(deadline=None)
@given(st.lists(st.tuples(sources, st.lists(messages, min_size=1, max_size=8)), max_size=5),
       st.sampled_from(["cwl", "kpl"]), st.sampled_from(["source", "group", "random"]),
       st.booleans())
def test_every_event_once_within_the_limits(senders: list[tuple[str, list[str]]],
                                            record_format: str, key_mode: str,
                                            compress: bool) -> None:
    compress = compress and record_format == "kpl"
    batches, expected, number = [], [], 0
    for source, texts in senders:
        events = []
        for text in texts:
            events.append(json.dumps({"id": f"{number:056d}", "timestamp": number,
                                      "message": text}).encode())
            expected.append((source, f"{number:056d}", text))
            number += 1
        batches.append((GROUP, source, *joined(events)))
    made = RecordMaker("123456789012", record_format, key_mode, compress).make(batches)
    found = []
    for content in made:
        key, data = decode_spooled(content)  # checks the 1 MiB limit with the key
        if record_format == "cwl":
            document = json.loads(gzip.decompress(data))
            assert key == {"source": document["logStream"], "group": GROUP}.get(key_mode, key)
            found += [(document["logStream"], e["id"], e["message"])
                      for e in document["logEvents"]]
            continue
        user_records = deaggregate(key, data)
        assert {user_key for user_key, _ in user_records} == {key}
        for _, user_record in user_records:
            event = json.loads(gzip.decompress(user_record) if compress else user_record)
            assert key == {"source": event["logStream"], "group": GROUP}.get(key_mode, key)
            found.append((event["logStream"], event["id"], event["message"]))
    # Every event once, in order per sender; shortened messages (too large for any record)
    # stay a prefix of the original.
    assert sorted(i for _, i, _ in found) == [i for _, i, _ in expected]
    for source in {s for s, _ in senders}:
        got = [(i, m) for s, i, m in found if s == source]
        sent = [(i, m) for s, i, m in expected if s == source]
        assert [i for i, _ in got] == [i for i, _ in sent]
        for (_, got_message), (_, sent_message) in zip(got, sent):
            assert sent_message.startswith(got_message)
            assert got_message == sent_message or len(json.dumps(sent_message)) > 1_000_000
