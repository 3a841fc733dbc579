"""The KPL aggregated record format (kinesyslog/kpl.py): exact bytes, the size limit, and
de-aggregation checked against the AWS library aws-kinesis-agg (tests only)."""

from __future__ import annotations

import hashlib

import pytest

from kinesyslog.kpl import (
    KINESIS_MAX_RECORD_BYTES,
    MAGIC,
    Aggregator,
    KinesisRecord,
    deaggregate,
)
from tests import kinesis_reader
from tests.kinesis_reader import aws_aggregator, aws_messages


def aws_deaggregate(record: KinesisRecord) -> list[tuple[str, bytes]]:
    """The user records of ``record`` as aws-kinesis-agg finds them; each must say it was
    aggregated."""
    user_records = kinesis_reader.aws_deaggregate(record.partition_key, record.data)
    assert [aggregated for _, _, aggregated in user_records] == [True] * len(user_records)
    assert len(user_records) == record.user_records
    return [(key, data) for key, data, _ in user_records]


def aggregate(user_records: list[tuple[str, bytes]], max_bytes: int = KINESIS_MAX_RECORD_BYTES
              ) -> list[KinesisRecord]:
    aggregator = Aggregator(max_bytes)
    out = [record for key, data in user_records for record in aggregator.add(key, data)]
    return out + aggregator.flush()


def framed(message: bytes) -> bytes:
    """An aggregated record around a protobuf message: magic number, message, MD5."""
    return MAGIC + message + hashlib.md5(message).digest()


def size(record: KinesisRecord) -> int:
    return len(record.data) + len(record.partition_key.encode())


# Exact bytes


def test_one_user_record() -> None:
    message = bytes.fromhex(
        "0a 01 6b"  # partition_key_table (1, length-delimited): 1 byte, "k"
        "1a 06"  # records (3, length-delimited): 6 bytes
        "   08 00"  # partition_key_index (1, varint): 0
        "   1a 02 68 69"  # data (3, length-delimited): 2 bytes, "hi"
    )
    digest = bytes.fromhex("19875fa509cfd364dbce25b34fe35742")
    assert hashlib.md5(message).digest() == digest
    expected = bytes.fromhex("f3899ac2") + message + digest
    assert aggregate([("k", b"hi")]) == [KinesisRecord("k", expected, 1)]
    assert deaggregate("other", expected) == [("k", b"hi")]
    assert aws_deaggregate(KinesisRecord("k", expected, 1)) == [("k", b"hi")]


def test_two_user_records_share_their_key() -> None:
    message = bytes.fromhex(
        "0a 01 6b"  # partition_key_table: "k", once
        "1a 05 08 00 1a 01 61"  # records: {partition_key_index 0, data "a"}
        "1a 05 08 00 1a 01 62"  # records: {partition_key_index 0, data "b"}
    )
    digest = bytes.fromhex("694535afedcffd677967fac27895e7c5")
    assert hashlib.md5(message).digest() == digest
    expected = KinesisRecord("k", MAGIC + message + digest, 2)
    assert aggregate([("k", b"a"), ("k", b"b")]) == [expected]
    assert deaggregate("k", expected.data) == aws_deaggregate(expected) == [("k", b"a"),
                                                                            ("k", b"b")]


def test_two_keys() -> None:
    message = bytes.fromhex(
        "0a 02 6b 31"  # partition_key_table[0]: "k1"
        "0a 02 6b 32"  # partition_key_table[1]: "k2"
        "1a 05 08 00 1a 01 78"  # records: {partition_key_index 0, data "x"}
        "1a 05 08 01 1a 01 79"  # records: {partition_key_index 1, data "y"}
    )
    digest = bytes.fromhex("7b7e929ea818e98744afb6b47fa6813e")
    assert hashlib.md5(message).digest() == digest
    # The Kinesis record goes where its first user record would.
    expected = KinesisRecord("k1", MAGIC + message + digest, 2)
    assert aggregate([("k1", b"x"), ("k2", b"y")]) == [expected]
    assert deaggregate("k1", expected.data) == aws_deaggregate(expected) == [("k1", b"x"),
                                                                             ("k2", b"y")]


def test_the_same_bytes_as_aws_kinesis_agg_writes() -> None:
    user_records = [("k", b"hi"), ("\u00e9t\u00e9 \U0001f600", b"\x00" * 300), ("k", b""),
                    ("x" * 256, b"z" * 20000), ("\u00e9t\u00e9 \U0001f600", MAGIC)]
    theirs = aws_aggregator.RecordAggregator()
    for key, data in user_records:
        assert theirs.add_user_record(key, data) is None
    key, _, data = theirs.clear_and_get().get_contents()
    assert aggregate(user_records) == [KinesisRecord(key, data, len(user_records))]


# The size limit


def test_a_user_record_that_fits_by_zero_bytes_joins_the_record() -> None:
    # 4 magic + 16 MD5 + 1 partition key + 3 key table entry + 16 for {index 0, 10 bytes}
    first = ("k", b"0" * 10)
    assert Aggregator(100).add(*first) == []
    # + 60 for {index 0, 54 bytes}: 100 exactly
    aggregator = Aggregator(100)
    aggregator.add(*first)
    assert aggregator.pending_bytes == 40
    assert aggregator.add("k", b"1" * 54) == []
    assert aggregator.pending_bytes == 100
    [record] = aggregator.flush()
    assert (size(record), record.user_records) == (100, 2)
    assert aws_deaggregate(record) == [first, ("k", b"1" * 54)]


def test_one_byte_over_starts_a_new_record() -> None:
    first = ("k", b"0" * 10)
    aggregator = Aggregator(100)
    aggregator.add(*first)
    [full] = aggregator.add("k", b"1" * 55)
    assert (full.partition_key, full.user_records, size(full)) == ("k", 1, 40)
    [rest] = aggregator.flush()
    assert (rest.user_records, size(rest)) == (1, 30 + 55)
    assert aws_deaggregate(full) + aws_deaggregate(rest) == [first, ("k", b"1" * 55)]
    # A new key also costs its entry in the table: 3 + 60 would be 103.
    aggregator = Aggregator(100)
    aggregator.add(*first)
    [full] = aggregator.add("j", b"1" * 54)
    [rest] = aggregator.flush()
    assert (full.partition_key, rest.partition_key) == ("k", "j")


def test_the_kinesis_limit_by_default() -> None:
    # 4 + 16 + 1 key + 3 table entry + (1 + 3 + (2 + 1 + 3 + n)) = n + 34
    largest = KINESIS_MAX_RECORD_BYTES - 34
    [record] = aggregate([("k", bytes(largest))])
    assert size(record) == KINESIS_MAX_RECORD_BYTES
    assert aws_deaggregate(record) == [("k", bytes(largest))]
    with pytest.raises(ValueError, match=f"{KINESIS_MAX_RECORD_BYTES + 1} bytes.* "
                                         f"{KINESIS_MAX_RECORD_BYTES}"):
        Aggregator().add("k", bytes(largest + 1))


def test_one_user_record_too_large_alone() -> None:
    aggregator = Aggregator(100)
    assert aggregator.add("k", b"b" * 70) == []  # alone: 30 + 70
    with pytest.raises(ValueError, match=r"user record of 71 bytes .* 101 bytes, over the limit "
                                         r"of 100"):
        aggregator.add("k", b"c" * 71)
    # Nothing was lost nor changed.
    assert (aggregator.pending_records, aggregator.pending_bytes) == (1, 100)
    [full] = aggregator.add("j", b"d")
    assert aws_deaggregate(full) == [("k", b"b" * 70)]
    assert [aws_deaggregate(rest) for rest in aggregator.flush()] == [[("j", b"d")]]


@pytest.mark.parametrize("key", ["k", "\u00e9" * 63, "\u00e9" * 64, "\U0001f600" * 256])
def test_the_size_accounting_is_exact_across_varint_lengths(key: str) -> None:
    lengths = [0, 1, 117, 118, 119, 120, 121, 122, 126, 127, 128, 129, 16250, 16376, 16377,
               16378, 16383, 16384, 16385]
    # The key at index 0, 127 (a 1-byte varint) or 128 (2 bytes), new or already in the table
    for length in lengths:
        for index in (0, 127, 128):
            for again in (False, True):
                aggregator = Aggregator(10 * 1024 * 1024)
                for other in range(index):
                    aggregator.add(f"o{other}", b"")
                if again:
                    aggregator.add(key, b"")
                aggregator.add(key, bytes(length))
                expected = aggregator.pending_bytes
                [record] = aggregator.flush()
                assert size(record) == expected, (length, index, again)
                assert deaggregate("x", record.data)[-1] == (key, bytes(length))


def test_partition_keys_are_1_to_256_characters() -> None:
    aggregator = Aggregator()
    for key in ("", "x" * 257):
        with pytest.raises(ValueError, match="partition key"):
            aggregator.add(key, b"")
    aggregator.add("\U0001f600" * 256, b"")
    assert aggregator.pending_records == 1


def test_flush_of_nothing() -> None:
    aggregator = Aggregator()
    assert aggregator.flush() == []
    aggregator.add("k", b"")
    assert len(aggregator.flush()) == 1
    assert (aggregator.flush(), aggregator.pending_records, aggregator.pending_bytes) == ([], 0, 0)


# De-aggregation


def test_a_plain_record_is_itself() -> None:
    for data in (b"", b"{}", MAGIC[:3], b"\x1f\x8b\x08\x00"):
        assert deaggregate("pk", data) == [("pk", data)]


def test_explicit_hash_keys_tags_and_unknown_fields_are_skipped() -> None:
    message = aws_messages.AggregatedRecord()
    message.partition_key_table.extend(["a", "b"])
    message.explicit_hash_key_table.extend(["0", "340282366920938463463374607431768211455"])
    first = message.records.add(partition_key_index=1, explicit_hash_key_index=1, data=b"one")
    first.tags.add(key="t", value="v")
    first.tags.add(key="u")
    message.records.add(partition_key_index=0, data=b"two")
    message.records.add(partition_key_index=1, explicit_hash_key_index=0, data=b"")
    body = message.SerializeToString()
    expected = [("b", b"one"), ("a", b"two"), ("b", b"")]
    assert deaggregate("x", framed(body)) == expected
    # Fields of later versions, of every wire type: varint, fixed64, length-delimited, fixed32.
    unknown = bytes.fromhex("78 96 01  81 01 0102030405060708  8a 01 02 6869  95 01 01020304")
    assert deaggregate("x", framed(body + unknown)) == expected
    # ... and in a Record, whose fields may come in any order (protobuf allows it).
    record = bytes.fromhex("1a 03 6f6e65  78 00  08 01  95 01 01020304")
    assert deaggregate("x", framed(bytes.fromhex("1a 0f") + record + bytes.fromhex("0a 01 61"
                                                                                   "0a 01 62"))
                       ) == [("b", b"one")]


def test_what_aws_kinesis_agg_writes_with_explicit_hash_keys() -> None:
    theirs = aws_aggregator.RecordAggregator()
    user_records = [("k", b"1"), ("j", b"2"), ("k", b"3")]
    for i, (key, data) in enumerate(user_records):
        theirs.add_user_record(key, data, explicit_hash_key=str(i % 2))
    _, _, data = theirs.clear_and_get().get_contents()
    assert deaggregate("k", data) == user_records


def test_an_aggregated_record_of_nothing() -> None:
    assert deaggregate("k", framed(b"")) == []


@pytest.mark.parametrize(("data", "error"), [
    (MAGIC, "shorter than its magic number and MD5"),
    (MAGIC + bytes(15), "shorter than its magic number and MD5"),
    (framed(bytes.fromhex("0a 01 6b 1a 06 08 00 1a 02 68 69"))[:-1] + b"\x00", "wrong MD5"),
    (MAGIC + bytes.fromhex("0a 01 6b 1a 06 08 00 1a 02 68 68")
     + hashlib.md5(bytes.fromhex("0a 01 6b 1a 06 08 00 1a 02 68 69")).digest(), "wrong MD5"),
    (framed(bytes.fromhex("0a 01 6b 1a 06 08 00 1a 02 68")), "runs past the end"),
    (framed(bytes.fromhex("0a 01 6b 1a 80")), "truncated varint"),
    (framed(bytes.fromhex("0a 01 6b 1a 03 08 80 80")), "truncated varint"),
    (framed(bytes.fromhex("0a 01 6b 1a 0d 08 ffffffffffffffffff01 1a 00")),
     "partition key index 18446744073709551615 of a table of 1"),
    (framed(bytes.fromhex("0a 01 6b 1a 0d 08 ffffffffffffffffff02 1a 00")), "over 64 bits"),
    (framed(bytes.fromhex("0a 01 6b 1a 0c 08 ffffffffffffffffff80 01")), "over 10 bytes"),
    (framed(bytes.fromhex("0a 01 6b 1a 04 08 01 1a 00")), "partition key index 1 of a table of 1"),
    (framed(bytes.fromhex("1a 04 08 00 1a 00")), "partition key index 0 of a table of 0"),
    (framed(bytes.fromhex("0a 01 6b 1a 06 08 00 10 00 1a 00")), "explicit hash key index 0"),
    (framed(bytes.fromhex("0a 01 6b 1a 02 08 00")), "without data"),
    (framed(bytes.fromhex("0a 01 6b 1a 02 1a 00")), "without its partition key index"),
    (framed(bytes.fromhex("08 01")), "field 1 has wire type 0"),
    (framed(bytes.fromhex("0a 01 6b 1a 04 08 00 1a 00 1a 02 0a 00")), "field 1 has wire type 2"),
    (framed(bytes.fromhex("0a 01 6b 1b 1c")), "wire type 3"),
    (framed(bytes.fromhex("00 00")), "field number 0"),
    (framed(bytes.fromhex("0a 01 ff 1a 04 08 00 1a 00")), "not UTF-8"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_malformed_aggregated_records(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        deaggregate("k", data)


def test_add_all_is_add_of_each() -> None:
    sizes = [0, 1, 127, 128, 300, 16383, 16384, 200_000, 5, 700_000, 3, 150_000, 90]
    datas = [bytes([index % 256]) * size for index, size in enumerate(sizes)]
    one_by_one = Aggregator()
    expected = [r for data in datas for r in one_by_one.add("k", data)] + one_by_one.flush()
    assert len(expected) == 2
    together = Aggregator()
    assert together.add_all("k", datas[:4]) + together.add_all("k", datas[4:]) \
        + together.flush() == expected


def test_add_all_with_a_new_key_for_each_record() -> None:
    keys = iter(["k1", "k2", "k3", "k4"])
    aggregator = Aggregator(300_000)
    records = aggregator.add_all("k0", [b"x" * 100_000] * 7, new_key=lambda: next(keys))
    assert aggregator.open_key == "k3"
    records += aggregator.flush()
    assert aggregator.open_key == ""
    assert [(r.partition_key, r.user_records) for r in records] == [
        ("k0", 2), ("k1", 2), ("k2", 2), ("k3", 1)]
    for record in records:
        assert aws_deaggregate(record) == [(record.partition_key, b"x" * 100_000)] * \
            record.user_records
