"""Stream framers writing straight into the ring (kinesyslog/_fast/framing.pyx, feed_into):
the same entries Ring.write_batch makes of what feed() returns, and, when the ring is full,
the rest of the messages back in order. Cython only: the reference framers have no ring."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kinesyslog._fast.framing import GelfStreamFramer, StreamFramer
from kinesyslog._fast.ring import Ring
from kinesyslog.constants import KIND_GELF, KIND_SYSLOG

MIB = 1 << 20
SOURCE = b"192.0.2.7"


def ring_at(tmp_path: Path, capacity: int = 16 * MIB) -> Ring:
    return Ring(str(tmp_path / "ring"), capacity)


def syslog_stream(rng: random.Random, count: int) -> bytes:
    """LF, CRLF, NUL and octet-counted frames, some over the size limit of 200."""
    parts = []
    for index in range(count):
        body = b"<13>message %d " % index + b"x" * rng.choice([0, 5, 50, 190, 260])
        kind = rng.randrange(4)
        if kind == 0:
            parts.append(body + b"\n")
        elif kind == 1:
            parts.append(body + b"\r\n")
        elif kind == 2:
            parts.append(body + b"\x00")
        else:
            parts.append(b"%d %s" % (len(body), body))
    return b"".join(parts)


def gelf_stream(rng: random.Random, count: int) -> bytes:
    return b"".join(b'{"short_message": "m%d %s", "host": "h"}\x00'
                    % (index, b"y" * rng.choice([0, 40, 300])) for index in range(count))


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize(("framer_class", "stream", "kind"), [
    (StreamFramer, syslog_stream, KIND_SYSLOG), (GelfStreamFramer, gelf_stream, KIND_GELF)])
def test_feed_into_writes_the_entries_write_batch_makes_of_feed(
        tmp_path: Path, framer_class: type, stream: object, kind: int) -> None:
    rng = random.Random(5)
    data = stream(rng, 300)  # type: ignore[operator]
    chunks = pieces(data, rng)
    plain, direct = framer_class(200), framer_class(200)
    ring = ring_at(tmp_path)
    direct.attach(ring, SOURCE, 6514, kind)
    expected = []
    for index, chunk in enumerate(chunks):
        messages = plain.feed(chunk)
        expected += [(kind, 6514, SOURCE, 1000 + index, message) for message in messages]
        assert direct.feed_into(chunk, 1000 + index) == []
        assert direct.buffered == plain.buffered
    assert (direct.truncated, direct.incomplete_dropped) == (plain.truncated,
                                                              plain.incomplete_dropped)
    assert plain.truncated > 0
    assert ring.read_batch(10_000) == expected
    assert direct.written == len(expected)
    assert direct.written_bytes == sum(len(entry[4]) for entry in expected)
    assert ring.pending_bytes == 0  # everything written was published


def test_a_full_ring_returns_the_rest_in_order(tmp_path: Path) -> None:
    ring = ring_at(tmp_path, MIB)  # the smallest ring: 1 MiB, never read here
    framer = StreamFramer(4096)
    framer.attach(ring, SOURCE, 514, KIND_SYSLOG)
    messages = [b"<13>%06d " % index + b"z" * 1000 for index in range(1500)]
    stream = b"".join(message + b"\n" for message in messages)
    # Cut inside a message, so that one is assembled from two feeds.
    first = framer.feed_into(stream[:500_500], 1)
    second = framer.feed_into(stream[500_500:], 2)
    assert first == []
    written = ring.read_batch(10_000)
    assert 900 < len(written) < 1100
    assert [entry[4] for entry in written] + second == messages
    assert framer.written == len(written)
    # Once the consumer made room, the rest goes in through write_batch, as the listener
    # writes what it holds back; later feeds write straight in again.
    ring.commit()
    assert ring.write_batch(second, 0, SOURCE, 514, KIND_SYSLOG, 2) == len(second)
    assert framer.feed_into(b"<13>later\n", 3) == []
    assert [entry[4] for entry in ring.read_batch(10_000)] == [*second, b"<13>later"]


def test_nothing_after_a_message_that_did_not_fit_goes_into_the_ring(tmp_path: Path) -> None:
    ring = ring_at(tmp_path, MIB)
    framer = StreamFramer(300_000)
    framer.attach(ring, SOURCE, 514, KIND_SYSLOG)
    big, small = b"b" * 250_000, b"s"  # 4 big entries fill the ring; a small one would fit
    returned = framer.feed_into(b"\n".join([big] * 5 + [small]) + b"\n", 1)
    assert [entry[4] for entry in ring.read_batch(100)] == [big] * 4
    assert returned == [big, small]


def test_feed_stays_a_list_after_attach(tmp_path: Path) -> None:
    ring = ring_at(tmp_path)
    framer = StreamFramer(100)
    framer.attach(ring, SOURCE, 514, KIND_SYSLOG)
    assert framer.attached
    assert framer.feed(b"<13>a\n<13>b\n") == [b"<13>a", b"<13>b"]
    assert ring.read_batch(10) == [] and framer.written == 0


def test_attach_checks_its_arguments(tmp_path: Path) -> None:
    ring = ring_at(tmp_path)
    framer = StreamFramer(100)
    assert not framer.attached
    with pytest.raises(ValueError, match="before attach"):
        framer.feed_into(b"<13>a\n", 1)
    with pytest.raises(ValueError, match="255"):
        framer.attach(ring, b"x" * 256, 514, 0)
    with pytest.raises(ValueError, match="port"):
        framer.attach(ring, SOURCE, 65536, 0)
    with pytest.raises(ValueError, match="kind"):
        framer.attach(ring, SOURCE, 514, 256)
    framer.attach(ring, SOURCE, 514, 0)
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        framer.feed_into(b"<13>a\n", 1)
