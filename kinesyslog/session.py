"""One TCP or TLS byte stream, sans-IO: [PROXY header] → [TLS] → RFC 6587 or GELF framing.

A StreamSession never touches a socket, a clock or a logger. The listener feeds it what a
socket returned (``receive``) and the time (``expire``); it answers with the complete
messages, the bytes to send back (TLS records: ``take_outgoing``) and, when the stream must
end, ``close_reason`` with a one-line ``close_detail``. The contract it implements is
docs/contract.md §4 (input) and §9 (limits); the shape follows h11's: data in, events out.
"""

from __future__ import annotations

import contextlib
import enum
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Union, cast

from kinesyslog import constants
from kinesyslog._fast.framing import GelfStreamFramer, StreamFramer
from kinesyslog._fast.proxy import ProxyError
from kinesyslog._fast.proxy import decode as decode_proxy_header

if TYPE_CHECKING:
    from kinesyslog._fast.ring import Ring


class CloseReason(enum.Enum):
    """Why the relay closed a connection; the values are the metric's `reason` labels."""

    PROXY_HEADER = "proxy_header"
    TLS_HANDSHAKE = "tls_handshake"
    TLS_ERROR = "tls_error"  # after the handshake
    NEGOTIATION_TIMEOUT = "negotiation_timeout"
    MAX_CONNECTIONS = "max_connections"  # refused at accept: every slot taken
    MAX_CONNECTIONS_PER_SOURCE = "max_connections_per_source"
    IDLE_TIMEOUT = "idle_timeout"
    BUFFER_LIMIT = "buffer_limit"


Framer = Union[StreamFramer, GelfStreamFramer]


class StreamSession:
    """The protocol state of one connection; see the module docstring."""

    __slots__ = ("_admit_source", "_proxy_bytes", "_scratch", "_tls", "_tls_context",
                 "_tls_incoming", "_tls_outgoing", "close_detail", "close_reason", "deadline",
                 "ended", "framer", "port", "source", "source_admitted", "tls_handshaking")

    def __init__(self, framer: Framer, source: bytes, port: int, now: float, *,
                 expect_proxy: bool = False, tls_context: ssl.SSLContext | None = None,
                 admit_source: Callable[[bytes], bool] | None = None,
                 scratch: bytearray | None = None) -> None:
        """framer: a fresh StreamFramer or GelfStreamFramer. source and port: the peer's,
        until a PROXY header names the original client. admit_source: asked once about
        that client (False: the session closes with MAX_CONNECTIONS_PER_SOURCE). scratch:
        a reusable buffer decrypted bytes are read into; it may be the buffer that the data
        given to receive() lies in, which is consumed before scratch is written."""
        self.framer = framer
        self.source = source
        self.port = port
        self._admit_source = admit_source
        self.source_admitted = False  # admit_source said yes to the header's source
        self._proxy_bytes: bytes | None = b"" if expect_proxy else None
        self._tls_context = tls_context
        self._tls: ssl.SSLObject | None = None  # made when the first bytes arrive
        self._tls_incoming: ssl.MemoryBIO | None = None
        self._tls_outgoing: ssl.MemoryBIO | None = None
        self._scratch = scratch if scratch is not None else bytearray(constants.TCP_RECV_SIZE)
        self.tls_handshaking = tls_context is not None
        self.ended = False  # the peer ended the stream inside TLS (close_notify)
        self.close_reason: CloseReason | None = None
        self.close_detail = ""
        self.deadline = now + constants.NEGOTIATION_TIMEOUT if self.negotiating else None

    @property
    def negotiating(self) -> bool:
        """The PROXY header or the TLS handshake is not complete yet."""
        return self._proxy_bytes is not None or self.tls_handshaking

    @property
    def open(self) -> bool:
        return self.close_reason is None and not self.ended

    # --- input -----------------------------------------------------------------------------
    def receive(self, data: memoryview | bytes, receive_ms: int = 0) -> list[bytes]:
        """The complete messages in data, with what came before. With a framer attached to
        the ring (Framer.attach), those it wrote there (stamped receive_ms) are not returned:
        only the ones the ring had no room for."""
        if not self.open:
            return []
        if self._proxy_bytes is not None:
            remainder = self._receive_proxy_header(data)
            if remainder is None:
                return []
            data = remainder
        if self._tls_context is not None:
            return self._receive_tls(data, receive_ms)
        return self._frame(data, receive_ms, True)

    def write_into(self, ring: Ring, kind: int) -> None:
        """From now on receive() writes complete messages into ring, from the session's
        source and port: call it once negotiation is over (a PROXY header sets them)."""
        self.framer.attach(ring, self.source, self.port, kind)

    @property
    def writes_into_ring(self) -> bool:
        return self.framer.attached

    def _frame(self, data: memoryview | bytes, receive_ms: int, to_ring: bool) -> list[bytes]:
        if to_ring and self.framer.attached:
            return self.framer.feed_into(data, receive_ms)
        return self.framer.feed(data)

    def expire(self, now: float) -> bool:
        """True (and close_reason set) when negotiation did not complete by the deadline."""
        if self.deadline is None or now < self.deadline or not self.open:
            return False
        if not self.negotiating:
            self.deadline = None
            return False
        stage = "PROXY header" if self._proxy_bytes is not None else "TLS handshake"
        self._close(CloseReason.NEGOTIATION_TIMEOUT, f"no complete {stage} in time")
        return True

    def end_of_stream(self) -> list[bytes]:
        """The peer closed: the unterminated tail as a message (LF framing), if any."""
        if self.negotiating:
            return []
        return self.framer.close()

    # --- output ----------------------------------------------------------------------------
    def take_outgoing(self) -> bytes:
        """TLS bytes for the peer (handshake, alerts, close_notify); empty without TLS."""
        return self._tls_outgoing.read() if self._tls_outgoing is not None else b""

    # --- counters the listener reads ---------------------------------------------------------
    @property
    def truncated(self) -> int:
        return self.framer.truncated

    @property
    def incomplete_dropped(self) -> int:
        return self.framer.incomplete_dropped

    @property
    def written(self) -> int:
        """Messages the framer wrote into the ring."""
        return self.framer.written

    @property
    def written_bytes(self) -> int:
        return self.framer.written_bytes

    @property
    def partial_bytes(self) -> int:
        """What the framer holds of an unfinished message."""
        return self.framer.buffered

    # --- PROXY protocol --------------------------------------------------------------------
    def _receive_proxy_header(self, data: memoryview | bytes) -> memoryview | None:
        """Collects the header; the bytes after it once it is complete."""
        assert self._proxy_bytes is not None
        buffered = self._proxy_bytes + bytes(data)
        try:
            header, used = decode_proxy_header(buffered)
        except ProxyError as error:
            self._close(CloseReason.PROXY_HEADER, f"invalid PROXY protocol header: {error}")
            return None
        if header is None:
            self._proxy_bytes = buffered
            return None
        self._proxy_bytes = None
        # LOCAL, UNKNOWN and UNIX-socket sources carry no network address: keep the peer's.
        if not header.uses_peer and header.family in ("TCP4", "TCP6"):
            assert header.source_address is not None
            self.source = header.source_address.encode()[: constants.MAX_SOURCE_LENGTH]
            if header.destination_port is not None:
                self.port = header.destination_port
            if self._admit_source is not None:
                if not self._admit_source(self.source):
                    self._close(CloseReason.MAX_CONNECTIONS_PER_SOURCE,
                                "--max-connections-per-source reached")
                    return None
                self.source_admitted = True
        return memoryview(buffered)[used:]

    # --- TLS -------------------------------------------------------------------------------
    def _receive_tls(self, data: memoryview | bytes, receive_ms: int) -> list[bytes]:
        tls = self._tls
        if tls is None:
            assert self._tls_context is not None
            self._tls_incoming, self._tls_outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self._tls = self._tls_context.wrap_bio(self._tls_incoming, self._tls_outgoing,
                                                         server_side=True)
        assert self._tls_incoming is not None
        self._tls_incoming.write(data)
        if self.tls_handshaking:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                return []
            except (ssl.SSLError, OSError) as error:
                self._close(CloseReason.TLS_HANDSHAKE, f"TLS handshake failed: {_reason(error)}")
                return []
            self.tls_handshaking = False
        messages: list[bytes] = []
        scratch, view = self._scratch, memoryview(self._scratch)
        while True:
            try:
                size = cast(int, tls.read(len(scratch), scratch))  # into scratch: a count
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.ended = True
                break
            except (ssl.SSLError, OSError) as error:
                self._close(CloseReason.TLS_ERROR, f"TLS error: {_reason(error)}")
                break
            if not size:
                self.ended = True
                break
            # Once the ring had no room, what follows waits behind what did not fit.
            messages.extend(self._frame(view[:size], receive_ms, not messages))
        if not self.open:  # answer the peer's close_notify (or send ours), as RFC 5425 asks
            with contextlib.suppress(ssl.SSLError, OSError):
                tls.unwrap()
        return messages

    def _close(self, reason: CloseReason, detail: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.close_detail = detail


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return (error.reason or error.strerror or str(error)).lower().replace("_", " ")
    return getattr(error, "strerror", None) or str(error)
