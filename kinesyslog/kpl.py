"""The Kinesis Producer Library's aggregated record format, without I/O.

Many small user records travel in one Kinesis record, which KCL consumers and the AWS
de-aggregation libraries split again (format:
https://github.com/awslabs/amazon-kinesis-producer/blob/master/aggregation-format.md)::

    F3 89 9A C2  |  protobuf AggregatedRecord  |  MD5 of the protobuf bytes (16)

with, in proto2::

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;  // Tag {key = 1; value = 2;}, unused
    }

The protobuf is written by hand, in field-number order (every key of the table, then every
record), which is what the protobuf libraries' serializers give. We never write explicit hash
keys or tags; ``deaggregate`` reads them (and skips any field it does not know).

Every Kinesis record that ``Aggregator`` makes is aggregated, even one holding a single user
record (the KPL sends those as plain records). An aggregated record of one is valid for every
de-aggregator, costs about 30 bytes and the partition key once more, and leaves no ambiguity:
a plain record whose data began with the magic number and ended in the right MD5 would be
split by consumers.

The Kinesis record's partition key is its first user record's, so it lands on that record's
shard. The KCL drops an aggregated record whole when one of its user records hashes outside
the shard it was read from: on a stream of several shards, a caller must only put together
user records that land on the same shard, e.g. one ``Aggregator`` per partition key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kinesyslog.constants import KINESIS_MAX_PARTITION_KEY_CHARS as MAX_PARTITION_KEY_CHARS
from kinesyslog.constants import KINESIS_MAX_RECORD_BYTES

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_SIZE = 16  # MD5

# Protobuf tags: (field number << 3) | wire type.
_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LENGTH_DELIMITED = 2
_WIRE_FIXED32 = 5
_TAG_PARTITION_KEY_TABLE = b"\x0a"  # AggregatedRecord.partition_key_table: 1, length-delimited
_TAG_RECORDS = b"\x1a"  # AggregatedRecord.records: 3, length-delimited
_TAG_PARTITION_KEY_INDEX = b"\x08"  # Record.partition_key_index: 1, varint
_TAG_DATA = b"\x1a"  # Record.data: 3, length-delimited
_MAX_VARINT_BYTES = 10  # a uint64
_UINT64_MAX = (1 << 64) - 1

_ENCODED_KEYS_KEPT = 4096  # partition keys checked and encoded, kept for the next records
# What an aggregated record costs beyond its protobuf message.
_FIXED_OVERHEAD = len(MAGIC) + DIGEST_SIZE


@dataclass(frozen=True)
class KinesisRecord:
    """One PutRecords entry: ``user_records`` user records aggregated in ``data``."""

    partition_key: str
    data: bytes
    user_records: int


_ONE_BYTE_VARINTS = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Aggregator:
    """Packs user records, in order, into aggregated Kinesis records of at most ``max_bytes``
    (data plus partition key). Not thread-safe."""

    def __init__(self, max_bytes: int = KINESIS_MAX_RECORD_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self._encoded: dict[str, bytes] = {}  # checked partition keys, UTF-8
        self._reset()

    def _reset(self) -> None:
        self._partition_key = ""
        self._keys: dict[str, int] = {}
        self._index_fields: list[bytes] = []  # Record.partition_key_index of each key
        self._key_fields: list[bytes] = []
        self._record_fields: list[bytes] = []
        self._user_records = 0
        # len(data) + len(partition key) of the record flush() would return, kept exact as
        # records are added: fixed overhead + first key + protobuf so far.
        self._size = 0

    @property
    def pending_records(self) -> int:
        """User records added and not yet returned."""
        return self._user_records

    @property
    def pending_bytes(self) -> int:
        """Size (data plus partition key) of the record that ``flush()`` would return now."""
        return self._size

    def add(self, partition_key: str, data: bytes) -> list[KinesisRecord]:
        """Add a user record; return the aggregated record it closed, if it did not fit in
        the open one (the user record then starts the next). A user record that cannot fit
        even alone raises ValueError and leaves the aggregator as it was."""
        key = self._encode(partition_key)
        data_header = _TAG_DATA + _varint(len(data))
        full: list[KinesisRecord] = []
        grown = self._grown_size(partition_key, key, data_header, len(data))
        if self._user_records and grown <= self.max_bytes:
            self._size = grown
        else:
            alone = self._alone_size(key, data_header, len(data))
            if alone > self.max_bytes:
                raise ValueError(
                    f"user record of {len(data)} bytes with a {len(key)}-byte partition key "
                    f"makes a Kinesis record of {alone} bytes, over the limit of "
                    f"{self.max_bytes}"
                )
            full = self.flush()
            self._partition_key = partition_key
            self._size = alone
        index = self._keys.get(partition_key)
        if index is None:
            index = len(self._keys)
            self._keys[partition_key] = index
            self._index_fields.append(_TAG_PARTITION_KEY_INDEX + _varint(index))
            self._key_fields.append(_TAG_PARTITION_KEY_TABLE + _varint(len(key)) + key)
        index_field = self._index_fields[index]
        inner = len(index_field) + len(data_header) + len(data)
        self._record_fields.append(_TAG_RECORDS + _varint(inner) + index_field + data_header)
        self._record_fields.append(bytes(data))
        self._user_records += 1
        return full

    @property
    def open_key(self) -> str:
        """The partition key of the open aggregated record ("" when there is none)."""
        return self._partition_key if self._user_records else ""

    def add_all(self, partition_key: str, datas: Iterable[bytes],
                new_key: Callable[[], str] | None = None) -> list[KinesisRecord]:
        """``add`` of each user record in turn, under one partition key: the aggregated
        records they closed. The same result, at a fraction of the cost per user record.
        With ``new_key``, each aggregated record after the open one gets a key of its own
        (all its user records under it)."""
        full: list[KinesisRecord] = []
        fields = self._record_fields
        max_bytes = self.max_bytes
        for data in datas:
            index = self._keys.get(partition_key) if self._user_records else None
            if index is not None:  # the common case, inline: the key is in the open record
                size = len(data)
                data_header = _TAG_DATA + _varint(size)
                index_field = self._index_fields[index]
                inner = len(index_field) + len(data_header) + size
                header = _TAG_RECORDS + _varint(inner)
                grown = self._size + len(header) + inner
                if grown <= max_bytes:
                    self._size = grown
                    fields.append(header + index_field + data_header)
                    fields.append(data)
                    self._user_records += 1
                    continue
            if new_key is not None and self._user_records:  # it does not fit: a new record
                full += self.flush()
                partition_key = new_key()
            full += self.add(partition_key, data)
            fields = self._record_fields  # a new list once a record was closed
        return full

    def _encode(self, partition_key: str) -> bytes:
        key = self._encoded.get(partition_key)
        if key is None:
            if not 1 <= len(partition_key) <= MAX_PARTITION_KEY_CHARS:
                raise ValueError(
                    f"partition key of {len(partition_key)} characters: Kinesis takes 1 to "
                    f"{MAX_PARTITION_KEY_CHARS}"
                )
            if len(self._encoded) >= _ENCODED_KEYS_KEPT:
                self._encoded.clear()
            key = self._encoded[partition_key] = partition_key.encode()
        return key

    def _grown_size(self, partition_key: str, key: bytes, data_header: bytes,
                    data_size: int) -> int:
        """The open record's size once this user record is in it."""
        index = self._keys.get(partition_key)
        grown = self._size
        if index is None:
            grown += 1 + len(_varint(len(key))) + len(key)  # a new entry of the key table
            index = len(self._keys)
        inner = len(_varint(index)) + 1 + len(data_header) + data_size
        return grown + 1 + len(_varint(inner)) + inner

    @staticmethod
    def _alone_size(key: bytes, data_header: bytes, data_size: int) -> int:
        """The size of a record holding this user record alone."""
        inner = 2 + len(data_header) + data_size  # index 0: its tag and a one-byte varint
        return (_FIXED_OVERHEAD + len(key) + 1 + len(_varint(len(key))) + len(key)
                + 1 + len(_varint(inner)) + inner)

    def flush(self) -> list[KinesisRecord]:
        """The open aggregated record, if it holds any user record; the aggregator is then
        empty."""
        if not self._user_records:
            return []
        message = b"".join(self._key_fields + self._record_fields)
        record = KinesisRecord(
            self._partition_key,
            MAGIC + message + hashlib.md5(message, usedforsecurity=False).digest(),
            self._user_records,
        )
        self._reset()
        return [record]


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise ValueError("truncated varint in aggregated record")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if value > _UINT64_MAX:
                raise ValueError("varint over 64 bits in aggregated record")
            return value, pos
    raise ValueError("varint over 10 bytes in aggregated record")


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """The fields of the message in ``buf[pos:end]``, as (field number, wire type, value or
    start of content, end of content); varints have their value and an end of -1."""
    fields: list[tuple[int, int, int, int]] = []
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0 in aggregated record")
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos, end)
            fields.append((number, wire, value, -1))
            continue
        if wire == _WIRE_LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos, end)
        elif wire == _WIRE_FIXED64:
            length = 8
        elif wire == _WIRE_FIXED32:
            length = 4
        else:  # groups (3, 4): no message of the format has any
            raise ValueError(f"wire type {wire} of field {number} in aggregated record")
        if length > end - pos:
            raise ValueError(f"field {number} runs past the end of its message")
        fields.append((number, wire, pos, pos + length))
        pos += length
    return fields


def _expect(number: int, wire: int, expected: int) -> None:
    if wire != expected:
        raise ValueError(f"field {number} has wire type {wire}, not {expected}")


def deaggregate(partition_key: str, data: bytes) -> list[tuple[str, bytes]]:
    """The user records (partition key, data) of one Kinesis record, in order.

    A record without the magic number is a plain one: itself, under ``partition_key``. One
    with it must be well formed (ValueError otherwise); the KCL instead passes records with a
    wrong MD5 or a broken protobuf on as plain records.
    """
    if not data.startswith(MAGIC):
        return [(partition_key, data)]
    if len(data) < _FIXED_OVERHEAD:
        raise ValueError(
            f"aggregated record of {len(data)} bytes, shorter than its magic number and MD5"
        )
    start, end = len(MAGIC), len(data) - DIGEST_SIZE
    digest = hashlib.md5(data[start:end], usedforsecurity=False).digest()
    if digest != data[end:]:
        raise ValueError("aggregated record with a wrong MD5")
    keys: list[str] = []
    hash_keys = 0
    records: list[tuple[int, int | None, int, int]] = []
    for number, wire, value, stop in _fields(data, start, end):
        if number == 1:
            _expect(number, wire, _WIRE_LENGTH_DELIMITED)
            try:
                keys.append(data[value:stop].decode())
            except UnicodeDecodeError as e:
                raise ValueError(f"partition key that is not UTF-8: {e}") from None
        elif number == 2:
            _expect(number, wire, _WIRE_LENGTH_DELIMITED)
            hash_keys += 1
        elif number == 3:
            _expect(number, wire, _WIRE_LENGTH_DELIMITED)
            records.append(_record(data, value, stop))
    user_records: list[tuple[str, bytes]] = []
    # Records may come before the tables they index: resolve once the whole message is read.
    for key_index, hash_key_index, data_start, data_end in records:
        if key_index >= len(keys):
            raise ValueError(f"partition key index {key_index} of a table of {len(keys)}")
        if hash_key_index is not None and hash_key_index >= hash_keys:
            raise ValueError(
                f"explicit hash key index {hash_key_index} of a table of {hash_keys}"
            )
        user_records.append((keys[key_index], data[data_start:data_end]))
    return user_records


def _record(buf: bytes, pos: int, end: int) -> tuple[int, int | None, int, int]:
    """A Record message: partition key index, explicit hash key index, data's start and end."""
    key_index: int | None = None
    hash_key_index: int | None = None
    content: tuple[int, int] | None = None
    # A field repeated where one is expected: the last one counts, as in protobuf.
    for number, wire, value, stop in _fields(buf, pos, end):
        if number == 1:
            _expect(number, wire, _WIRE_VARINT)
            key_index = value
        elif number == 2:
            _expect(number, wire, _WIRE_VARINT)
            hash_key_index = value
        elif number == 3:
            _expect(number, wire, _WIRE_LENGTH_DELIMITED)
            content = (value, stop)
        elif number == 4:
            _expect(number, wire, _WIRE_LENGTH_DELIMITED)
    if key_index is None:
        raise ValueError("user record without its partition key index")
    if content is None:
        raise ValueError("user record without data")
    return key_index, hash_key_index, content[0], content[1]
