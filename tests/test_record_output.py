"""The exact records a fixed input produces: ring → worker → spool, pinned byte for byte.

Performance work on the worker's hot path (event encoding, grouping, record packing and
compression) must not change what reaches Firehose. This test writes a fixed mix of messages
into a real ring — syslog and GELF, several ports and senders, RFC 5424 and RFC 3164
timestamps, invalid UTF-8, control characters, quotes, non-ASCII text, and one sender with
enough incompressible text that its events must be split over several records — lets a real
Worker (with a fixed event-id prefix) spool them in one flush, and compares the decompressed
records with the digest they had when it was written. The compressed bytes may change (another
compressor, another level of the same); the documents, their order and their cut into records
may not.

If a change of the output is intended, update PINNED_DIGEST and PINNED_SHAPE and say why in
the commit message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.shared import SharedState
from kinesyslog.worker import Worker

OWNER = "123456789012"
ID_PREFIX = b"0" * 20 + b"1" * 16
RECEIVE_MS = 1_700_000_000_123
# sha256 over the decompressed records in spool order, each followed by a NUL.
PINNED_DIGEST = "2ddece72d75781b7e51e379af4dac29c02b0a8c9bf0d32763fefee595b151d8f"
# (logGroup, logStream, events) of each record, in spool order.
PINNED_SHAPE = [
    ("/kinesyslog/syslog/514", "192.0.2.1", 300),
    ("/kinesyslog/syslog/514", "192.0.2.2", 200),
    ("/kinesyslog/syslog/1514", "2001:db8::7", 30),
    ("/kinesyslog/syslog/514", "198.51.100.9", 200),
    ("/kinesyslog/syslog/514", "198.51.100.9", 200),
    ("/kinesyslog/gelf/12201", "192.0.2.1", 104),
]


def syslog_messages() -> list[tuple[bytes, int, list[bytes]]]:
    """(source, port, messages) for syslog senders."""
    rfc5424 = [b"<134>1 2023-11-14T22:13:20.%03dZ web-01 nginx 100 access - GET /%d"
               % (n, n) for n in range(300)]
    rfc3164 = [b"<38>Nov 14 22:13:%02d host sshd[42]: session %d opened" % (n % 60, n)
               for n in range(200)]
    odd = [b'quotes " and \\ backslash', b"tab\there\nnew line\rcr", b"\x00nul \x01\x1f\x7f",
           "grüße, 日本語, 😀".encode(), b"invalid \xff\xfe utf-8 \xc3", b"\xed\xa0\x80 surrogate",
           b"", b" ", b"<13>1 - - - - - -", b"<13>1 2023-02-30T25:61:00Z bad date"]
    rng = random.Random(20261206)
    alphabet = "abcdefghijklmnopqrstuvwxyzäöü日本語 0123456789{}[]\"\\\t"
    big = ["".join(rng.choice(alphabet) for _ in range(6000)).encode() for _ in range(400)]
    return [(b"192.0.2.1", 514, rfc5424), (b"192.0.2.2", 514, rfc3164),
            (b"2001:db8::7", 1514, odd * 3), (b"198.51.100.9", 514, big)]


def gelf_messages() -> list[tuple[bytes, int, list[bytes]]]:
    documents = [json.dumps({"version": "1.1", "host": "app", "short_message": f"m{n} ü",
                             "timestamp": 1700000000 + n / 1000, "_n": n}).encode()
                 for n in range(100)]
    documents += [b'{"short_message": "no timestamp"}', b"not json at all", b"[1, 2, 3]",
                  b'{"timestamp": "1700000000.5", "short_message": "string time"}']
    return [(b"192.0.2.1", 12201, documents)]


def spool_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The decompressed records the worker spools for the fixed input, in spool order."""
    monkeypatch.setattr("kinesyslog.worker.new_id_prefix", lambda: ID_PREFIX)
    config = Config(stream=None, spool_dir=tmp_path, output_dir=tmp_path / "out",
                    flush_size=1 << 30, flush_interval=3600.0)
    ring = Ring(str(config.ring_path), 64 << 20)
    ring.open_producer()
    for kind, senders in ((constants.KIND_SYSLOG, syslog_messages()),
                          (constants.KIND_GELF, gelf_messages())):
        for source, port, messages in senders:
            written = ring.write_batch(messages, 0, source, port, kind, RECEIVE_MS)
            assert written == len(messages)
    ring.close_producer()
    wake_read, wake_write = os.pipe()
    try:
        worker = Worker(config, ring, OWNER, wake_write, SharedState())
        assert worker.run(os.getppid()) == 0
    finally:
        os.close(wake_read)
        os.close(wake_write)
        ring.close()
    return [gzip.decompress(path.read_bytes())
            for path in sorted(tmp_path.glob("record-*.gz"), key=lambda p: p.name.split("-")[2])]


def test_the_records_of_a_fixed_input_stay_exactly_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    documents = spool_all(tmp_path, monkeypatch)
    shape = []
    for document in documents:
        record = json.loads(document)
        shape.append((record["logGroup"], record["logStream"], len(record["logEvents"])))
    digest = hashlib.sha256(b"".join(document + b"\0" for document in documents)).hexdigest()
    assert shape == PINNED_SHAPE
    assert digest == PINNED_DIGEST


def test_the_fixed_input_covers_what_it_should(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input above exercises a split (one sender's events over several records), both
    kinds, and every message arrives once, in order per sender."""
    documents = [json.loads(document) for document in spool_all(tmp_path, monkeypatch)]
    per_stream: dict[tuple[str, str], list[str]] = {}
    for record in documents:
        messages = per_stream.setdefault((record["logGroup"], record["logStream"]), [])
        messages.extend(event["message"] for event in record["logEvents"])
    streams = [key for record in documents for key in [(record["logGroup"],
                                                         record["logStream"])]]
    assert streams.count(("/kinesyslog/syslog/514", "198.51.100.9")) > 1, "no split"
    for kind, senders in (("syslog", syslog_messages()), ("gelf", gelf_messages())):
        for source, port, messages in senders:
            assert per_stream[(f"/kinesyslog/{kind}/{port}", source.decode())] == [
                message.decode("utf-8", "backslashreplace") for message in messages]
