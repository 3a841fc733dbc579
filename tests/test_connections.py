"""The listener's connection handling, in process with real sockets on 127.0.0.1: closed
connections are freed at once, one source cannot take every slot, idle connections close."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.eventloop import CANCELLED_TIMERS_COMPACT_MIN, EventLoop
from kinesyslog.listeners import Listener, ListenerCounters, bind_all
from kinesyslog.session import CloseReason
from kinesyslog.tls import TlsContextHolder
from tests.certs import issue, make_ca
from tests.e2e.relay_process import free_port

WAIT = 5.0
PER_SOURCE = CloseReason.MAX_CONNECTIONS_PER_SOURCE


class Harness:
    def __init__(self, tmp_path: Path, **options: object) -> None:
        self.config = Config(stream=None, address="127.0.0.1", spool_dir=tmp_path,
                             output_dir=tmp_path / "out", **options)  # type: ignore[arg-type]
        self.loop = EventLoop()
        self.ring = Ring(str(tmp_path / "ring.mmap"), constants.RING_MIN_CAPACITY)
        self.ring.open_producer()
        self.counters = ListenerCounters()
        self.listener = Listener(self.loop, bind_all(self.config), self.ring, self.config,
                                 self.counters, TlsContextHolder(self.config))
        self.listener.start()
        self.clients: list[socket.socket] = []

    def port(self, transport: str) -> int:
        return next(b.port for b in self.listener.sockets if b.transport == transport)

    def connect(self, transport: str = "tcp", source: str = "127.0.0.1") -> socket.socket:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.bind((source, 0))
        client.connect(("127.0.0.1", self.port(transport)))
        client.settimeout(WAIT)
        self.clients.append(client)
        return client

    def run_until(self, predicate: object) -> None:
        assert self.loop.run_until(predicate, time.monotonic() + WAIT)  # type: ignore[arg-type]

    def messages(self) -> list[bytes]:
        reader = Ring(self.ring.path, 0)
        try:
            return [entry[4] for entry in reader.read_batch(10_000)]
        finally:
            reader.close()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for connection in list(self.listener.connections):
            connection.close()
        self.listener.close()
        self.loop.close()
        self.ring.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[object]:
    made: list[Harness] = []

    def factory(**options: object) -> Harness:
        harness = Harness(tmp_path, **options)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


def tls_handshake(harness: Harness, sock: socket.socket, ca: Path) -> ssl.SSLSocket:
    """The client side of a handshake, taking turns with the relay's loop."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    client = context.wrap_socket(sock, do_handshake_on_connect=False)
    client.setblocking(False)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            assert time.monotonic() < deadline
            harness.loop.run_until(lambda: False, time.monotonic() + 0.01)
    client.setblocking(True)
    return client


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def closed_by_relay(client: socket.socket) -> bool:
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_rejected_tls_connection_is_freed_at_once(make: object, tmp_path: Path) -> None:
    """No timer, selector key or buffer keeps a closed connection (with its TLS buffers and
    up to 256 KiB of unread input) alive: reference counting frees it when it closes."""
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    harness = make(tls_ports=(free_port(),), cert=server.cert, key=server.key)  # type: ignore[operator]
    gc.disable()
    try:
        for payload in (os.urandom(256 * 1024), b"<13>1 - h app - - - plaintext\n"):
            client = harness.connect("tls")
            harness.run_until(lambda: harness.listener.connections)
            (connection,) = harness.listener.connections
            freed = weakref.ref(connection)
            del connection
            client.sendall(payload)
            harness.run_until(lambda: not harness.listener.connections)
            assert freed() is None
        client = harness.connect("tls")  # and one the peer gives up on mid-handshake
        harness.run_until(lambda: harness.listener.connections)
        freed = weakref.ref(next(iter(harness.listener.connections)))
        client.close()
        harness.run_until(lambda: not harness.listener.connections)
        assert freed() is None
    finally:
        gc.enable()
    assert harness.counters.rejected[CloseReason.TLS_HANDSHAKE] == 2
    assert len(harness.loop._timers) < 10  # the cancelled negotiation timers left the heap


def test_cancelled_timers_release_their_callbacks_and_leave_the_heap() -> None:
    loop = EventLoop()
    try:
        class Owner:
            def fire(self) -> None:
                raise AssertionError("a cancelled timer fired")

        owners = [Owner() for _ in range(1000)]
        refs = [weakref.ref(owner) for owner in owners]
        timers = [loop.call_later(60, owner.fire) for owner in owners]
        del owners
        for timer in timers:
            timer.cancel()
        assert all(ref() is None for ref in refs)
        assert len(loop._timers) <= CANCELLED_TIMERS_COMPACT_MIN
        fired: list[int] = []
        loop.call_later(0, lambda: fired.append(1))
        loop.run_until(lambda: bool(fired), time.monotonic() + WAIT)
        assert fired == [1]
    finally:
        loop.close()


def test_one_source_cannot_take_every_slot(make: object) -> None:
    harness = make(tcp_ports=(free_port(),), max_connections_per_source=2)  # type: ignore[operator]
    first, second = harness.connect(), harness.connect()
    harness.run_until(lambda: len(harness.listener.connections) == 2)
    third = harness.connect()
    harness.run_until(lambda: harness.counters.rejected[PER_SOURCE] == 1)
    assert closed_by_relay(third)
    other = harness.connect(source="127.0.0.2")
    harness.run_until(lambda: len(harness.listener.connections) == 3)
    other.sendall(b"from another source\n")
    harness.run_until(lambda: harness.messages() == [b"from another source"])
    first.close()  # a slot of 127.0.0.1 is free again
    harness.run_until(lambda: len(harness.listener.connections) == 2)
    harness.connect()
    harness.run_until(lambda: len(harness.listener.connections) == 3)
    assert harness.counters.rejected[PER_SOURCE] == 1
    second.sendall(b"still served\n")
    harness.run_until(lambda: b"still served" in harness.messages())


def test_proxy_ports_count_the_header_source_not_the_balancer(make: object) -> None:
    port = free_port()
    harness = make(tcp_ports=(port,), proxy_protocol_ports=(port,),  # type: ignore[operator]
                   max_connections_per_source=1)
    clients = []
    for client_address in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
        client = harness.connect()
        client.sendall(f"PROXY TCP4 {client_address} 127.0.0.1 5000 514\r\nhello\n".encode())
        clients.append(client)
    harness.run_until(lambda: harness.counters.rejected[PER_SOURCE] == 1)
    assert closed_by_relay(clients[2])
    harness.run_until(lambda: len(harness.messages()) == 2)
    assert len(harness.listener.connections) == 2


def test_idle_connections_are_closed_after_the_idle_timeout(make: object) -> None:
    harness = make(tcp_ports=(free_port(),), idle_timeout=0.3)  # type: ignore[operator]
    idle, busy = harness.connect(), harness.connect()
    idle.sendall(b"an unterminated tail")
    harness.run_until(lambda: len(harness.listener.connections) == 2)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        busy.sendall(b"tick\n")
        harness.loop.run_until(lambda: False, time.monotonic() + 0.05)
        harness.listener.limits.expire_idle()
    assert harness.counters.rejected[CloseReason.IDLE_TIMEOUT] == 1
    assert closed_by_relay(idle)
    assert len(harness.listener.connections) == 1
    assert b"an unterminated tail" in harness.messages()  # delivered, as at a peer's close


def test_when_every_slot_is_taken_the_idlest_connection_gives_way(
        make: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "IDLE_RECLAIM_AFTER", 0.2)
    harness = make(tcp_ports=(free_port(),), max_connections=2)  # type: ignore[operator]
    oldest, newer = harness.connect(), harness.connect()
    harness.run_until(lambda: len(harness.listener.connections) == 2)
    early = harness.connect()  # nobody idle long enough yet: refused
    harness.run_until(lambda: harness.counters.rejected[CloseReason.MAX_CONNECTIONS] == 1)
    assert closed_by_relay(early)
    time.sleep(0.3)
    newer.sendall(b"newer is active\n")
    harness.run_until(lambda: harness.messages() == [b"newer is active"])
    late = harness.connect()
    harness.run_until(lambda: harness.counters.rejected[CloseReason.IDLE_TIMEOUT] == 1)
    assert closed_by_relay(oldest)
    late.sendall(b"admitted\n")
    harness.run_until(lambda: b"admitted" in harness.messages())
    assert len(harness.listener.connections) == 2


def test_tls_errors_after_the_handshake_are_counted(make: object, tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    harness = make(tls_ports=(free_port(),), cert=server.cert, key=server.key)  # type: ignore[operator]
    client = tls_handshake(harness, harness.connect("tls"), ca.cert)
    client.sendall(b"<13>1 - h app - - - over TLS\n")
    harness.run_until(lambda: harness.messages() == [b"<13>1 - h app - - - over TLS"])
    raw = socket.socket(fileno=client.detach())  # the same connection, without TLS
    harness.clients.append(raw)
    raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a record no key can open
    harness.run_until(lambda: harness.counters.rejected[CloseReason.TLS_ERROR] == 1)
    harness.run_until(lambda: not harness.listener.connections)
    assert harness.counters.rejected[CloseReason.TLS_HANDSHAKE] == 0


def test_unfinished_messages_share_one_budget_and_the_biggest_holders_go(
        make: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "PARTIAL_MESSAGE_BUDGET", 200_000)
    harness = make(tcp_ports=(free_port(),))  # type: ignore[operator]
    normal = harness.connect(source="127.0.0.2")
    normal.sendall(b"<13>1 - h app - - - a normal line, then half of one")
    hogs = [harness.connect() for _ in range(5)]
    harness.run_until(lambda: len(harness.listener.connections) == 6)
    for hog in hogs:
        hog.sendall(b"x" * 60_000)  # no line feed: held as an unfinished message
        harness.loop.run_until(lambda: False, time.monotonic() + 0.05)
    # The fourth hog went over the budget: two of the biggest went, down to 3/4 of it.
    harness.run_until(lambda: harness.counters.rejected[CloseReason.BUFFER_LIMIT] == 2)
    assert harness.listener.limits.partial_bytes <= 200_000
    assert harness.listener.limits.partial_bytes == sum(
        c.partial_bytes for c in harness.listener.connections)
    assert len(harness.listener.connections) == 4  # the normal one and three hogs
    normal.sendall(b" which ends here\n")
    harness.run_until(lambda: len(harness.messages()) == 1)
    assert harness.messages() == [
        b"<13>1 - h app - - - a normal line, then half of one which ends here"]
    rejected = harness.counters.rejected
    assert harness.counters.incomplete_dropped == rejected[CloseReason.BUFFER_LIMIT]


def test_half_open_tls_handshakes_wait_for_a_slot_unread(
        make: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only MAX_TLS_HANDSHAKES run at once; the next connection is read when one ends."""
    monkeypatch.setattr(constants, "MAX_TLS_HANDSHAKES", 2)
    ca = make_ca(tmp_path, "ca")
    server = issue(ca, tmp_path, "server")
    harness = make(tls_ports=(free_port(),), cert=server.cert, key=server.key)  # type: ignore[operator]
    hello = client_hello()
    silent = [harness.connect("tls") for _ in range(2)]
    for client in silent:
        client.sendall(hello)  # then nothing more: a half-open handshake
    harness.run_until(lambda: harness.listener.limits.handshakes == 2)
    waiting = harness.connect("tls")
    harness.run_until(lambda: len(harness.listener.connections) == 3)
    harness.loop.run_until(lambda: False, time.monotonic() + 0.1)
    assert harness.listener.limits.handshakes == 2
    (queued,) = [c for c in harness.listener.connections if not c.holds_handshake_slot]
    assert not harness.loop.is_reading(queued.sock)
    silent[0].close()  # a slot frees: the waiting sender's handshake runs
    client = tls_handshake(harness, waiting, ca.cert)
    client.sendall(b"<13>1 - h app - - - after the wait\n")
    harness.run_until(lambda: harness.messages() == [b"<13>1 - h app - - - after the wait"])
    assert harness.listener.limits.handshakes == 1  # the other silent one


def test_a_connection_held_back_by_a_full_ring_loses_nothing_and_keeps_the_order(
        make: object) -> None:
    """The framer writes into the ring until it is full; the rest waits, the socket unread,
    until the worker (here: a reader of the same file) makes room. 24 MiB through a 16 MiB
    ring: every message once, in order, counted once."""
    harness = make(tcp_ports=(free_port(),))  # type: ignore[operator]
    messages = [b"<13>%06d " % index + b"m" * 990 for index in range(24_000)]
    client = harness.connect()
    sender = threading.Thread(target=client.sendall,
                              args=(b"".join(message + b"\n" for message in messages),))
    sender.start()
    reader = Ring(harness.ring.path, 0)
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        held_back = False
        while len(received) < len(messages) and time.monotonic() < deadline:
            harness.loop.run_until(lambda: False, time.monotonic() + 0.01)
            held_back = held_back or bool(harness.listener.paused)
            if held_back or not sender.is_alive():
                batch = reader.read_batch(4096)
                received += [entry[4] for entry in batch]
                reader.commit()
    finally:
        reader.close()
        sender.join(WAIT)
    assert held_back
    assert received == messages
    port = harness.counters.port("tcp", harness.port("tcp"))
    assert (port.messages, port.message_bytes) == (len(messages), sum(map(len, messages)))
