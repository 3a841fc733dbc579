#!/usr/bin/env python3
"""CPU of the worker's hot loop alone: ring entries → JSON events, then gzip records.

A forked producer fills a ring with the benchmark's RFC 5424 messages (bench/run.py's
make_messages) as the listener would; this process reads them with
EventBuffers.add_from_ring, takes a group every --flush-size bytes and, unless --no-gzip,
builds its records (records.build_records: ISA-L), as the worker does. It prints the CPU
time of this process per 1,000,000 messages, encoding and gzip apart. No socket, spool or
upload: for profiling the worker's own code (bench/run.py measures the relay end to end).

Run by hand, after `make build`, from the repository:
    .venv/bin/python bench/encode.py --messages 4000000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import make_messages  # noqa: E402
from kinesyslog._fast.events import EventBuffers, IdGenerator, new_id_prefix  # noqa: E402
from kinesyslog._fast.ring import Ring  # noqa: E402
from kinesyslog._fast.syslog import TimestampExtractor  # noqa: E402
from kinesyslog.constants import KIND_SYSLOG  # noqa: E402
from kinesyslog.records import build_records  # noqa: E402

RING_BYTES = 16 << 20
DISTINCT_MESSAGES = 10_000  # the producer cycles through these
PRODUCER_BATCH = 256
SOURCE = b"127.0.0.1"
PORT = 514
NAP = 0.0002  # seconds either side waits when the ring is full or empty


def produce(ring: Ring, messages: list[bytes], count: int, receive_ms: int) -> None:
    """The listener's side, in a child: write count entries, cycling through messages."""
    written = 0
    while written < count:
        start = written % len(messages)
        batch = messages[start:start + min(PRODUCER_BATCH, count - written)]
        done = ring.write_batch(batch, 0, SOURCE, PORT, KIND_SYSLOG, receive_ms)
        written += done
        if done == 0:
            time.sleep(NAP)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4_000_000)
    parser.add_argument("--size", type=int, default=200, help="bytes per message")
    parser.add_argument("--flush-size", type=int, default=4 << 20,
                        help="event bytes per group taken (the relay's --flush-size)")
    parser.add_argument("--no-gzip", action="store_true", help="encode only")
    options = parser.parse_args()

    base_second = int(time.time())
    messages = make_messages(DISTINCT_MESSAGES, options.size, base_second)
    with tempfile.TemporaryDirectory(prefix="kinesyslog-encode-") as directory:
        ring = Ring(os.path.join(directory, "ring"), RING_BYTES)
        ring.open_producer()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                produce(ring, messages, options.messages, base_second * 1000)
                code = 0
            finally:
                os._exit(code)
        buffers = EventBuffers(TimestampExtractor("UTC"), IdGenerator(new_id_prefix()))
        encode = gzip = 0.0
        events = record_bytes = json_bytes = 0
        while events < options.messages:
            before = cpu_seconds()
            read = buffers.add_from_ring(ring, 4096, options.flush_size)
            events += read
            full = buffers.total_bytes >= options.flush_size or events >= options.messages
            taken = buffers.take() if full else []
            encode += cpu_seconds() - before
            if full:
                before = cpu_seconds()
                for _, body, ends in taken:
                    json_bytes += len(memoryview(body))
                    if not options.no_gzip:
                        records = build_records("000000000000", "bench", "127.0.0.1", body,
                                                memoryview(ends).cast("q"))
                        record_bytes += sum(map(len, records))
                gzip += cpu_seconds() - before
                ring.commit()
            if read == 0:
                ring.commit()
                time.sleep(NAP)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            print(f"the producer failed (wait status {status})", file=sys.stderr)
            return 1
    per_million = 1_000_000 / options.messages
    print(f"{options.messages} messages of {options.size} bytes, {json_bytes / 1e6:.0f} MB of "
          f"event JSON" + ("" if options.no_gzip else
                           f", {record_bytes / 1e6:.0f} MB of records "
                           f"(ratio {json_bytes / max(record_bytes, 1):.2f})"))
    print(f"CPU s per 1,000,000 messages: encode {encode * per_million:.3f}"
          + ("" if options.no_gzip else f", gzip {gzip * per_million:.3f}, "
             f"together {(encode + gzip) * per_million:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
