"""Syslog datagrams from a UDP socket straight into the ring, a batch per recvmmsg(2) call."""

from kinesyslog._fast.ring import Ring

class DatagramReceiver:
    """Receive buffers for recvmmsg and the text of the last source, shared by the listener's
    UDP sockets.

    Each of the batch buffers holds max_message_size + 2 bytes (UDP_RECV_SIZE at most), so
    that framing gives what frame_datagram gives for the whole datagram. source_cache_size
    bounds the cache of IPv6 source texts. ValueError for max_message_size < 1, batch outside
    1..1024 or source_cache_size < 1.
    """

    def __init__(self, max_message_size: int, batch: int, source_cache_size: int) -> None: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def buffer_size(self) -> int: ...
    def receive(
        self, fd: int, ring: Ring, port: int, kind: int, receive_ms: int
    ) -> tuple[int, int, int, int, int, int, bool]:
        """One recvmmsg call on fd (never blocks); its syslog datagrams framed into the ring
        as frame_datagram frames them, each with the source text address_text gives, port,
        kind and receive_ms; published once.

        Returns (datagrams, messages, message_bytes, empty, truncated, ring_full, drained):
        datagrams read; messages written to the ring and their bytes; datagrams empty after
        framing (not written); messages cut at max_message_size (written or not); messages
        dropped because the ring had no room; whether the socket had no more datagrams.
        EINTR returns zeros and not drained; any other error raises OSError, nothing read.
        ValueError for port outside 0..65535, kind outside 0..255, or a ring too small for
        max_message_size; ValueError too if the ring is closed.
        """
