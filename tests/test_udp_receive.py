"""Syslog datagrams from a socket straight into the ring (kinesyslog._fast.udp), with real
sockets on 127.0.0.1 and ::1 and a real ring: the entries must be what frame_datagram,
address_text and write_batch gave before, and the listener must count them as before."""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast.framing import frame_datagram
from kinesyslog._fast.proxy import address_text
from kinesyslog._fast.ring import Ring
from kinesyslog._fast.udp import DatagramReceiver
from kinesyslog.config import Config
from kinesyslog.eventloop import EventLoop
from kinesyslog.listeners import (
    UDP_READ_BATCH,
    UDP_RECVMMSG_BATCH,
    Listener,
    ListenerCounters,
    bind_all,
)
from kinesyslog.tls import TlsContextHolder

WAIT = 5.0
RING_CAPACITY = 1 << 20  # the smallest ring: entries up to 256 KiB
PORT = 514
KIND = constants.KIND_SYSLOG
RECEIVE_MS = 1_700_000_000_123
MAX_SIZE = 16
Counts = tuple[int, int, int, int, int, int]  # receive() without `drained`


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Ring]:
    ring = Ring(str(tmp_path / "ring.mmap"), RING_CAPACITY)
    yield ring
    ring.close()


def receiver_socket(family: int = socket.AF_INET, address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = receiver_socket()
    yield sock
    sock.close()


def send(datagrams: list[bytes], to: socket.socket, source: str = "127.0.0.1") -> None:
    """Sends from `source` to the receiver's port on the loopback address of that family."""
    family, destination = ((socket.AF_INET6, "::1") if ":" in source
                           else (socket.AF_INET, "127.0.0.1"))
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.bind((source, 0))
        for datagram in datagrams:
            sender.sendto(datagram, (destination, to.getsockname()[1]))


def receive_all(receiver: DatagramReceiver, sock: socket.socket, ring: Ring,
                expected: int) -> Counts:
    """Sums receive() until `expected` datagrams were read and the socket is drained."""
    totals = [0] * 6
    deadline = time.monotonic() + WAIT
    while True:
        *counts, drained = receiver.receive(sock.fileno(), ring, PORT, KIND, RECEIVE_MS)
        totals = [total + count for total, count in zip(totals, counts)]
        if totals[0] >= expected and drained:
            datagrams, messages, message_bytes, empty, truncated, ring_full = totals
            return datagrams, messages, message_bytes, empty, truncated, ring_full
        assert time.monotonic() < deadline, f"{totals[0]} of {expected} datagrams arrived"
        if drained:
            select.select([sock], [], [], 0.05)


def entries(ring: Ring) -> list[tuple[int, int, bytes, int, bytes]]:
    return ring.read_batch(100_000)


# --- framing: exactly frame_datagram's result --------------------------------------------

def framing_cases(max_size: int) -> list[bytes]:
    """Datagrams around the limit with every ending the rules treat apart."""
    endings = [b"", b"\n", b"\r\n", b"\x00", b"\r\x00", b"\r", b"\n\n", b"\r\n\n"]
    cases = [b"", b"\n", b"\r\n", b"\x00", b"\r", b"\n\r\n", b"a\nb", b"<13>hello"]
    for length in (1, max_size - 2, max_size - 1, max_size, max_size + 1, max_size + 2,
                   max_size + 3, 3 * max_size):
        body = bytes(ord("a") + i % 26 for i in range(length))
        cases += [body[: max(0, length - len(ending))] + ending for ending in endings]
        cases += [body + ending for ending in endings]
    return cases


@pytest.mark.parametrize("max_size", [1, MAX_SIZE, 1024])
def test_framing_is_frame_datagrams(max_size: int, udp: socket.socket, ring: Ring) -> None:
    datagrams = framing_cases(max_size)
    expected = [frame_datagram(datagram, max_size) for datagram in datagrams]
    receiver = DatagramReceiver(max_size, UDP_RECVMMSG_BATCH, 16)
    send(datagrams, udp)
    counts = receive_all(receiver, udp, ring, len(datagrams))
    written = [message for message, _ in expected if message]
    assert counts == (len(datagrams), len(written), sum(map(len, written)),
                      sum(not message for message, _ in expected),
                      sum(truncated for message, truncated in expected if message), 0)
    assert [entry[4] for entry in entries(ring)] == written


def test_a_line_end_just_past_the_limit_is_removed_before_the_cut(
        udp: socket.socket, ring: Ring) -> None:
    receiver = DatagramReceiver(MAX_SIZE, UDP_RECVMMSG_BATCH, 16)
    assert receiver.buffer_size == MAX_SIZE + 2
    full = b"x" * MAX_SIZE
    send([full + b"\r\n", full + b"\n", full + b"\x00", full + b"y", full + b"\r\n\n",
          full + b"yz\n", full], udp)
    counts = receive_all(receiver, udp, ring, 7)
    assert counts == (7, 7, 7 * MAX_SIZE, 0, 3, 0)  # truncated: +y, +\r\n\n and +yz\n
    assert [entry[4] for entry in entries(ring)] == [full] * 7


def test_datagrams_up_to_the_largest_are_framed_whole_with_a_large_limit(
        udp: socket.socket, ring: Ring) -> None:
    """With --max-message-size near 64 KiB the buffers are UDP_RECV_SIZE, as before."""
    max_size = constants.DEFAULT_MAX_MESSAGE_SIZE
    receiver = DatagramReceiver(max_size, 4, 16)
    assert receiver.buffer_size == constants.UDP_RECV_SIZE
    largest = b"y" * 65_507  # IPv4's largest UDP payload
    send([largest, largest[:-1] + b"\n", b"short\r\n"], udp)
    assert receive_all(receiver, udp, ring, 3) == (3, 3, 2 * 65_507 - 1 + 5, 0, 0, 0)
    assert [entry[4] for entry in entries(ring)] == [largest, largest[:-1], b"short"]


def test_empty_datagrams_are_counted_not_written(udp: socket.socket, ring: Ring) -> None:
    receiver = DatagramReceiver(MAX_SIZE, UDP_RECVMMSG_BATCH, 16)
    send([b"", b"\n", b"one", b"\r\n", b"\x00", b"two\n"], udp)
    assert receive_all(receiver, udp, ring, 6) == (6, 2, 6, 4, 0, 0)
    assert [entry[4] for entry in entries(ring)] == [b"one", b"two"]
    assert ring.write_position == 2 * Ring.entry_size(3, len(b"127.0.0.1"))


# --- entries: source text, port, kind, time ----------------------------------------------

def test_entries_carry_source_port_kind_and_time(udp: socket.socket, ring: Ring) -> None:
    sources = ["127.0.0.1", "127.0.0.2", "127.10.200.3", "127.255.255.254", "127.0.0.2"]
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    for index, source in enumerate(sources):  # each source in turn: the cache must follow
        send([f"m{index}".encode()], udp, source)
    receive_all(receiver, udp, ring, len(sources))
    assert entries(ring) == [
        (KIND, PORT, address_text(source).encode(), RECEIVE_MS, f"m{index}".encode())
        for index, source in enumerate(sources)]


def test_kind_and_port_are_written_as_given(udp: socket.socket, ring: Ring) -> None:
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    send([b"gelf-kind"], udp)
    select.select([udp], [], [], WAIT)
    receiver.receive(udp.fileno(), ring, 65535, constants.KIND_GELF, -5)
    assert entries(ring) == [(constants.KIND_GELF, 65535, b"127.0.0.1", -5, b"gelf-kind")]


@needs_ipv6
def test_ipv6_sources(ring: Ring) -> None:
    sock = receiver_socket(socket.AF_INET6, "::1")
    try:
        receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
        send([b"six", b"six again"], sock, "::1")
        receive_all(receiver, sock, ring, 2)
        assert [(entry[2], entry[4]) for entry in entries(ring)] == [
            (b"::1", b"six"), (b"::1", b"six again")]
    finally:
        sock.close()


@needs_ipv6
def test_dual_stack_gives_ipv4_peers_as_ipv4_text(ring: Ring) -> None:
    """On a socket bound to :: an IPv4 peer arrives as ::ffff:a.b.c.d (IPv4-mapped)."""
    sock = receiver_socket(socket.AF_INET6, "::")
    try:
        receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
        order = ["127.0.0.1", "::1", "127.0.0.1", "127.1.2.3", "::1", "::1"]
        for index, source in enumerate(order):
            send([f"m{index}".encode()], sock, source)
        receive_all(receiver, sock, ring, len(order))
        assert [(entry[2], entry[4]) for entry in entries(ring)] == [
            (address_text(source).encode(), f"m{index}".encode())
            for index, source in enumerate(order)]
        assert address_text("::ffff:127.1.2.3") == "127.1.2.3"
    finally:
        sock.close()


# --- batches and a full ring -------------------------------------------------------------

def test_more_datagrams_than_one_batch(udp: socket.socket, ring: Ring) -> None:
    receiver = DatagramReceiver(1024, 8, 16)
    datagrams = [f"message {index}\n".encode() for index in range(150)]
    send(datagrams, udp)
    select.select([udp], [], [], WAIT)
    first = receiver.receive(udp.fileno(), ring, PORT, KIND, RECEIVE_MS)
    assert first[0] == 8 and first[1] == 8 and first[6] is False  # a full batch: maybe more
    receive_all(receiver, udp, ring, 150 - 8)
    assert [entry[4] for entry in entries(ring)] == [datagram[:-1] for datagram in datagrams]
    assert receiver.receive(udp.fileno(), ring, PORT, KIND, RECEIVE_MS) == (
        0, 0, 0, 0, 0, 0, True)


def fill(ring: Ring, leave: int) -> int:
    """Writes five equal entries (no source) so that exactly `leave` bytes stay free at the
    end of the data area; returns their size."""
    size = (ring.capacity - leave) // 5
    assert size * 5 == ring.capacity - leave and size % 8 == 0
    filler = b"f" * (size - Ring.entry_size(0, 0) + 4)
    assert Ring.entry_size(len(filler), 0) == size
    assert ring.write_batch([filler] * 5, 0, b"", 1, KIND, 0) == 5
    return size


def test_ring_full_mid_batch_drops_the_rest_whole(udp: socket.socket, ring: Ring) -> None:
    message = b"m" * 100
    entry = Ring.entry_size(len(message) + 2, len(b"127.0.0.1"))
    fill(ring, 10 * entry + 96)  # room for ten, and 96 bytes that hold no entry
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    send([message + b"%02d" % index for index in range(15)], udp)
    counts = receive_all(receiver, udp, ring, 15)
    assert counts == (15, 10, 10 * 102, 0, 0, 5)
    assert ring.write_position == ring.capacity - 96  # no wrap marker, nothing partial
    assert [entry[4] for entry in entries(ring)[5:]] == [
        message + b"%02d" % index for index in range(10)]
    assert entries(ring) == []


def test_a_batch_wraps_around_the_end_of_the_ring(udp: socket.socket, ring: Ring) -> None:
    message = b"w" * 100
    entry = Ring.entry_size(len(message) + 2, len(b"127.0.0.1"))
    fill(ring, 10 * entry + 96)
    assert len(entries(ring)) == 5
    ring.commit()  # the whole area is free again; the next entries start near its end
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    sent = [message + b"%02d" % index for index in range(25)]
    send(sent, udp)
    assert receive_all(receiver, udp, ring, 25) == (25, 25, 25 * 102, 0, 0, 0)
    assert [entry[4] for entry in entries(ring)] == sent
    assert ring.write_position == ring.capacity + 15 * entry  # 96 bytes skipped by the marker


def test_nothing_is_written_when_the_ring_has_no_room(udp: socket.socket, ring: Ring) -> None:
    fill(ring, 16)  # less than the smallest entry
    position = ring.write_position
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    send([b"a", b"", b"toolong" * 200], udp)
    assert receive_all(receiver, udp, ring, 3) == (3, 0, 0, 1, 1, 2)
    assert ring.write_position == position


# --- errors ------------------------------------------------------------------------------

def test_receive_errors_raise_oserror(ring: Ring) -> None:
    receiver = DatagramReceiver(1024, UDP_RECVMMSG_BATCH, 16)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as raised:
            receiver.receive(read_end, ring, PORT, KIND, RECEIVE_MS)
        assert raised.value.errno == errno.ENOTSOCK
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(OSError):
        receiver.receive(-1, ring, PORT, KIND, RECEIVE_MS)  # EBADF: a closed socket


def test_bad_arguments(udp: socket.socket, ring: Ring, tmp_path: Path) -> None:
    for bad in ((0, 8, 16), (1024, 0, 16), (1024, 1025, 16), (1024, 8, 0)):
        with pytest.raises(ValueError):
            DatagramReceiver(*bad)
    receiver = DatagramReceiver(1024, 8, 16)
    with pytest.raises(ValueError, match="port"):
        receiver.receive(udp.fileno(), ring, 65536, KIND, 0)
    with pytest.raises(ValueError, match="kind"):
        receiver.receive(udp.fileno(), ring, PORT, 256, 0)
    with pytest.raises(ValueError, match="do not fit"):
        DatagramReceiver(300_000, 8, 16).receive(udp.fileno(), ring, PORT, KIND, 0)
    closed = Ring(str(tmp_path / "closed.mmap"), RING_CAPACITY)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        receiver.receive(udp.fileno(), closed, PORT, KIND, 0)


# --- the listener's UDP path -------------------------------------------------------------

class UdpListener:
    """A Listener on one UDP port of 127.0.0.1, run in process."""

    def __init__(self, tmp_path: Path, **options: object) -> None:
        port = bind_free_udp_port()
        self.config = Config(stream=None, address="127.0.0.1", udp_ports=(port,),
                             spool_dir=tmp_path, output_dir=tmp_path / "out",
                             **options)  # type: ignore[arg-type]
        self.loop = EventLoop()
        self.ring = Ring(str(tmp_path / "ring.mmap"), constants.RING_MIN_CAPACITY)
        self.counters = ListenerCounters()
        self.listener = Listener(self.loop, bind_all(self.config), self.ring, self.config,
                                 self.counters, TlsContextHolder(self.config))
        self.listener.start()
        self.sock = self.listener.sockets[0].sock
        self.port = port

    def run_until_read(self, datagrams: int) -> None:
        """Runs the loop until the socket is empty and `datagrams` were accounted for."""
        counters = self.counters

        def done() -> bool:
            stats = counters.port("udp", self.port)
            seen = stats.messages + counters.empty_datagrams + counters.udp_dropped_ring_full
            return seen >= datagrams

        assert self.loop.run_until(done, time.monotonic() + WAIT)

    def close(self) -> None:
        self.listener.close()
        self.loop.close()
        self.ring.close()


def bind_free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def udp_listener(tmp_path: Path) -> Iterator[UdpListener]:
    harness = UdpListener(tmp_path, max_message_size=1024)
    yield harness
    harness.close()


def test_listener_counts_messages_bytes_truncation_and_empty(udp_listener: UdpListener) -> None:
    long = b"L" * 1500
    send([b"<13>one\n", b"", b"\r\n", long, b"<13>two"], udp_listener.sock)
    udp_listener.run_until_read(5)
    stats = udp_listener.counters.port("udp", udp_listener.port)
    assert (stats.messages, stats.message_bytes, stats.truncated) == (3, 7 + 1024 + 7, 1)
    assert udp_listener.counters.empty_datagrams == 2
    assert [entry[4] for entry in udp_listener.ring.read_batch(10)] == [
        b"<13>one", long[:1024], b"<13>two"]


def test_listener_reads_a_bounded_number_per_event(udp_listener: UdpListener) -> None:
    count = UDP_READ_BATCH + 10
    send([b"%d" % index for index in range(count)], udp_listener.sock)
    select.select([udp_listener.sock], [], [], WAIT)
    bound = udp_listener.listener.sockets[0]
    udp_listener.listener.drain_datagrams()
    stats = udp_listener.counters.port("udp", bound.port)
    assert stats.messages == UDP_READ_BATCH  # the rest waits for the next readiness event
    udp_listener.run_until_read(count)
    assert stats.messages == count


def test_listener_counts_and_logs_ring_full(udp_listener: UdpListener,
                                           caplog: pytest.LogCaptureFixture) -> None:
    fill(udp_listener.ring, 16)
    with caplog.at_level(logging.WARNING, logger="kinesyslog.listener"):
        send([b"dropped %d" % index for index in range(3)], udp_listener.sock)
        udp_listener.run_until_read(3)
        udp_listener.listener.problems.flush(force=True)
    assert udp_listener.counters.udp_dropped_ring_full == 3
    assert [record.getMessage() for record in caplog.records] == [
        "ring full: dropping UDP datagrams: 3 dropped so far",
        "ring full: dropping UDP datagrams: 2 more since the last report"]


def test_listener_logs_receive_errors(udp_listener: UdpListener,
                                      caplog: pytest.LogCaptureFixture) -> None:
    bound = udp_listener.listener.sockets[0]
    udp_listener.loop.remove_reader(bound.sock)
    bound.sock.close()
    with caplog.at_level(logging.WARNING, logger="kinesyslog.listener"):
        udp_listener.listener.drain_datagrams()
    assert [record.getMessage() for record in caplog.records] == [
        f"UDP port {bound.port}: receive failed: Bad file descriptor"]
