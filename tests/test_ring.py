"""Unit tests of the crash-safe ring buffer (kinesyslog._fast.ring)."""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import struct
import time
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast import ring as ring_module
from kinesyslog._fast.ring import Ring, RingError

MIB = 1 << 20
HEADER = 4096
KSYRING_HEADER = struct.Struct("=8sIIQI")  # magic, version, header size, capacity, closed
WRITE_POS = 64
COMMIT_POS = 128
WAIT_SECONDS = 60.0


def make(tmp_path: Path, capacity: int = MIB, name: str = "ring") -> Ring:
    return Ring(str(tmp_path / name), capacity)


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_u64(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack("=Q", f.read(8))[0]


def advance(capacity: int, pos: int, size: int) -> int:
    """Where the write position goes after one entry: skip the tail if the entry does not fit."""
    room = capacity - pos % capacity
    return pos + (room if size > room else 0) + size


# --- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_length", "source_length", "size"),
    [
        (0, 0, 24),
        (4, 0, 24),
        (5, 0, 32),
        (5, 7, 32),
        (100, 7, 128),
        (12, 0, 32),
        (11, 1, 32),
        (200, 9, 232),
        (65_516, 0, 65_536),
        (0, 255, 280),
    ],
)
def test_entry_size(message_length: int, source_length: int, size: int) -> None:
    assert Ring.entry_size(message_length, source_length) == size


def test_entry_size_rejects_negative_lengths() -> None:
    with pytest.raises(ValueError):
        Ring.entry_size(-1, 0)
    with pytest.raises(ValueError):
        Ring.entry_size(0, -1)


def test_max_source_length_matches_constants() -> None:
    # The entry stores the source length in one byte.
    assert constants.MAX_SOURCE_LENGTH == 255


def test_create_writes_header_and_preallocates(tmp_path: Path) -> None:
    ring = make(tmp_path, 2 * MIB)
    path = str(tmp_path / "ring")
    assert ring.path == path
    assert ring.capacity == 2 * MIB
    assert os.path.getsize(path) == HEADER + 2 * MIB
    assert os.stat(path).st_blocks * 512 >= HEADER + 2 * MIB  # not sparse
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        raw = f.read(HEADER)
    assert KSYRING_HEADER.unpack_from(raw) == (b"KSYRING1", 1, 4096, 2 * MIB, 0)
    assert raw[WRITE_POS : WRITE_POS + 8] == bytes(8)
    assert raw[COMMIT_POS : COMMIT_POS + 8] == bytes(8)
    assert os.listdir(tmp_path) == ["ring"]  # the temporary file is gone
    assert (ring.write_position, ring.commit_position) == (0, 0)
    assert (ring.pending_bytes, ring.uncommitted_bytes, ring.free_bytes()) == (0, 0, 2 * MIB)
    assert ring.producer_closed is False
    assert ring.read_batch(10) == []


@pytest.mark.parametrize("capacity", [0, -4096, MIB - 4096, MIB + 1, MIB + 2048])
def test_create_rejects_bad_capacity(tmp_path: Path, capacity: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        make(tmp_path, capacity)
    assert os.listdir(tmp_path) == []


def test_existing_file_keeps_its_capacity(tmp_path: Path) -> None:
    make(tmp_path, MIB).close()
    ring = make(tmp_path, 8 * MIB)
    assert ring.capacity == MIB
    assert os.path.getsize(tmp_path / "ring") == HEADER + MIB


def test_create_never_replaces_an_existing_ring(tmp_path: Path) -> None:
    ring = make(tmp_path)
    assert ring.write_batch([b"kept"], 0, b"h", 1, 0, 5) == 1
    ring_module._create(str(tmp_path / "ring"), 2 * MIB)  # lost a creation race
    assert os.listdir(tmp_path) == ["ring"]
    again = make(tmp_path)
    assert again.capacity == MIB
    assert again.read_batch(5) == [(0, 1, b"h", 5, b"kept")]


def test_open_errors_are_oserrors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        Ring(str(tmp_path / "no-such-dir" / "ring"), MIB)
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(IsADirectoryError) as directory:
        Ring(str(tmp_path), MIB)
    assert directory.value.errno == errno.EISDIR
    assert directory.value.filename == str(tmp_path)


# --- producer and consumer ---------------------------------------------------------------


def test_write_read_commit(tmp_path: Path) -> None:
    ring = make(tmp_path)
    batch = [b"hello", b"x" * 100, b""]
    assert ring.write_batch(batch, 0, b"192.0.2.7", 514, 0, 1_519_247_270_240) == 3
    assert ring.write_position == 40 + 136 + 32
    assert ring.write_batch([b"skip", b"{}"], 1, b"2001:db8::1", 12201, 1, -5) == 1
    assert ring.write_position == 208 + 40
    assert (ring.pending_bytes, ring.uncommitted_bytes, ring.free_bytes()) == (248, 248, MIB - 248)

    assert ring.read_batch(2) == [
        (0, 514, b"192.0.2.7", 1_519_247_270_240, b"hello"),
        (0, 514, b"192.0.2.7", 1_519_247_270_240, b"x" * 100),
    ]
    assert (ring.pending_bytes, ring.uncommitted_bytes, ring.commit_position) == (72, 248, 0)
    assert ring.read_batch(10) == [
        (0, 514, b"192.0.2.7", 1_519_247_270_240, b""),
        (1, 12201, b"2001:db8::1", -5, b"{}"),
    ]
    assert ring.read_batch(10) == []
    assert ring.pending_bytes == 0
    ring.commit()
    assert (ring.commit_position, ring.uncommitted_bytes, ring.free_bytes()) == (248, 0, MIB)
    assert read_u64(ring.path, COMMIT_POS) == 248
    assert read_u64(ring.path, WRITE_POS) == 248


def test_entry_bytes_on_disk(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"msg"], 0, b"src", 0x1234, 7, -2)
    with open(ring.path, "rb") as f:
        f.seek(HEADER)
        raw = f.read(40)
    assert raw == (
        struct.pack("=IIqHBB", 32, 3, -2, 0x1234, 7, 3) + b"src" + b"msg" + bytes(6) + bytes(8)
    )


def test_extreme_field_values(tmp_path: Path) -> None:
    ring = make(tmp_path)
    entries = [b"\x00\xff\n" * 3]
    ring.write_batch(entries, 0, b"s" * 255, 65535, 255, 2**63 - 1)
    ring.write_batch(entries, 0, b"", 0, 0, -(2**63))
    assert ring.read_batch(5) == [
        (255, 65535, b"s" * 255, 2**63 - 1, entries[0]),
        (0, 0, b"", -(2**63), entries[0]),
    ]


def test_sources_ports_and_times_are_not_mixed_up(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"a", b"b"], 0, b"10.0.0.1", 514, 0, 100)
    ring.write_batch([b"c"], 0, b"10.0.0.2", 514, 0, 100)
    ring.write_batch([b"d"], 0, b"10.0.0.2", 515, 0, 100)
    ring.write_batch([b"e"], 0, b"10.0.0.2", 515, 0, 101)
    ring.write_batch([b"f"], 0, b"10.0.0.20", 515, 1, 101)
    assert ring.read_batch(10) == [
        (0, 514, b"10.0.0.1", 100, b"a"),
        (0, 514, b"10.0.0.1", 100, b"b"),
        (0, 514, b"10.0.0.2", 100, b"c"),
        (0, 515, b"10.0.0.2", 100, b"d"),
        (0, 515, b"10.0.0.2", 101, b"e"),
        (1, 515, b"10.0.0.20", 101, b"f"),
    ]


def test_read_batch_limits(tmp_path: Path) -> None:
    ring = make(tmp_path)
    assert ring.write_batch([b"%d" % i for i in range(5)], 0, b"h", 1, 0, 0) == 5
    assert ring.read_batch(0) == []
    with pytest.raises(ValueError):
        ring.read_batch(-1)
    assert [e[4] for e in ring.read_batch(3)] == [b"0", b"1", b"2"]
    assert [e[4] for e in ring.read_batch(3)] == [b"3", b"4"]


def test_rewind_rereads_uncommitted(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"%d" % i for i in range(6)], 0, b"h", 1, 0, 0)
    assert [e[4] for e in ring.read_batch(2)] == [b"0", b"1"]
    ring.commit()
    assert [e[4] for e in ring.read_batch(3)] == [b"2", b"3", b"4"]
    ring.rewind()
    assert ring.pending_bytes == 4 * 24
    assert [e[4] for e in ring.read_batch(10)] == [b"2", b"3", b"4", b"5"]


def test_two_objects_on_one_file_see_each_other(tmp_path: Path) -> None:
    producer = make(tmp_path)
    consumer = make(tmp_path)
    assert producer.write_batch([b"one", b"two"], 0, b"h", 9, 0, 1) == 2
    assert consumer.pending_bytes == 48
    assert consumer.read_batch(1) == [(0, 9, b"h", 1, b"one")]
    consumer.commit()
    assert producer.free_bytes() == MIB - 24
    assert producer.commit_position == 24


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"source": b"s" * 256}, ValueError),
        ({"port": -1}, ValueError),
        ({"port": 65536}, ValueError),
        ({"kind": -1}, ValueError),
        ({"kind": 256}, ValueError),
        ({"start": -1}, ValueError),
        ({"start": 3}, ValueError),
        ({"messages": [b"a", "text"], "start": 1}, TypeError),
        ({"messages": [b"a" * (MIB // 4 - 20 + 1)]}, ValueError),
    ],
)
def test_write_batch_rejects(tmp_path: Path, kwargs: dict, error: type) -> None:
    ring = make(tmp_path)
    args = {
        "messages": [b"a", b"b"],
        "start": 0,
        "source": b"h",
        "port": 1,
        "kind": 0,
        "receive_ms": 0,
    }
    args.update(kwargs)
    with pytest.raises(error):
        ring.write_batch(**args)
    assert ring.write_position == 0


def test_write_batch_start_at_end_writes_nothing(tmp_path: Path) -> None:
    ring = make(tmp_path)
    assert ring.write_batch([b"a", b"b"], 2, b"h", 1, 0, 0) == 0
    assert ring.write_batch([], 0, b"h", 1, 0, 0) == 0
    assert ring.write_position == 0


def test_largest_entry_is_a_quarter_of_capacity(tmp_path: Path) -> None:
    ring = make(tmp_path)
    biggest = b"m" * (MIB // 4 - 20 - 3)
    assert Ring.entry_size(len(biggest), 3) == MIB // 4
    assert ring.write_batch([biggest] * 5, 0, b"src", 1, 0, 0) == 4
    assert ring.free_bytes() == 0
    with pytest.raises(ValueError, match="never fits"):
        ring.write_batch([biggest + b"!"], 0, b"src", 1, 0, 0)
    assert [e[4] == biggest for e in ring.read_batch(10)] == [True] * 4


def test_invalid_message_later_in_batch_stops_the_batch_there(tmp_path: Path) -> None:
    ring = make(tmp_path)
    too_big = b"x" * MIB
    batch = [b"a", b"b", too_big, b"c"]
    assert ring.write_batch(batch, 0, b"h", 1, 0, 0) == 2
    with pytest.raises(ValueError):
        ring.write_batch(batch, 2, b"h", 1, 0, 0)
    assert ring.write_batch(batch, 3, b"h", 1, 0, 0) == 1
    mixed = [b"d", None, b"e"]
    assert ring.write_batch(mixed, 0, b"h", 1, 0, 0) == 1
    with pytest.raises(TypeError):
        ring.write_batch(mixed, 1, b"h", 1, 0, 0)
    assert [e[4] for e in ring.read_batch(10)] == [b"a", b"b", b"c", b"d"]


# --- space, wrap-around ------------------------------------------------------------------


def test_exactly_full_ring(tmp_path: Path) -> None:
    ring = make(tmp_path)
    page = b"p" * (4096 - 20)
    assert ring.write_batch([page] * 300, 0, b"", 1, 0, 0) == 256
    assert (ring.free_bytes(), ring.write_position) == (0, MIB)
    assert ring.write_batch([b""], 0, b"", 1, 0, 0) == 0
    assert len(ring.read_batch(10)) == 10
    assert ring.free_bytes() == 0  # reading frees nothing
    assert ring.write_batch([page], 0, b"", 1, 0, 0) == 0
    ring.commit()
    assert ring.free_bytes() == 10 * 4096
    assert ring.write_batch([page] * 20, 0, b"", 2, 0, 0) == 10
    assert (ring.free_bytes(), ring.write_position, ring.commit_position) == (0, MIB + 40960, 40960)
    entries = ring.read_batch(300)
    assert [e[1] for e in entries] == [1] * 246 + [2] * 10


def test_wrap_marker_and_exact_positions(tmp_path: Path) -> None:
    ring = make(tmp_path)
    quarter = b"q" * (MIB // 4 - 20)
    tail = b"t" * (MIB // 4 - 1024 - 20)
    assert ring.write_batch([quarter, quarter, quarter, tail], 0, b"", 1, 0, 0) == 4
    assert ring.write_position == MIB - 1024
    ring.read_batch(4)
    ring.commit()
    # 2048 bytes do not fit in the last 1024: a wrap marker takes them.
    wrapped = b"w" * (2048 - 20)
    assert ring.write_batch([wrapped], 0, b"", 2, 0, 0) == 1
    assert ring.write_position == MIB + 2048
    assert ring.uncommitted_bytes == 3072
    assert ring.free_bytes() == MIB - 3072
    with open(ring.path, "rb") as f:
        f.seek(HEADER + MIB - 1024)
        assert f.read(4) == b"\xff\xff\xff\xff"
        f.seek(HEADER)
        assert struct.unpack("=II", f.read(8)) == (2048, 2048 - 20)
    assert ring.pending_bytes == 3072
    assert ring.read_batch(10) == [(0, 2, b"", 0, wrapped)]
    assert ring.pending_bytes == 0
    ring.commit()
    assert ring.commit_position == MIB + 2048


def test_entry_after_wrap_fits_exactly_and_no_marker_without_room(tmp_path: Path) -> None:
    ring = make(tmp_path)
    quarter = b"q" * (MIB // 4 - 20)
    first = b"f" * (8192 - 20)
    tail = b"t" * (MIB // 4 - 8192 - 1024 - 20)
    assert ring.write_batch([first, quarter, quarter, quarter, tail], 0, b"", 1, 0, 0) == 5
    ring.read_batch(1)
    ring.commit()
    before = (ring.write_position, ring.free_bytes())
    assert before == (MIB - 1024, 8192 + 1024)
    # 1024 skipped + 8200 would be needed: nothing is written, not even the wrap marker.
    assert ring.write_batch([b"b" * (8200 - 20)], 0, b"", 2, 0, 0) == 0
    assert (ring.write_position, ring.free_bytes()) == before
    with open(ring.path, "rb") as f:
        f.seek(HEADER + MIB - 1024)
        assert f.read(4) == bytes(4)  # never written
    # 1024 skipped + 8192 is exactly the free space.
    assert ring.write_batch([first, b""], 0, b"", 3, 0, 0) == 1
    assert (ring.write_position, ring.free_bytes()) == (MIB + 8192, 0)
    assert [e[1] for e in ring.read_batch(10)] == [1, 1, 1, 1, 3]
    ring.commit()
    assert (ring.commit_position, ring.free_bytes()) == (MIB + 8192, MIB)


def test_many_laps_with_varying_sizes(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    ring = make(tmp_path)
    capacity = ring.capacity
    sizes = [0, 1, 7, 8, 100, 1000, 4075, 4076, 20_000, 100_000, MIB // 4 - 40]
    written: list[tuple[int, int, bytes, int, bytes]] = []
    read: list[tuple[int, int, bytes, int, bytes]] = []
    expected_pos = 0
    serial = 0
    for step in range(3000):
        if ring.write_position > 6 * capacity:
            break
        source = b"198.51.100.%d" % (step % 256)
        batch = []
        for _ in range(rng.randint(1, 12)):
            head = b"%d:" % serial
            serial += 1
            batch.append(head + bytes([serial % 251]) * max(0, rng.choice(sizes) - len(head)))
        count = ring.write_batch(batch, 0, source, step % 65536, step % 2, step)
        for message in batch[:count]:
            expected_pos = advance(
                capacity, expected_pos, Ring.entry_size(len(message), len(source))
            )
            written.append((step % 2, step % 65536, source, step, message))
        assert ring.write_position == expected_pos
        read += ring.read_batch(rng.randint(0, 20))
        if rng.random() < 0.5:
            ring.commit()
        assert ring.uncommitted_bytes <= capacity
    else:
        pytest.fail("the ring did not do six laps")
    read += ring.read_batch(len(written))
    assert read == written
    assert ring.pending_bytes == 0
    ring.commit()
    assert ring.commit_position == expected_pos > 6 * capacity


# --- persistence and crashes -------------------------------------------------------------


def test_commit_then_reopen_replays_only_uncommitted(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"%d" % i for i in range(10)], 0, b"h", 1, 0, 0)
    ring.read_batch(4)
    ring.commit()
    ring.read_batch(3)  # read but not committed
    ring.close()
    again = make(tmp_path, 4 * MIB)
    assert again.commit_position == 4 * 24
    assert again.pending_bytes == 6 * 24
    assert [e[4] for e in again.read_batch(100)] == [b"%d" % i for i in range(4, 10)]


def test_reopen_after_dropping_objects_replays_uncommitted_in_order(tmp_path: Path) -> None:
    producer = make(tmp_path)
    consumer = make(tmp_path)
    messages = [b"m%03d" % i for i in range(300)]
    assert producer.write_batch(messages, 0, b"h", 1, 0, 0) == 300
    consumer.read_batch(100)
    consumer.commit()
    consumer.read_batch(150)
    del producer, consumer  # no commit, no close
    again = make(tmp_path)
    assert [e[4] for e in again.read_batch(1000)] == messages[100:]


def _kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] != 0


def _read_line(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], WAIT_SECONDS)
    assert ready, "the child did not answer in time"
    return os.read(fd, 4096)


def test_sigkill_of_producer_and_consumer_loses_nothing(tmp_path: Path) -> None:
    ring = make(tmp_path)
    messages = [b"event %05d" % i for i in range(5000)]
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            written = ring.write_batch(messages, 0, b"h", 1, 0, 0)
            ring.read_batch(2000)
            ring.commit()
            ring.read_batch(1000)
            os.write(ready_w, b"ok %d" % written)
            os.read(hold_r, 1)  # killed while blocked here
        except BaseException as exc:
            os.write(ready_w, repr(exc).encode())
        finally:
            os._exit(1)
    try:
        assert _read_line(ready_r) == b"ok 5000"
    finally:
        _kill_and_reap(pid)
        for fd in (ready_r, ready_w, hold_r, hold_w):
            os.close(fd)
    again = make(tmp_path)
    assert [e[4] for e in again.read_batch(10_000)] == messages[2000:]


def test_producer_closed_flag_survives_reopen(tmp_path: Path) -> None:
    ring = make(tmp_path)
    assert ring.producer_closed is False
    ring.close_producer()
    assert ring.producer_closed is True
    ring.close()
    assert KSYRING_HEADER.unpack_from((tmp_path / "ring").read_bytes())[4] == 1
    ring = make(tmp_path)
    assert ring.producer_closed is True
    ring.open_producer()
    ring.close()
    assert make(tmp_path).producer_closed is False


def test_sync_and_close(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"a"], 0, b"h", 1, 0, 0)
    assert ring.sync() is None
    ring.close()
    ring.close()
    assert (ring.path, ring.capacity) == (str(tmp_path / "ring"), MIB)
    closed_calls = [
        lambda: ring.write_batch([b"a"], 0, b"h", 1, 0, 0),
        lambda: ring.read_batch(1),
        ring.commit,
        ring.rewind,
        ring.free_bytes,
        ring.sync,
        ring.close_producer,
        ring.open_producer,
        lambda: ring.write_position,
        lambda: ring.commit_position,
        lambda: ring.pending_bytes,
        lambda: ring.uncommitted_bytes,
        lambda: ring.producer_closed,
    ]
    for call in closed_calls:
        with pytest.raises(ValueError, match="closed ring"):
            call()
    assert make(tmp_path).read_batch(5) == [(0, 1, b"h", 0, b"a")]


# --- corruption --------------------------------------------------------------------------


def _valid_ring(tmp_path: Path) -> str:
    ring = make(tmp_path)
    ring.write_batch([b"a", b"b"], 0, b"h", 1, 0, 0)
    ring.read_batch(1)
    ring.commit()
    ring.close()
    return ring.path


@pytest.mark.parametrize(
    ("offset", "data", "match"),
    [
        (0, b"KSYRING2", "bad magic"),
        (0, bytes(8), "bad magic"),
        (8, struct.pack("=I", 2), "unsupported version"),
        (12, struct.pack("=I", 8192), "unsupported version"),
        (16, struct.pack("=Q", 2 * MIB), "capacity"),
        (16, struct.pack("=Q", MIB - 4096), "capacity"),
        (16, struct.pack("=Q", MIB + 8), "capacity"),
        (WRITE_POS, struct.pack("=Q", 0), "inconsistent positions"),  # write < commit
        (COMMIT_POS, struct.pack("=Q", 72), "inconsistent positions"),  # commit > write
        (WRITE_POS, struct.pack("=Q", MIB + 32), "inconsistent positions"),  # more than full
        (WRITE_POS, struct.pack("=Q", 52), "inconsistent positions"),  # unaligned
    ],
)
def test_corrupt_header_is_rejected(tmp_path: Path, offset: int, data: bytes, match: str) -> None:
    path = _valid_ring(tmp_path)
    patch(path, offset, data)
    with pytest.raises(RingError, match=match):
        Ring(path, MIB)
    assert os.path.getsize(path) == HEADER + MIB  # left in place for the caller to move


@pytest.mark.parametrize("size", [0, 100, HEADER, HEADER + MIB - 4096])
def test_short_file_is_rejected(tmp_path: Path, size: int) -> None:
    path = tmp_path / "ring"
    path.write_bytes(b"KSYRING1" + bytes(max(0, size - 8)) if size else b"")
    with pytest.raises(RingError, match="not a ring file"):
        Ring(str(path), MIB)


def test_file_longer_than_its_capacity_is_rejected(tmp_path: Path) -> None:
    path = _valid_ring(tmp_path)
    os.truncate(path, HEADER + MIB + 4096)
    with pytest.raises(RingError, match="does not match file size"):
        Ring(path, MIB)


@pytest.mark.parametrize(
    ("offset", "data"),
    [
        (0, struct.pack("=I", 16)),  # shorter than a header
        (0, struct.pack("=I", 40)),  # disagrees with the lengths inside
        (0, struct.pack("=I", 28)),  # unaligned
        (4, struct.pack("=I", 9)),  # message longer than the entry
        (19, b"\x09"),  # source longer than the entry
        (0, struct.pack("=I", 1 << 30)),  # beyond the data area
        (0, b"\xff\xff\xff\xff"),  # wrap marker far from the end of the area
    ],
)
def test_corrupt_entry_raises_after_the_good_ones(tmp_path: Path, offset: int, data: bytes) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"one", b"two", b"six"], 0, b"h", 1, 0, 0)
    patch(ring.path, HEADER + 24 + offset, data)
    assert ring.read_batch(10) == [(0, 1, b"h", 0, b"one")]
    with pytest.raises(RingError, match="corrupt entry at position 24"):
        ring.read_batch(10)
    assert ring.pending_bytes == 48


@pytest.mark.parametrize("length", [0, 8, 16, 24])
def test_corrupt_entry_in_the_last_bytes_of_the_area(tmp_path: Path, length: int) -> None:
    ring = make(tmp_path)
    quarter = b"q" * (MIB // 4 - 20)
    tail = b"t" * (MIB // 4 - 16 - 20)
    ring.write_batch([quarter, quarter, quarter, tail], 0, b"", 1, 0, 0)
    ring.read_batch(4)
    ring.commit()
    assert ring.write_batch([b""], 0, b"", 1, 0, 0) == 1  # wrap marker in the last 16 bytes
    assert ring.write_position == MIB + 24
    # Too short for an entry header: its fields would lie past the end of the mapping.
    patch(ring.path, HEADER + MIB - 16, struct.pack("=I", length))
    with pytest.raises(RingError, match=f"position {MIB - 16}"):
        ring.read_batch(10)


def test_entry_past_the_write_position_is_corrupt(tmp_path: Path) -> None:
    ring = make(tmp_path)
    ring.write_batch([b"one", b"two"], 0, b"h", 1, 0, 0)
    patch(ring.path, HEADER, struct.pack("=II", 56, 35))
    with pytest.raises(RingError, match="position 0"):
        ring.read_batch(10)


def test_wrap_marker_not_followed_by_an_entry_is_corrupt(tmp_path: Path) -> None:
    ring = make(tmp_path)
    quarter = b"q" * (MIB // 4 - 20)
    tail = b"t" * (MIB // 4 - 1024 - 20)
    ring.write_batch([quarter, quarter, quarter, tail, b"end"], 0, b"", 1, 0, 0)
    ring.read_batch(4)
    ring.commit()
    patch(ring.path, HEADER + MIB - 1024, b"\xff\xff\xff\xff")
    with pytest.raises(RingError, match=f"position {MIB - 1024}"):
        ring.read_batch(10)


# --- two processes -----------------------------------------------------------------------

FORK_TOTAL = 200_000
FORK_BATCH = 1000


def _expected_batch(b: int) -> tuple[list[bytes], bytes, int, int, int]:
    first = b * FORK_BATCH
    messages = [b"%d|" % i + b"." * (i % 317) for i in range(first, first + FORK_BATCH)]
    return messages, b"10.0.%d.%d" % (b % 256, b % 7), 514 + b % 3, b % 2, 1_700_000_000_000 + b


def _consume(ring: Ring, deadline: float) -> bytes:
    expected: list[tuple[int, int, bytes, int, bytes]] = []
    next_batch = 0
    count = 0
    while time.monotonic() < deadline:
        closed = ring.producer_closed  # read before the batch: then an empty batch means done
        entries = ring.read_batch(5000)
        for entry in entries:
            if not expected:
                messages, source, port, kind, ms = _expected_batch(next_batch)
                expected = [(kind, port, source, ms, m) for m in reversed(messages)]
                next_batch += 1
            want = expected.pop()
            if entry != want:
                return b"entry %d: %r != %r" % (count, entry, want)
            count += 1
        ring.commit()
        if not entries:
            if closed:
                return b"ok %d" % count
            os.sched_yield()
    return b"timeout after %d" % count


def test_fork_producer_parent_consumer_child(tmp_path: Path) -> None:
    ring = make(tmp_path)
    deadline = time.monotonic() + WAIT_SECONDS
    result_r, result_w = os.pipe()
    go_r, go_w = os.pipe()  # the consumer starts once the ring is full: the producer must wait
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(result_r)
            os.close(go_w)
            os.read(go_r, 1)
            os.write(result_w, _consume(ring, deadline))
            code = 0
        finally:
            os._exit(code)
    os.close(result_w)
    os.close(go_r)
    reaped = False
    try:
        full_waits = 0
        for b in range(FORK_TOTAL // FORK_BATCH):
            messages, source, port, kind, ms = _expected_batch(b)
            start = 0
            while start < len(messages):
                written = ring.write_batch(messages, start, source, port, kind, ms)
                start += written
                if not written:
                    if not full_waits:
                        os.write(go_w, b"g")
                    full_waits += 1
                    assert time.monotonic() < deadline, "consumer stalled"
                    assert os.waitpid(pid, os.WNOHANG) == (0, 0), "consumer died"
                    os.sched_yield()
        ring.close_producer()
        assert _read_line(result_r) == b"ok %d" % FORK_TOTAL
        while time.monotonic() < deadline and not reaped:
            done, status = os.waitpid(pid, os.WNOHANG)
            reaped = done == pid
            os.sched_yield()
        assert reaped
        assert os.waitstatus_to_exitcode(status) == 0
        assert ring.commit_position == ring.write_position > 30 * ring.capacity
        assert full_waits > 0  # the producer really waited for the consumer
    finally:
        os.close(result_r)
        os.close(go_w)
        if not reaped:
            _kill_and_reap(pid)


def test_last_written_bytes_counts_the_messages_written(tmp_path: Path) -> None:
    ring = Ring(str(tmp_path / "ring"), 1 << 20)
    big = b"x" * (ring.capacity // 4 - 64)
    assert ring.write_batch([b"abc", b"", b"de"], 0, b"h", 1, 0, 0) == 3
    assert ring.last_written_bytes == 5
    # Only what fit: four of the five.
    assert ring.write_batch([big, big, big, big, big], 0, b"h", 1, 0, 0) == 4
    assert ring.last_written_bytes == 4 * len(big)
    assert ring.write_batch([big], 0, b"h", 1, 0, 0) == 0
    assert ring.last_written_bytes == 0


def _resident_kib_of_mappings(path: str) -> list[int]:
    """Rss of each mapping of path in this process, from /proc/self/smaps."""
    sizes: list[int] = []
    in_mapping = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's line
                in_mapping = fields[-1] == path
            elif in_mapping and fields[0] == "Rss:":
                sizes.append(int(fields[1]))
    return sizes


def test_pages_behind_the_cursors_are_unmapped_and_their_data_kept(tmp_path: Path) -> None:
    """Three laps through a 4 MiB ring leave each side about 256 KiB mapped, not 4 MiB; what
    was written before its pages were unmapped reads back whole, also after a reopen."""
    producer = make(tmp_path, 4 * MIB)
    consumer = make(tmp_path, 4 * MIB)
    messages = [b"%07d" % i + b"." * 500 for i in range(24_000)]  # 3 laps of 4 MiB
    read: list[bytes] = []
    committed = written = 0
    most_resident = 0
    for _ in range(len(messages)):  # bounded: every round writes at least one message
        written += producer.write_batch(messages[written:written + 200], 0, b"h", 1, 0, 0)
        read += [entry[4] for entry in consumer.read_batch(250)]
        most_resident = max(most_resident, *_resident_kib_of_mappings(str(tmp_path / "ring")))
        if written == len(messages):
            break
        if written < len(messages) - 3000:
            consumer.commit()  # the last entries stay uncommitted, for the reopen below
            committed = len(read)
    while batch := consumer.read_batch(1000):
        read += [entry[4] for entry in batch]
    assert read == messages
    resident = _resident_kib_of_mappings(str(tmp_path / "ring"))
    assert len(resident) == 2
    # All along at most a chunk (256 KiB) and the pages around the cursors that the kernel
    # maps at each fault (fault-around: up to 372 KiB seen on tmpfs, 12 on ext4). With 1 MiB
    # chunks the most was 996-1092 KiB.
    assert max(resident) <= most_resident <= 256 + 640, (resident, most_resident)
    consumer.close()
    producer.close()
    again = make(tmp_path, 4 * MIB)
    assert [entry[4] for entry in again.read_batch(10_000)] == messages[committed:]
