"""Stateful fuzzing of the ring buffer against a pure-Python model of its queue and space.

The model knows the layout's accounting (8-byte aligned entries of a 20-byte header plus
source and message; the tail of the data area skipped when an entry does not fit there), so
every write count and position is checked exactly, not just "no crash".
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import deque
from pathlib import Path

import pytest
from hypothesis import event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kinesyslog._fast.ring import Ring

CAPACITY = 1 << 20
MAX_ENTRY = CAPACITY // 4
ENTRY_HEADER = 20


def entry_size(message_length: int, source_length: int) -> int:
    return (ENTRY_HEADER + message_length + source_length + 7) & ~7


class Model:
    """What the ring must hold: positions, and the entries from commit_pos on."""

    def __init__(self) -> None:
        self.write_pos = 0
        self.commit_pos = 0
        # (end position, (kind, port, source, receive_ms, message)) of uncommitted entries
        self.entries: deque[tuple[int, tuple[int, int, bytes, int, bytes]]] = deque()
        self.read = 0  # entries read since the last commit or rewind
        self.producer_closed = False

    def read_pos(self) -> int:
        return self.entries[self.read - 1][0] if self.read else self.commit_pos

    def write(self, messages: list[bytes], source: bytes, port: int, kind: int, ms: int) -> int:
        """Append while entries fit; ValueError if the first can never fit."""
        for count, message in enumerate(messages):
            size = entry_size(len(message), len(source))
            if size > MAX_ENTRY:
                if count == 0:
                    raise ValueError("never fits")
                return count
            room = CAPACITY - self.write_pos % CAPACITY
            need = size + (room if size > room else 0)
            if need > CAPACITY - (self.write_pos - self.commit_pos):
                return count
            self.write_pos += need
            self.entries.append((self.write_pos, (kind, port, source, ms, message)))
        return len(messages)

    def unread(self, limit: int) -> list[tuple[int, int, bytes, int, bytes]]:
        window = itertools.islice(self.entries, self.read, self.read + limit)
        return [entry for _, entry in window]

    def commit(self) -> None:
        self.commit_pos = self.read_pos()
        for _ in range(self.read):
            self.entries.popleft()
        self.read = 0

    def check_positions(self, producer: Ring, consumer: Ring) -> None:
        """Both handles on the file agree with the model on every position and flag."""
        assert producer.write_position == consumer.write_position == self.write_pos
        assert producer.commit_position == consumer.commit_position == self.commit_pos
        assert producer.free_bytes() == CAPACITY - (self.write_pos - self.commit_pos)
        assert consumer.uncommitted_bytes == self.write_pos - self.commit_pos
        assert consumer.pending_bytes == self.write_pos - self.read_pos()
        assert consumer.producer_closed is self.producer_closed

    def check_contents(self, consumer: Ring) -> None:
        """Everything not committed is still there, in order."""
        consumer.rewind()
        everything = consumer.read_batch(len(self.entries) + 1)
        assert everything == [entry for _, entry in self.entries]


payloads = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 6000).map(lambda n: b"m" * n),
    # Around the largest entry (a quarter of the capacity), on both sides of the limit.
    st.integers(MAX_ENTRY - ENTRY_HEADER - 255 - 8, MAX_ENTRY - ENTRY_HEADER + 8).map(
        lambda n: b"M" * n
    ),
)
sources = st.one_of(
    st.sampled_from([b"", b"192.0.2.7", b"2001:db8::1", b"s" * 255]), st.binary(max_size=16)
)


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fuzz-ring-")
        self.path = str(Path(self.dir) / "ring")
        self.model = Model()
        self.serial = 0

    @initialize(shared=st.booleans())
    def open_ring(self, shared: bool) -> None:
        self.producer = Ring(self.path, CAPACITY)
        self.consumer = self.producer if shared else Ring(self.path, CAPACITY)

    def numbered(self, payload: bytes) -> bytes:
        """Make messages distinct (so order is checked) without changing their length."""
        self.serial += 1
        tag = b"%d|" % self.serial
        return tag + payload[len(tag) :] if len(payload) >= len(tag) else payload

    @rule(
        payloads=st.lists(payloads, max_size=8),
        data=st.data(),
        source=sources,
        port=st.integers(0, 65535),
        kind=st.integers(0, 255),
        ms=st.integers(-(2**63), 2**63 - 1),
    )
    def write_batch(
        self,
        payloads: list[bytes],
        data: st.DataObject,
        source: bytes,
        port: int,
        kind: int,
        ms: int,
    ) -> None:
        messages = [self.numbered(p) for p in payloads]
        start = data.draw(st.integers(0, len(messages)), label="start")
        self.check_write(messages, start, source, port, kind, ms)

    @rule(
        frac=st.sampled_from([0.5, 0.0, 1.0]),
        delta=st.sampled_from([0, -8]),
        source=sources,
    )
    def write_at_edge(self, frac: float, delta: int, source: bytes) -> None:
        """Entries sized to the nearest edge, 8 bytes over it and then exact or 8 under: the
        end of the area or of the free space, or, when the free space runs past the end of
        the area by less than a largest entry, one that wraps into exactly that space after
        leaving a tail of frac of it."""
        room, free = self.room_and_free()
        past_end = free - room  # unchanged by writes that do not wrap
        if ENTRY_HEADER + len(source) + 8 <= past_end <= MAX_ENTRY:
            tail = max(8, int(past_end * frac) // 8 * 8)
            for _ in range(CAPACITY // MAX_ENTRY + 1):
                room, _ = self.room_and_free()
                step = min(MAX_ENTRY, room - tail)
                if step < ENTRY_HEADER + len(source) or not self.write_sized(step, source):
                    break
            event(f"edge: wrap into the free space, tail {'' if room <= tail else 'not '}reached")
            size = past_end
        else:
            size = min(room, free)
            event("edge: end" if size <= MAX_ENTRY else "edge: approach")
            if size > MAX_ENTRY:
                self.write_sized(MAX_ENTRY, source)
                return
        self.write_sized(size + 8, source)
        self.write_sized(size + delta, source, follow=True)

    def room_and_free(self) -> tuple[int, int]:
        m = self.model
        return CAPACITY - m.write_pos % CAPACITY, CAPACITY - (m.write_pos - m.commit_pos)

    def write_sized(self, size: int, source: bytes, follow: bool = False) -> bool:
        """Write one entry of this size (and a small one after it); False if none fit."""
        length = size - ENTRY_HEADER - len(source)
        if length < 0:
            return False
        messages = [self.numbered(b"e" * length)] + ([b"next"] if follow else [])
        return self.check_write(messages, 0, source, 7, 1, self.model.write_pos) > 0

    def check_write(
        self, messages: list[bytes], start: int, source: bytes, port: int, kind: int, ms: int
    ) -> int:
        try:
            expected = self.model.write(messages[start:], source, port, kind, ms)
        except ValueError:
            with pytest.raises(ValueError, match="never fits"):
                self.producer.write_batch(messages, start, source, port, kind, ms)
            event("write: first entry too big")
            return 0
        assert self.producer.write_batch(messages, start, source, port, kind, ms) == expected
        if expected < len(messages) - start:
            event("write: stopped early")
        return expected

    @rule(max_entries=st.integers(0, 40))
    def read_batch(self, max_entries: int) -> None:
        expected = self.model.unread(max_entries)
        assert self.consumer.read_batch(max_entries) == expected
        self.model.read += len(expected)

    @rule(max_entries=st.integers(1, 40))
    def read_and_commit(self, max_entries: int) -> None:
        """What the worker does: read a batch, make it durable, commit."""
        self.read_batch(max_entries)
        self.commit()

    @rule()
    def commit(self) -> None:
        self.consumer.commit()
        self.model.commit()

    @rule()
    def rewind(self) -> None:
        self.consumer.rewind()
        self.model.read = 0

    @rule()
    def reopen_consumer(self) -> None:
        """The worker crashed: a new object on the file reads from commit_pos."""
        self.consumer = Ring(self.path, 0)
        self.model.read = 0

    @rule()
    def reopen_producer(self) -> None:
        """The listener crashed: nothing it published may be lost."""
        self.producer = Ring(self.path, 0)

    @rule(closed=st.booleans())
    def producer_flag(self, closed: bool) -> None:
        if closed:
            self.producer.close_producer()
        else:
            self.producer.open_producer()
        self.model.producer_closed = closed

    @invariant()
    def positions_match(self) -> None:
        self.model.check_positions(self.producer, self.consumer)

    def teardown(self) -> None:
        laps = self.model.write_pos / CAPACITY
        event(f"laps: {int(laps)}")
        target(laps, label="laps")
        try:
            if hasattr(self, "consumer"):
                self.model.check_contents(self.consumer)
                self.consumer.close()
                self.producer.close()
        finally:
            shutil.rmtree(self.dir)


# Steps copy up to a quarter MiB and a failing run shrinks for minutes: half the active
# profile's examples (so a longer fuzz budget still scales it), 100 steps each.
TestRing = RingMachine.TestCase
TestRing.settings = settings(
    max_examples=max(10, settings.default.max_examples // 2),
    stateful_step_count=100,
    deadline=None,
)
