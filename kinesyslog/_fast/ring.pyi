"""A crash-safe single-producer/single-consumer queue over a memory-mapped file."""

class RingError(Exception):
    """The file is not a valid ring (magic, version, geometry, positions) or an entry is corrupt."""

class Ring:
    """A single-producer/single-consumer queue of log entries in a memory-mapped file.

    Opens the ring file at path keeping its capacity and contents (the capacity argument is
    then ignored), or creates it atomically with capacity bytes of data area (a multiple of
    4096, at least 1 MiB, else ValueError). An existing file that is not a valid ring raises
    RingError.
    """

    def __init__(self, path: str, capacity: int) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def last_written_bytes(self) -> int:
        """Message bytes the last write_batch wrote."""

    # --- producer ---
    def write_batch(
        self,
        messages: list[bytes],
        start: int,
        source: bytes,
        port: int,
        kind: int,
        receive_ms: int,
    ) -> int:
        """Append messages[start:] while they fit; return how many were written.

        A message that is not bytes, or whose entry exceeds capacity / 4, raises TypeError /
        ValueError when it is messages[start]; later in the batch, the batch stops before it.
        ValueError too for len(source) > 255, port outside 0..65535, kind outside 0..255.
        """
    def free_bytes(self) -> int:
        """capacity - (write_position - commit_position)."""
    @staticmethod
    def entry_size(message_length: int, source_length: int) -> int:
        """Bytes one entry takes in the ring."""
    def close_producer(self) -> None:
        """Set the producer_closed flag: clean shutdown, nothing more will be written."""
    def open_producer(self) -> None:
        """Clear the producer_closed flag."""
    @property
    def producer_closed(self) -> bool: ...

    # --- consumer ---
    def read_batch(self, max_entries: int) -> list[tuple[int, int, bytes, int, bytes]]:
        """Up to max_entries (kind, port, source, receive_ms, message) from the read cursor.

        A corrupt entry raises RingError when it is the first to read; after good entries,
        the batch stops before it.
        """
    def commit(self) -> None:
        """commit_position = read cursor; frees the space read for the producer."""
    def rewind(self) -> None:
        """Read cursor = commit_position."""
    @property
    def pending_bytes(self) -> int:
        """write_position - read cursor."""
    @property
    def uncommitted_bytes(self) -> int:
        """write_position - commit_position."""
    @property
    def write_position(self) -> int: ...
    @property
    def commit_position(self) -> int: ...

    # --- both ---
    def sync(self) -> None:
        """msync(MS_SYNC) the mapping."""
    def close(self) -> None:
        """Unmap; idempotent. Other methods then raise ValueError."""
