"""UDP and TCP sockets of the listener process: framing into the ring, with back-pressure."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kinesyslog import constants
from kinesyslog._fast.framing import StreamFramer, frame_datagram
from kinesyslog.config import Config, ConfigError
from kinesyslog.logs import RateLimitedLog

if TYPE_CHECKING:
    from kinesyslog._fast.ring import Ring
    from kinesyslog.eventloop import EventLoop

log = logging.getLogger("kinesyslog.listener")
BACKPRESSURE_RETRY = 0.005
ACCEPT_BATCH = 64
UDP_READ_BATCH = 256
UDP_SOCKET_BUFFER = 8 * 1024 * 1024
SOURCE_CACHE_SIZE = 4096


@dataclass
class ListenerCounters:
    messages: int = 0
    message_bytes: int = 0
    truncated: int = 0
    incomplete_dropped: int = 0
    empty_datagrams: int = 0
    udp_dropped_ring_full: int = 0
    connections_opened: int = 0
    connections_open: int = 0


@dataclass
class BoundSocket:
    transport: str  # "udp" or "tcp"
    port: int
    sock: socket.socket


def source_text(host: str) -> str:
    """The sender's address as RFC 5952 text; IPv4-mapped IPv6 peers as plain IPv4."""
    address, _, scope = host.partition("%")
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return f"{parsed}%{scope}" if scope else str(parsed)


def bind_all(config: Config) -> list[BoundSocket]:
    """Binds every listener; on any failure closes what was bound and raises ConfigError."""
    family = socket.AF_INET6 if ":" in config.address else socket.AF_INET
    wanted = [("udp", port, "--udp-port") for port in config.udp_ports]
    wanted += [("tcp", port, "--tcp-port") for port in config.tcp_ports]
    bound: list[BoundSocket] = []
    try:
        for transport, port, option in wanted:
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
            sock = socket.socket(family, kind)
            bound.append(BoundSocket(transport, port, sock))
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if transport == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER)
            try:
                sock.bind((config.address, port))
            except OSError as error:
                raise ConfigError(_bind_error(option, config.address, port, error)) from None
            if transport == "tcp":
                sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except BaseException:
        for item in bound:
            item.sock.close()
        raise
    return bound


def _bind_error(option: str, address: str, port: int, error: OSError) -> str:
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
                 counters: ListenerCounters) -> None:
        self.loop = loop
        self.sockets = sockets
        self.ring = ring
        self.config = config
        self.counters = counters
        self.kind = constants.KIND_GELF if config.gelf else constants.KIND_SYSLOG
        self.connections: set[TcpConnection] = set()
        self.paused: set[TcpConnection] = set()
        self.recv_buffer = bytearray(constants.TCP_RECV_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        self.problems = RateLimitedLog(log)
        self._sources: dict[object, bytes] = {}
        self._retry_scheduled = False

    def start(self) -> None:
        for bound in self.sockets:
            if bound.transport == "udp":
                self.loop.add_reader(bound.sock, lambda b=bound: self._on_datagrams(b))
            else:
                self.loop.add_reader(bound.sock, lambda b=bound: self._on_accept(b))
            log.info("listening on %s %s port %d", bound.transport.upper(),
                     self.config.address, bound.port)

    def source_of(self, address: tuple) -> bytes:
        source = self._sources.get(address[0])
        if source is None:
            if len(self._sources) >= SOURCE_CACHE_SIZE:
                self._sources.clear()
            source = source_text(address[0]).encode()[: constants.MAX_SOURCE_LENGTH]
            self._sources[address[0]] = source
        return source

    # --- UDP -----------------------------------------------------------------------------
    def _on_datagrams(self, bound: BoundSocket) -> None:
        max_size = self.config.max_message_size
        counters = self.counters
        for _ in range(UDP_READ_BATCH):
            try:
                data, address = bound.sock.recvfrom(constants.UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.problems.warning(f"UDP port {bound.port}: receive failed",
                                      error.strerror or "")
                return
            message, truncated = frame_datagram(data, max_size)
            if not message:
                counters.empty_datagrams += 1
                continue
            counters.truncated += truncated
            receive_ms = int(time.time() * 1000)
            if self.ring.write_batch([message], 0, self.source_of(address), bound.port,
                                     self.kind, receive_ms):
                counters.messages += 1
                counters.message_bytes += len(message)
            else:
                counters.udp_dropped_ring_full += 1
                self.problems.warning("ring full: dropping UDP datagrams",
                                      f"{counters.udp_dropped_ring_full} dropped so far")

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
                self.problems.warning(f"TCP port {bound.port}: accept failed", error.strerror or "")
                return
            sock.setblocking(False)
            connection = TcpConnection(self, sock, self.source_of(address), bound.port)
            self.connections.add(connection)
            self.counters.connections_opened += 1
            self.counters.connections_open = len(self.connections)
            self.loop.add_reader(sock, connection.on_readable)

    def pause(self, connection: TcpConnection) -> None:
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

    def forget(self, connection: TcpConnection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)
        self.counters.connections_open = len(self.connections)

    # --- shutdown ------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        for bound in self.sockets:
            if bound.transport == "tcp":
                self.loop.remove_reader(bound.sock)
                bound.sock.close()

    def drain_connections(self, deadline: float) -> None:
        """Reads what each connection already has, delivers it, and closes it."""
        for connection in list(self.connections):
            connection.read_until_empty()
            connection.end_of_stream()
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


class TcpConnection:
    __slots__ = ("closing", "framer", "listener", "pending", "pending_index", "pending_ms", "port",
                 "sock", "source", "truncated_seen")

    def __init__(self, listener: Listener, sock: socket.socket, source: bytes, port: int) -> None:
        self.listener = listener
        self.sock = sock
        self.source = source
        self.port = port
        self.framer = StreamFramer(listener.config.max_message_size)
        self.pending: list[bytes] = []
        self.pending_index = 0
        self.pending_ms = 0
        self.closing = False
        self.truncated_seen = 0

    def on_readable(self) -> None:
        if self.sock.fileno() < 0:
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
        self.deliver(self.framer.feed(listener.recv_view[:size]))

    def read_until_empty(self) -> None:
        """At shutdown: frames what the kernel already received for this connection."""
        for _ in range(1024):
            if self.closing or self.pending or self.sock.fileno() < 0:
                return
            try:
                size = self.sock.recv_into(self.listener.recv_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if size == 0:
                return
            self.deliver(self.framer.feed(self.listener.recv_view[:size]))

    def deliver(self, messages: list[bytes]) -> None:
        counters = self.listener.counters
        truncated = self.framer.truncated
        if truncated != self.truncated_seen:
            counters.truncated += truncated - self.truncated_seen
            self.truncated_seen = truncated
        if not messages:
            return
        receive_ms = int(time.time() * 1000)
        written = self.listener.ring.write_batch(messages, 0, self.source, self.port,
                                                 self.listener.kind, receive_ms)
        self._count(messages, 0, written)
        if written < len(messages):
            self.pending, self.pending_index, self.pending_ms = messages, written, receive_ms
            self.listener.pause(self)

    def _count(self, messages: list[bytes], start: int, end: int) -> None:
        counters = self.listener.counters
        counters.messages += end - start
        counters.message_bytes += sum(len(m) for m in messages[start:end])

    def flush_pending(self) -> bool:
        """Writes held-back messages; True once none is left."""
        if not self.pending:
            return True
        start = self.pending_index
        written = self.listener.ring.write_batch(self.pending, start, self.source, self.port,
                                                 self.listener.kind, self.pending_ms)
        self._count(self.pending, start, start + written)
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
            self.listener.loop.add_reader(self.sock, self.on_readable)

    def end_of_stream(self) -> None:
        """The peer closed (or we are shutting down): deliver the unterminated tail, close."""
        if self.closing:
            return
        self.closing = True
        self.listener.loop.remove_reader(self.sock)
        tail = self.framer.close()
        dropped = self.framer.incomplete_dropped
        if dropped:
            self.listener.counters.incomplete_dropped += dropped
            self.listener.problems.warning(
                "incomplete octet-counted message dropped at connection close",
                f"from {self.source.decode()} port {self.port}")
        if self.pending:
            self.pending = self.pending[self.pending_index:] + tail
            self.pending_index = 0
            return  # paused: closed by resume() once the ring took everything
        self.deliver(tail)
        if not self.pending:
            self.close()

    def close(self) -> None:
        self.listener.loop.remove_reader(self.sock)
        self.sock.close()
        self.listener.forget(self)
