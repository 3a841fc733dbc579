"""Coverage-guided fuzzing of the ring buffer (atheris), checked against the model in
test_fuzz_ring.py.

    pip install atheris
    python fuzz/atheris_ring.py -runs=1000000

The hypothesis state machine (`pytest fuzz`, or `atheris_fuzz.py ring`) runs long programs
that lap the ring several times, at a few dozen programs a second. This harness runs short
programs decoded straight from libFuzzer's bytes, thousands a second: each input opens a
fresh ring (in /dev/shm when it exists) with one or two handles, then runs writes (small,
large, and sized to the end of the data area or of the free space), reads, commits,
rewinds, reopens after a simulated crash of either side and producer-flag changes. After
every operation each position must match the model; at the end everything not committed
must still be there, in order. Every 100,000 inputs, and at the end of `-runs=N`, one line
gives the number of programs and operations run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import atheris  # noqa: E402

with atheris.instrument_imports():
    from test_fuzz_ring import CAPACITY, ENTRY_HEADER, MAX_ENTRY, Model

from kinesyslog._fast.ring import Ring  # noqa: E402

REPORT_EVERY = 100_000
SOURCES = (b"", b"192.0.2.7", b"2001:db8::1", b"s" * 255)
MAX_OPERATIONS = 64
WRITE, READ, COMMIT, REWIND, REOPEN_CONSUMER, REOPEN_PRODUCER, FLAG = range(7)


@atheris.instrument_func
def message_length(data: atheris.FuzzedDataProvider, model: Model, source: bytes) -> int:
    """A length that lands small, large, or at an edge of the data area or free space."""
    shape = data.ConsumeIntInRange(0, 3)
    if shape == 0:
        return data.ConsumeIntInRange(0, 64)
    if shape == 1:
        return data.ConsumeIntInRange(0, MAX_ENTRY - ENTRY_HEADER - len(source) + 8)
    room = CAPACITY - model.write_pos % CAPACITY
    free = CAPACITY - (model.write_pos - model.commit_pos)
    edge = room if shape == 2 else free
    return max(0, edge - ENTRY_HEADER - len(source) + data.ConsumeIntInRange(-16, 8))


class Harness:
    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.path = str(Path(tempfile.mkdtemp(prefix="fuzz-ring-", dir=base)) / "ring")
        self.programs = 0
        self.operations = 0
        self.calls = 0
        self.runs = next((int(a[6:]) for a in sys.argv if a.startswith("-runs=")), None)

    def report(self) -> None:
        print(
            f"[ring] {self.calls} inputs, {self.programs} programs, "
            f"{self.operations} operations",
            file=sys.stderr,
            flush=True,
        )

    @atheris.instrument_func  # coverage of the operation mix guides the mutations
    def one_input(self, raw: bytes) -> None:
        self.calls += 1
        data = atheris.FuzzedDataProvider(raw)
        if os.path.exists(self.path):
            os.unlink(self.path)
        model = Model()
        producer = Ring(self.path, CAPACITY)
        consumer = producer if data.ConsumeBool() else Ring(self.path, CAPACITY)
        serial = 0
        for _ in range(MAX_OPERATIONS):
            if not data.remaining_bytes():
                break
            operation = data.ConsumeIntInRange(WRITE, FLAG)
            if operation == WRITE:
                source = SOURCES[data.ConsumeIntInRange(0, len(SOURCES) - 1)]
                messages = []
                for _ in range(data.ConsumeIntInRange(0, 4)):
                    serial += 1
                    tag = b"%d|" % serial
                    length = message_length(data, model, source)
                    messages.append(tag + b"m" * (length - len(tag)) if length > len(tag) else b"")
                start = data.ConsumeIntInRange(0, len(messages))
                port, kind = data.ConsumeIntInRange(0, 65535), data.ConsumeIntInRange(0, 255)
                ms = data.ConsumeIntInRange(-(2**63), 2**63 - 1)
                try:
                    expected = model.write(messages[start:], source, port, kind, ms)
                except ValueError:
                    try:
                        producer.write_batch(messages, start, source, port, kind, ms)
                    except ValueError as error:
                        assert "never fits" in str(error), error
                    else:
                        raise AssertionError("an entry that can never fit was written")
                else:
                    written = producer.write_batch(messages, start, source, port, kind, ms)
                    assert written == expected, (written, expected)
            elif operation == READ:
                expected_entries = model.unread(data.ConsumeIntInRange(0, 40))
                assert consumer.read_batch(len(expected_entries)) == expected_entries
                model.read += len(expected_entries)
            elif operation == COMMIT:
                consumer.commit()
                model.commit()
            elif operation == REWIND:
                consumer.rewind()
                model.read = 0
            elif operation == REOPEN_CONSUMER:
                consumer = Ring(self.path, 0)
                model.read = 0
            elif operation == REOPEN_PRODUCER:
                producer = Ring(self.path, 0)
            else:
                model.producer_closed = data.ConsumeBool()
                if model.producer_closed:
                    producer.close_producer()
                else:
                    producer.open_producer()
            self.operations += 1
            model.check_positions(producer, consumer)
        model.check_contents(consumer)
        consumer.close()
        producer.close()
        self.programs += 1
        if self.calls % REPORT_EVERY == 0 or self.calls == self.runs:
            self.report()


def main() -> None:
    harness = Harness()
    atheris.Setup(sys.argv, harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
