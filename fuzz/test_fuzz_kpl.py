"""Fuzz KPL aggregation (kinesyslog/kpl.py): any user records aggregate into Kinesis records
within the limit, each as full as the limit allows, that de-aggregate to the same records in
order, with aws-kinesis-agg and with kpl.deaggregate."""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kinesyslog.kpl import KINESIS_MAX_RECORD_BYTES, MAGIC, Aggregator, KinesisRecord, deaggregate
from tests.test_kpl import aws_deaggregate


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


keys = st.one_of(
    st.text(min_size=1, max_size=256),
    st.sampled_from(["192.0.2.7", "2001:db8::1", "/kinesyslog/syslog/514", "k"]),
)
# Hypothesis draws at most a few kilobytes per example: large data comes from a seed.
data = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=20).map(lambda tail: MAGIC + tail),
    st.builds(_blob, st.integers(0, 2000), st.integers(0, 2**32 - 1)),
    st.builds(_blob, st.integers(0, 200 * 1024), st.integers(0, 2**32 - 1)),
)
large = st.builds(_blob, st.integers(150_000, 200 * 1024), st.integers(0, 2**32 - 1))
limits = st.one_of(
    st.just(KINESIS_MAX_RECORD_BYTES),
    st.integers(30, 3000),  # around the size of one user record
    st.integers(3000, 300_000),
)


def size(record: KinesisRecord) -> int:
    return len(record.data) + len(record.partition_key.encode())


def alone(user_records: list[tuple[str, bytes]]) -> KinesisRecord:
    """The aggregated record of ``user_records``, with no limit."""
    aggregator = Aggregator(2**40)
    for key, value in user_records:
        assert aggregator.add(key, value) == []
    [record] = aggregator.flush()
    return record


@given(st.lists(st.tuples(keys, data), max_size=25), limits)
def test_aggregated_records_deaggregate_to_the_user_records(
    user_records: list[tuple[str, bytes]], max_bytes: int
) -> None:
    check(user_records, max_bytes)


@given(st.lists(st.tuples(keys, st.binary(max_size=100)), min_size=10, max_size=60),
       st.integers(30, 1000))
def test_many_small_user_records_under_small_limits(
    user_records: list[tuple[str, bytes]], max_bytes: int
) -> None:
    check(user_records, max_bytes)


# Several megabytes an example: a tenth of the examples.
@settings(max_examples=max(1, settings().max_examples // 10))
@given(st.lists(st.tuples(keys, large), min_size=7, max_size=12))  # 7 * 150,000 > 1 MiB
def test_user_records_over_the_kinesis_limit(user_records: list[tuple[str, bytes]]) -> None:
    check(user_records, KINESIS_MAX_RECORD_BYTES)


def check(user_records: list[tuple[str, bytes]], max_bytes: int) -> None:
    aggregator = Aggregator(max_bytes)
    records: list[KinesisRecord] = []
    accepted: list[tuple[str, bytes]] = []
    for key, value in user_records:
        pending = (aggregator.pending_records, aggregator.pending_bytes)
        try:
            full = aggregator.add(key, value)
        except ValueError:
            # Too large even alone, and the aggregator is as it was.
            assert size(alone([(key, value)])) > max_bytes
            assert (aggregator.pending_records, aggregator.pending_bytes) == pending
            event("a user record too large alone")
            continue
        # The size was accounted exactly.
        assert [(r.user_records, size(r)) for r in full] == ([pending] if full else [])
        records += full
        accepted.append((key, value))
    pending = (aggregator.pending_records, aggregator.pending_bytes)
    last = aggregator.flush()
    assert [(r.user_records, size(r)) for r in last] == ([pending] if last else [])
    records += last

    assert all(size(record) <= max_bytes for record in records)
    event(f"{len(records) if len(records) < 3 else '3 or more'} Kinesis records under "
          f"{'the Kinesis' if max_bytes == KINESIS_MAX_RECORD_BYTES else 'a smaller'} limit")
    assert sum(record.user_records for record in records) == len(accepted)
    ours: list[tuple[str, bytes]] = []
    theirs: list[tuple[str, bytes]] = []
    start = 0
    for record in records:
        contents = accepted[start:start + record.user_records]
        start += record.user_records
        assert record.partition_key == contents[0][0]
        ours += deaggregate("ignored", record.data)
        theirs += aws_deaggregate(record)
        # Full: the next user record would not have fitted.
        if start < len(accepted):
            assert size(alone([*contents, accepted[start]])) > max_bytes
    assert ours == accepted
    assert theirs == accepted
