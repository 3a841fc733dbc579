"""UDP and TCP sockets of the listener process: framing into the ring, with back-pressure."""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kinesyslog import constants
from kinesyslog._fast.framing import GelfStreamFramer, StreamFramer
from kinesyslog._fast.gelf_chunks import ChunkAssembler
from kinesyslog._fast.gelf_payload import decode_payload
from kinesyslog._fast.proxy import address_text
from kinesyslog._fast.udp import DatagramReceiver
from kinesyslog.config import Config, ConfigError
from kinesyslog.limits import ConnectionLimits
from kinesyslog.logs import RateLimitedLog
from kinesyslog.session import CloseReason, StreamSession

if TYPE_CHECKING:
    from kinesyslog._fast.ring import Ring
    from kinesyslog.eventloop import EventLoop
    from kinesyslog.tls import TlsContextHolder

log = logging.getLogger("kinesyslog.listener")
BACKPRESSURE_RETRY = 0.005
ACCEPT_BATCH = 64
UDP_READ_BATCH = 256  # datagrams per readiness event of one UDP socket, at most
UDP_RECVMMSG_BATCH = 64  # syslog datagrams per recvmmsg call
UDP_SOCKET_BUFFER = 8 * 1024 * 1024
# Linux's SO_RCVBUFFORCE (<asm-generic/socket.h>), which Python's socket module lacks: a
# receive buffer size that net.core.rmem_max does not cap, for root or CAP_NET_ADMIN.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# The listener's loop naps (constants.LISTENER_NAP) only when every UDP socket got at least
# this much buffer (as getsockopt reports it: twice what was granted, which without
# SO_RCVBUFFORCE is at most net.core.rmem_max): a
# smaller one would overflow during the pause at a few hundred thousand datagrams/s.
NAP_MIN_UDP_BUFFER = 4 * 1024 * 1024
SOURCE_CACHE_SIZE = 4096


@dataclass
class PortCounters:
    """What one listener (transport and port) received."""

    transport: str
    port: int
    messages: int = 0
    message_bytes: int = 0
    truncated: int = 0


@dataclass
class ListenerCounters:
    ports: dict[tuple[str, int], PortCounters] = field(default_factory=dict)
    incomplete_dropped: int = 0
    empty_datagrams: int = 0
    udp_dropped_ring_full: int = 0
    connections_open: int = 0
    rejected: Counter[CloseReason] = field(default_factory=Counter)  # connections closed
    gelf_corrupt: int = 0

    def port(self, transport: str, port: int) -> PortCounters:
        return self.ports.setdefault((transport, port), PortCounters(transport, port))

    @property
    def messages(self) -> int:
        return sum(counters.messages for counters in self.ports.values())

    @property
    def message_bytes(self) -> int:
        return sum(counters.message_bytes for counters in self.ports.values())

    @property
    def truncated(self) -> int:
        return sum(counters.truncated for counters in self.ports.values())


@dataclass
class BoundSocket:
    transport: str  # "udp", "tcp" or "tls"
    port: int
    sock: socket.socket


def bind_all(config: Config) -> list[BoundSocket]:
    """Binds every listener; on any failure closes what was bound and raises ConfigError."""
    family = socket.AF_INET6 if ":" in config.address else socket.AF_INET
    wanted = [("udp", port, "--udp-port") for port in config.udp_ports]
    wanted += [("tcp", port, "--tcp-port") for port in config.tcp_ports]
    wanted += [("tls", port, "--tls-port") for port in config.tls_ports]
    bound: list[BoundSocket] = []
    try:
        for transport, port, option in wanted:
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
            sock = socket.socket(family, kind)
            bound.append(BoundSocket(transport, port, sock))
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if transport != "udp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                request_receive_buffer(sock, UDP_SOCKET_BUFFER)
            try:
                sock.bind((config.address, port))
            except OSError as error:
                raise ConfigError(bind_error(option, config.address, port, error)) from None
            if transport != "udp":
                sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except BaseException:
        for item in bound:
            item.sock.close()
        raise
    return bound


def request_receive_buffer(sock: socket.socket, size: int) -> None:
    """Asks for a receive buffer of size bytes: with SO_RCVBUFFORCE where the process may
    (root, or CAP_NET_ADMIN), so that net.core.rmem_max does not cap it; else with SO_RCVBUF,
    which the kernel silently caps at net.core.rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # EPERM without the capability; a sandbox may not know the option at all
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def loop_nap(udp_buffers: list[int]) -> float:
    """The listener loop's nap: LISTENER_NAP, or none when a UDP socket's receive buffer
    (getsockopt SO_RCVBUF) is too small to hold what arrives during it."""
    if min(udp_buffers, default=NAP_MIN_UDP_BUFFER) >= NAP_MIN_UDP_BUFFER:
        return constants.LISTENER_NAP
    return 0.0


def udp_kernel_drops(sockets: list[BoundSocket]) -> int | None:
    """Datagrams the kernel dropped for our UDP sockets (receive buffer full), from
    /proc/net/udp[6]; None where that is not readable."""
    inodes = {str(os.fstat(bound.sock.fileno()).st_ino)
              for bound in sockets if bound.transport == "udp" and bound.sock.fileno() >= 0}
    if not inodes:
        return 0
    drops = 0
    try:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as lines:
                next(lines)  # header
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] in inodes:
                        drops += int(fields[12])
    except (OSError, ValueError, StopIteration):
        return None
    return drops


def bind_error(option: str, address: str, port: int, error: OSError) -> str:
    where = f"{option} {port} on {address}"
    if error.errno == errno.EADDRINUSE:
        return f"{where}: address already in use; stop the other program or choose another port"
    if error.errno == errno.EACCES:
        return (f"{where}: permission denied; ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE, or choose a port above 1023")
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: address not available on this host; fix --address"
    return f"{where}: cannot bind ({error.strerror}); fix --address or the port"


class Listener:
    """Every socket of the listener process; writes framed messages into the ring."""

    def __init__(self, loop: EventLoop, sockets: list[BoundSocket], ring: Ring, config: Config,
                 counters: ListenerCounters, tls: TlsContextHolder) -> None:
        self.loop = loop
        self.sockets = sockets
        self.ring = ring
        self.config = config
        self.counters = counters
        self.tls = tls
        self.proxy_ports = frozenset(config.proxy_protocol_ports)
        self.kind = constants.KIND_GELF if config.gelf else constants.KIND_SYSLOG
        self.gelf_chunks = ChunkAssembler(config.max_message_size) if config.gelf else None
        self.connections: set[StreamConnection] = set()
        self.paused: set[StreamConnection] = set()
        # Every read lands in these, so that no read allocates a large object (see
        # supervisor.LARGE_ALLOCATION).
        self.recv_buffer = bytearray(constants.TCP_RECV_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        self.datagram_buffer = bytearray(constants.UDP_RECV_SIZE)
        self.datagram_view = memoryview(self.datagram_buffer)
        # Syslog datagrams go from recvmmsg buffers into the ring in C; GELF ones need
        # reassembly and decompression and take the Python path.
        self.datagram_receiver = None if config.gelf else DatagramReceiver(
            config.max_message_size, UDP_RECVMMSG_BATCH, SOURCE_CACHE_SIZE)
        self.problems = RateLimitedLog(log)
        self._sources: dict[object, bytes] = {}
        self._retry_scheduled = False
        self.limits = ConnectionLimits(config, self.connections, self.count_rejected,
                                       self.problems, self._start_reading)

    def start(self) -> None:
        udp_buffers = [bound.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                       for bound in self.sockets if bound.transport == "udp"]
        self.loop.nap = loop_nap(udp_buffers)
        if not self.loop.nap:
            log.info("UDP receive buffer is %d bytes (capped by net.core.rmem_max): the "
                     "listener reads at every wake-up, not in batches; set "
                     "net.core.rmem_max = 8388608 to absorb bursts with less CPU",
                     min(udp_buffers))
        for bound in self.sockets:
            if bound.transport == "udp":
                self.loop.add_reader(bound.sock, functools.partial(self._on_datagrams, bound))
            else:
                self.loop.add_reader(bound.sock, functools.partial(self._on_accept, bound))
            proxy = " (PROXY protocol)" if bound.port in self.proxy_ports else ""
            log.info("listening on %s %s port %d%s", bound.transport.upper(),
                     self.config.address, bound.port, proxy)

    def source_of(self, address: tuple) -> bytes:
        source = self._sources.get(address[0])
        if source is None:
            if len(self._sources) >= SOURCE_CACHE_SIZE:
                self._sources.clear()
            source = address_text(address[0]).encode()[: constants.MAX_SOURCE_LENGTH]
            self._sources[address[0]] = source
        return source

    # --- UDP -----------------------------------------------------------------------------
    def _on_datagrams(self, bound: BoundSocket) -> None:
        receiver = self.datagram_receiver
        if receiver is None:
            self._on_gelf_datagrams(bound)
            return
        counters = self.counters
        stats = counters.port("udp", bound.port)
        fd = bound.sock.fileno()
        for _ in range(UDP_READ_BATCH // UDP_RECVMMSG_BATCH):
            try:
                _read, messages, message_bytes, empty, truncated, ring_full, drained = (
                    receiver.receive(fd, self.ring, bound.port, self.kind,
                                     int(time.time() * 1000)))
            except OSError as error:
                self.problems.warning(f"UDP port {bound.port}: receive failed",
                                      error.strerror or "")
                return
            stats.messages += messages
            stats.message_bytes += message_bytes
            stats.truncated += truncated
            counters.empty_datagrams += empty
            if ring_full:
                counters.udp_dropped_ring_full += ring_full
                self.problems.warning("ring full: dropping UDP datagrams",
                                      f"{counters.udp_dropped_ring_full} dropped so far",
                                      count=ring_full)
            if drained:
                return
        self.loop.more_pending = True

    def _on_gelf_datagrams(self, bound: BoundSocket) -> None:
        counters = self.counters
        stats = counters.port("udp", bound.port)
        datagram_view = self.datagram_view
        for _ in range(UDP_READ_BATCH):
            try:
                size, address = bound.sock.recvfrom_into(self.datagram_buffer)
                data = datagram_view[:size]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.problems.warning(f"UDP port {bound.port}: receive failed",
                                      error.strerror or "")
                return
            decoded = self._gelf_datagram(data)
            if decoded is None:
                continue
            message, truncated = decoded
            stats.truncated += truncated
            receive_ms = int(time.time() * 1000)
            if self.ring.write_batch([message], 0, self.source_of(address), bound.port,
                                     self.kind, receive_ms):
                stats.messages += 1
                stats.message_bytes += len(message)
            else:
                counters.udp_dropped_ring_full += 1
                self.problems.warning("ring full: dropping UDP datagrams",
                                      f"{counters.udp_dropped_ring_full} dropped so far")
        self.loop.more_pending = True

    def _gelf_datagram(self, data: memoryview) -> tuple[bytes, bool] | None:
        """A whole GELF message (reassembled, decompressed), or None while chunks are missing
        or when the datagram is unusable (counted)."""
        assert self.gelf_chunks is not None
        payload = self.gelf_chunks.feed(data, time.monotonic())
        if payload is None:
            return None
        message, status = decode_payload(payload, self.config.max_message_size)
        if message is None or not message.strip():
            self.counters.gelf_corrupt += 1
            self.problems.warning("GELF datagram with bad compressed data or nothing in it "
                                  "dropped")
            return None
        return message, status == "truncated"

    def expire_gelf_chunks(self) -> None:
        if self.gelf_chunks is not None:
            self.gelf_chunks.expire(time.monotonic())

    def drain_datagrams(self) -> None:
        for bound in self.sockets:
            if bound.transport == "udp":
                self._on_datagrams(bound)

    # --- TCP -----------------------------------------------------------------------------
    def _on_accept(self, bound: BoundSocket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = bound.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # EMFILE and friends: keep the loop alive, the backlog waits for us.
                self.problems.warning(f"{bound.transport.upper()} port {bound.port}: accept "
                                      "failed", error.strerror or "")
                return
            if not self.limits.make_room():
                sock.close()
                self.count_rejected(CloseReason.MAX_CONNECTIONS)
                self.problems.warning("connection refused: --max-connections reached",
                                      f"{self.config.max_connections} connections open")
                continue
            source = self.source_of(address)
            expect_proxy = bound.port in self.proxy_ports
            # Behind a load balancer the peer is the balancer: the header's source counts.
            if not expect_proxy and not self.limits.claim_source(source):
                sock.close()
                self.count_rejected(CloseReason.MAX_CONNECTIONS_PER_SOURCE)
                self.problems.warning("connection refused: --max-connections-per-source "
                                      "reached", source.decode(errors="replace"))
                continue
            sock.setblocking(False)
            connection = StreamConnection(self, sock, source, bound.port, bound.transport,
                                          expect_proxy)
            connection.counted_source = None if expect_proxy else source
            self.connections.add(connection)
            self.counters.connections_open = len(self.connections)
            if bound.transport == "tls":
                self.limits.queue_handshake(connection)  # read once a handshake slot is free
            else:
                self._start_reading(connection)
        self.loop.more_pending = True  # the backlog may hold more: no pause before the next

    def _start_reading(self, connection: StreamConnection) -> None:
        self.loop.add_reader(connection.sock, connection.on_event)

    def count_rejected(self, reason: CloseReason) -> None:
        self.counters.rejected[reason] += 1

    def pause(self, connection: StreamConnection) -> None:
        self.loop.remove_reader(connection.sock)
        self.paused.add(connection)
        if not self._retry_scheduled:
            self._retry_scheduled = True
            self.loop.call_later(BACKPRESSURE_RETRY, self._retry_paused)

    def _retry_paused(self) -> None:
        self._retry_scheduled = False
        for connection in list(self.paused):
            if connection.flush_pending():
                self.paused.discard(connection)
                connection.resume()
        if self.paused:
            self._retry_scheduled = True
            self.loop.call_later(BACKPRESSURE_RETRY, self._retry_paused)

    def forget(self, connection: StreamConnection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)
        self.counters.connections_open = len(self.connections)
        if connection.counted_source is not None:
            self.limits.release_source(connection.counted_source)
            connection.counted_source = None

    # --- shutdown ------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        for bound in self.sockets:
            if bound.transport != "udp":
                self.loop.remove_reader(bound.sock)
                bound.sock.close()

    def drain_connections(self, deadline: float) -> None:
        """Reads what each connection's kernel buffer already holds, delivers it, closes it.

        A connection held back by a full ring is read again once its messages are in."""
        remaining = set(self.connections)

        def step() -> None:
            for connection in list(remaining):
                if connection.pending:
                    continue  # the back-pressure retry writes it first
                connection.read_until_empty()
                if not connection.pending:
                    connection.end_of_stream()
                    remaining.discard(connection)
            if remaining:
                self.loop.call_later(BACKPRESSURE_RETRY, step)

        step()
        self.loop.run_until(lambda: not self.connections, deadline)
        for connection in list(self.connections):
            lost = len(connection.pending) - connection.pending_index
            log.error("shutdown: %d message(s) from %s could not be written to the full ring",
                      lost, connection.source.decode())
            connection.close()

    def close(self) -> None:
        for bound in self.sockets:
            self.loop.remove_reader(bound.sock)
            bound.sock.close()


class StreamConnection:
    """The IO side of one TCP or TLS connection: its socket, its timers and back-pressure.
    What the bytes mean (PROXY, TLS, framing) is its StreamSession's business."""

    __slots__ = ("__weakref__", "closed", "closing", "counted_source", "holds_handshake_slot",
                 "last_active", "listener", "negotiation_timer", "outgoing", "partial_bytes",
                 "pending", "pending_index", "pending_ms", "session", "sock", "stats",
                 "transport", "truncated_seen", "written_bytes_seen", "written_seen")

    def __init__(self, listener: Listener, sock: socket.socket, source: bytes, port: int,
                 transport: str, expect_proxy: bool) -> None:
        self.listener = listener
        self.sock = sock
        self.transport = transport
        self.stats = listener.counters.port(transport, port)  # the listener's port, not PROXY's
        config = listener.config
        framer_class = GelfStreamFramer if config.gelf else StreamFramer
        now = time.monotonic()
        self.session = StreamSession(
            framer_class(config.max_message_size), source, port, now,
            expect_proxy=expect_proxy,
            tls_context=listener.tls.context if transport == "tls" else None,
            admit_source=listener.limits.claim_source, scratch=listener.recv_buffer)
        self.pending: list[bytes] = []
        self.pending_index = 0
        self.pending_ms = 0
        self.closing = False
        self.closed = False
        self.counted_source: bytes | None = None  # the address counted per source, if any
        self.last_active = now
        self.truncated_seen = 0
        self.written_seen = self.written_bytes_seen = 0  # by the session, into the ring
        self.partial_bytes = 0  # the session's unfinished message, as last counted
        self.outgoing = b""  # TLS bytes the socket did not take yet
        self.holds_handshake_slot = False
        self.negotiation_timer = None
        if self.session.deadline is not None:
            self.negotiation_timer = listener.loop.call_later(
                constants.NEGOTIATION_TIMEOUT, self._negotiation_timed_out)

    @property
    def source(self) -> bytes:
        return self.session.source

    @property
    def port(self) -> int:
        return self.session.port

    @property
    def negotiating(self) -> bool:
        return self.session.negotiating

    @property
    def peer(self) -> str:
        return self.session.source.decode(errors="replace")

    # --- reading -------------------------------------------------------------------------
    def on_event(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self.outgoing and not self._send_outgoing():
            return
        if self.closing or self.pending:
            return
        listener = self.listener
        try:
            size = self.sock.recv_into(listener.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0  # connection reset: deliver what was complete, like an orderly close
        if size == 0:
            self.end_of_stream()
            return
        self.last_active = time.monotonic()
        if size == len(listener.recv_buffer):
            listener.loop.more_pending = True
        self.receive(listener.recv_view[:size])

    def receive(self, data: memoryview) -> None:
        session = self.session
        if not session.writes_into_ring and not session.negotiating:
            session.write_into(self.listener.ring, self.listener.kind)
        receive_ms = int(time.time() * 1000)
        messages = session.receive(data, receive_ms)
        if session.source_admitted and self.counted_source is None:
            self.counted_source = session.source  # released when the connection closes
        self._send(session.take_outgoing())
        if self.holds_handshake_slot and not session.tls_handshaking:
            self.listener.limits.release_handshake_slot(self)
        if not session.negotiating and self.negotiation_timer is not None:
            self.negotiation_timer.cancel()
            self.negotiation_timer = None
        reason = session.close_reason
        if reason is not None and reason is not CloseReason.TLS_ERROR:
            self._reject(reason, session.close_detail)
            return
        self.deliver(messages, receive_ms)
        if reason is CloseReason.TLS_ERROR:
            self.listener.count_rejected(reason)
            self.listener.problems.warning("TLS error", f"{self.peer}: {session.close_detail}")
        if not session.open:
            self.end_of_stream()

    def read_until_empty(self) -> None:
        """At shutdown: frames what the kernel already received for this connection."""
        for _ in range(1024):
            if self.closing or self.pending or self.sock.fileno() < 0 or self.negotiating:
                return
            try:
                size = self.sock.recv_into(self.listener.recv_buffer)
            except OSError:
                return
            if size == 0:
                return
            self.receive(self.listener.recv_view[:size])

    # --- writing (TLS only) ----------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if data:
            self.outgoing += data
            self._send_outgoing()

    def _send_outgoing(self) -> bool:
        """Sends queued TLS bytes; True once all are sent (else waits for writability)."""
        try:
            sent = self.sock.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.outgoing = b""
            return True  # the peer is gone; the next read reports it
        self.outgoing = self.outgoing[sent:]
        if not self.closing:
            self.listener.loop.watch(self.sock, self.on_event, readable=not self.pending,
                                     writable=bool(self.outgoing))
        return not self.outgoing

    # --- negotiation outcome -------------------------------------------------------------
    def _negotiation_timed_out(self) -> None:
        self.negotiation_timer = None
        if not self.closing and self.session.expire(time.monotonic()):
            assert self.session.close_reason is not None
            self._reject(self.session.close_reason, self.session.close_detail)

    def _reject(self, reason: CloseReason, detail: str) -> None:
        self.listener.count_rejected(reason)
        self.listener.problems.warning(
            f"connection closed ({reason.value}) on {self.transport.upper()} port {self.port}",
            f"{self.peer}: {detail}")
        self.close()

    # --- delivery with back-pressure -----------------------------------------------------
    def deliver(self, messages: list[bytes], receive_ms: int | None = None) -> None:
        """Counts what the session wrote into the ring itself, and writes messages (those it
        had no room for, or all of them before the session writes into the ring), holding
        back what does not fit."""
        session = self.session
        truncated = session.truncated
        if truncated != self.truncated_seen:
            self.stats.truncated += truncated - self.truncated_seen
            self.truncated_seen = truncated
        written = session.written
        if written != self.written_seen:
            written_bytes = session.written_bytes
            self.stats.messages += written - self.written_seen
            self.stats.message_bytes += written_bytes - self.written_bytes_seen
            self.written_seen, self.written_bytes_seen = written, written_bytes
        partial = session.partial_bytes
        if partial != self.partial_bytes:
            delta, self.partial_bytes = partial - self.partial_bytes, partial
            self.listener.limits.partial_changed(delta)
        if not messages:
            return
        if receive_ms is None:
            receive_ms = int(time.time() * 1000)
        written = self.listener.ring.write_batch(messages, 0, self.source, self.port,
                                                 self.listener.kind, receive_ms)
        self._count(written)
        if written < len(messages):
            self.pending, self.pending_index, self.pending_ms = messages, written, receive_ms
            self.listener.pause(self)

    def _count(self, written: int) -> None:
        """Counts the messages the last write_batch wrote."""
        stats = self.stats
        stats.messages += written
        stats.message_bytes += self.listener.ring.last_written_bytes

    def flush_pending(self) -> bool:
        """Writes held-back messages; True once none is left."""
        if not self.pending:
            return True
        start = self.pending_index
        written = self.listener.ring.write_batch(self.pending, start, self.source, self.port,
                                                 self.listener.kind, self.pending_ms)
        self._count(written)
        self.pending_index += written
        if self.pending_index < len(self.pending):
            return False
        self.pending = []
        self.pending_index = 0
        return True

    def resume(self) -> None:
        if self.closing:
            self.close()
        else:
            self.listener.loop.watch(self.sock, self.on_event, readable=True,
                                     writable=bool(self.outgoing))

    # --- closing -------------------------------------------------------------------------
    def end_of_stream(self) -> None:
        """The peer closed (or we are shutting down): deliver the unterminated tail, close."""
        if self.closing:
            return
        self.closing = True
        self.listener.loop.remove_reader(self.sock)
        if self.negotiating:
            self.close()  # nothing was framed yet
            return
        tail = self.session.end_of_stream()
        dropped = self.session.incomplete_dropped
        if dropped:
            self.listener.counters.incomplete_dropped += dropped
            self.listener.problems.warning(
                "incomplete octet-counted message dropped at connection close",
                f"from {self.peer} port {self.port}")
        if self.pending:
            self.pending = self.pending[self.pending_index:] + tail
            self.pending_index = 0
            return  # paused: closed by resume() once the ring took everything
        self.deliver(tail)
        if not self.pending:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = self.closing = True
        limits = self.listener.limits
        limits.partial_changed(-self.partial_bytes)
        self.partial_bytes = 0
        if self.holds_handshake_slot:
            limits.release_handshake_slot(self)
        if self.negotiation_timer is not None:
            self.negotiation_timer.cancel()
            self.negotiation_timer = None
        self.listener.loop.remove_reader(self.sock)
        self.sock.close()
        self.listener.forget(self)
