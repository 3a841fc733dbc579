"""Events as JSON, grouped by stream: the worker's hot path."""

from typing_extensions import Buffer

from kinesyslog._fast.ring import Ring
from kinesyslog._fast.syslog import TimestampExtractor

Entry = tuple[int, int, bytes, int, Buffer]
StreamKey = tuple[int, int, bytes]

def json_string(message: Buffer) -> bytes: ...
def new_id_prefix() -> bytes: ...

class IdGenerator:
    def __init__(self, prefix: bytes) -> None: ...
    def next_id(self) -> bytes: ...

class EventBuffers:
    @property
    def total_bytes(self) -> int: ...
    @property
    def event_count(self) -> int: ...
    @property
    def oldest_receive_ms(self) -> int: ...
    @property
    def gelf_invalid_json(self) -> int: ...
    def __init__(self, extractor: TimestampExtractor, ids: IdGenerator) -> None: ...
    def add_from_ring(self, ring: Ring, max_entries: int, max_bytes: int) -> int:
        """Encodes entries straight from the ring's read cursor until max_entries were read or
        total_bytes reached max_bytes; how many. A corrupt entry raises RingError when it is
        the first, else the read stops before it."""
    def add_batch(self, entries: list[Entry]) -> None: ...
    def take(self) -> list[tuple[StreamKey, Buffer, bytes]]:
        """[(key, body, ends)]: the events' JSON joined by ", " (read it through memoryview),
        and where each ends in body (native int64 bytes: memoryview(ends).cast("q")), in
        first-seen key order."""
