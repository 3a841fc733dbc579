"""Scenario 6: bad input while normal senders run. Every normal message must arrive, the
rejects must be counted in the metrics, and the listener's RSS must stay under its idle RSS
plus 64 MiB.

* idle connections: thousands, most from one address (over --max-connections-per-source),
  then from many (over --max-connections), closed by --idle-timeout; a sender from another
  loopback address still gets through;
* garbage: endless lines, huge and malformed octet counts, random bytes on the TLS port at
  full speed, half-open TLS handshakes, plaintext on the TLS port, PROXY garbage and slow
  PROXY headers, empty and oversized UDP datagrams;
* GELF (a relay with --gelf): chunk floods, decompression bombs, endless documents.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import Issued
from tests.chaos import harness
from tests.chaos.harness import MIB, Monitor, Result, Sender, TcpSender
from tests.e2e.relay_process import Relay, wait_for
from tests.e2e.test_gelf import chunks
from tests.e2e.test_tls_proxy import client_context, pki  # noqa: F401  (fixture)
from tests.fake_firehose import FakeFirehose
from tests.proxy_encoder import pack_v1

pytestmark = pytest.mark.chaos

LISTENER_ALLOWANCE = 64 * MIB  # listener RSS at its peak, over its idle RSS
NEGOTIATION_TIMEOUT = 10.0  # the relay's fixed limit for PROXY headers and TLS handshakes
MAX_MESSAGE_SIZE = 16384  # small, so that oversized datagrams are truncated
REJECTED = "kinesyslog_connections_rejected_total"
DROPPED = "kinesyslog_messages_dropped_total"
TRUNCATED = "kinesyslog_messages_truncated_total"


# --- Attackers ---------------------------------------------------------------------------

class Attack(threading.Thread):
    """Runs ``body(halt)`` until it returns or ``halt`` is set; socket errors are expected."""

    def __init__(self, name: str, body: Callable[[threading.Event], None]) -> None:
        super().__init__(name=f"attack-{name}", daemon=True)
        self.body = body
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.body(self.halt)
        except OSError:
            pass
        except BaseException as error:  # reported by the test
            self.error = error

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name} failed: {self.error!r}"


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def open_idle(port: int, source: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            sockets.append(connect(port, source))
    return sockets


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def endless_line(port: int, rate: float = 16 * MIB) -> Callable[[threading.Event], None]:
    def body(halt: threading.Event) -> None:
        chunk = b"A" * 65536
        with connect(port) as sock:
            started, sent = time.monotonic(), 0
            while not halt.is_set():
                if sent > (time.monotonic() - started) * rate:
                    halt.wait(0.005)
                    continue
                try:
                    sock.sendall(chunk)
                except TimeoutError:
                    continue
                sent += len(chunk)
    return body


BAD_OCTET_COUNTS = [
    b"999999999 " + b"x" * 200_000,  # a huge count, cut short by the close
    b"99999999999999999999 nine digits at most\n",
    b"0005 leading zero\n",
    b"-5 negative\n",
    b"12abc not a count\n",
    b"65537 " + b"y" * 65537 + b"\n",  # above --max-message-size: truncated
    b"7 ab",  # incomplete at the close
]


def octet_counts(port: int, rng: random.Random) -> Callable[[threading.Event], None]:
    def body(halt: threading.Event) -> None:
        while not halt.is_set():
            payload = rng.choice([*BAD_OCTET_COUNTS, rng.randbytes(rng.randrange(1, 4096))])
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(payload)
            halt.wait(0.01)
    return body


def random_bytes_on_new_connections(port: int) -> Callable[[threading.Event], None]:
    """TLS garbage: random bytes as fast as new connections can be made."""
    def body(halt: threading.Event) -> None:
        while not halt.is_set():
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(os.urandom(4096))
    return body


def plaintext(port: int) -> Callable[[threading.Event], None]:
    def body(halt: threading.Event) -> None:
        while not halt.is_set():
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(b"<13>1 - h app - - - plaintext on the TLS port\n" * 20)
            halt.wait(0.02)
    return body


def proxy_garbage(port: int, rng: random.Random) -> Callable[[threading.Event], None]:
    junk = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PROXY TCP4 not an address\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n", b"\r\n\r\n\x00\r\nQUIT\n\xff" * 3,
            b"PROXY " + b"9" * 200 + b"\r\n"]

    def body(halt: threading.Event) -> None:
        while not halt.is_set():
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(rng.choice([*junk, rng.randbytes(512)]))
            halt.wait(0.01)
    return body


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def dribble(sockets: list[socket.socket], payload: bytes,
            interval: float) -> Callable[[threading.Event], None]:
    """Sends ``payload`` one byte per ``interval`` on each socket (slow PROXY headers)."""
    def body(halt: threading.Event) -> None:
        for position in range(len(payload)):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(payload[position:position + 1])
            if halt.wait(interval):
                return
    return body


def udp_junk(port: int) -> Callable[[threading.Event], None]:
    def body(halt: threading.Event) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not halt.is_set():
                for _ in range(20):
                    sock.sendto(b"", ("127.0.0.1", port))
                sock.sendto(b"<13>oversized " + b"z" * 65000, ("127.0.0.1", port))
                halt.wait(0.05)
    return body


# --- Common run --------------------------------------------------------------------------

def finish(relay: Relay, monitor: Monitor, fake: FakeFirehose, spool: Path,
           senders: list[Sender]) -> tuple[int, harness.Tally]:
    ending = harness.wind_down(relay, monitor, fake, spool, senders)
    counts = ending.counts
    assert ending.delivered_all or counts.lost or counts.tcp_unread, "wait_delivered disagrees"
    return ending.code, counts


def check(code: int, counts: harness.Tally, relay: Relay, idle_rss: int, peak_rss: int) -> None:
    print(counts.summary())
    assert code == 0, relay.log[-3000:]
    assert counts.lost == 0, counts.summary() + harness.relay_log_tail(relay)
    assert counts.tcp_unread == 0 and counts.spooled == 0, \
        "every normal TCP message must arrive: " + counts.summary() \
        + harness.relay_log_tail(relay)
    growth = (peak_rss - idle_rss) * 1024
    assert growth < LISTENER_ALLOWANCE, \
        f"the listener's RSS grew by {growth / MIB:.0f} MiB (idle {idle_rss // 1024} MiB)"


def listener_idle_rss(relay: Relay) -> int:
    time.sleep(0.5)
    return harness.rss_kib(relay.pid)


# --- The scenarios -----------------------------------------------------------------------

def test_idle_connections(fake_firehose: FakeFirehose, tmp_path: Path,
                          prof: harness.Profile) -> None:
    spool = tmp_path / "spool"
    port, metrics_port = harness.ports(2)
    per_source, maximum = prof.max_per_source, prof.max_connections
    args = harness.chaos_args(spool, port, "--max-connections", str(maximum),
                              "--max-connections-per-source", str(per_source),
                              "--idle-timeout", f"{prof.idle_timeout:g}",
                              metrics_port=metrics_port)
    started = time.monotonic()
    monitor = Monitor(metrics_port, interval=0.2)
    relays: list[Relay] = []
    senders: list[Sender] = []
    held: list[socket.socket] = []
    with harness.stopped_on_exit(relays):
        relay = harness.new_relay(args, fake_firehose).start(wait_ready=False)
        relays.append(relay)
        wait_for(lambda: "kinesyslog ready" in relay.log or relay.process.poll() is not None,
                 30, message="the relay to start")
        assert relay.process.poll() is None, \
            "the relay must accept --max-connections-per-source and --idle-timeout:\n" \
            + relay.log[-2000:]
        monitor.watch(relay)
        idle_rss = listener_idle_rss(relay)
        monitor.start()
        try:
            senders = harness.start_senders(port, prof, source="127.0.0.2")
            time.sleep(0.5)
            # One address opens thousands of connections and sends nothing.
            hog = open_idle(port, "127.0.0.10", prof.idle_connections)
            held += hog
            hog_at = time.monotonic()
            harness.wait_relay(
                relay, lambda: sum(map(closed_by_peer, hog)) >= len(hog) - per_source, 20,
                interval=0.2, message="connections over the per-source cap closed")
            # Meanwhile a sender from another address connects and gets through.
            legit = TcpSender("l0", port, rate=200, source="127.0.0.3", reconnect=False)
            senders.append(legit)
            legit.start()
            harness.wait_relay(relay, lambda: legit.sent >= 100, 10,
                               message="the sender from 127.0.0.3 to get through")
            hog_open = sum(not closed_by_peer(sock) for sock in hog)
            hog_checked_after = time.monotonic() - hog_at
            # Then many addresses, each under its cap, together over --max-connections.
            crowd = []
            for number in range(maximum // per_source + 2):
                crowd += open_idle(port, f"127.0.1.{number + 1}", per_source)
            held += crowd
            harness.wait_relay(
                relay, lambda: harness.metric(harness.scrape(metrics_port), REJECTED,
                                              reason="max_connections") > 0, 20,
                interval=0.2, message="connections over --max-connections rejected")
            # --idle-timeout closes every idle connection; the senders keep theirs.
            harness.wait_relay(relay, lambda: all(map(closed_by_peer, held)),
                               prof.idle_timeout + 20, interval=0.5,
                               message="idle connections closed by --idle-timeout")
            time.sleep(1.5)  # the metrics are published once a second
            text = harness.scrape(metrics_port)
        finally:
            close_all(held)
            code, counts = finish(relay, monitor, fake_firehose, spool, senders)
    rejected = {reason: int(harness.metric(text, REJECTED, reason=reason))
                for reason in ("max_connections_per_source", "max_connections", "idle_timeout")}
    cut = [s.sender for s in senders if isinstance(s, TcpSender) and s.connections != 1]
    harness.record(Result.of(
        "6 idle connections", prof.describe_load() + f" + {len(held)} idle", started, counts,
        monitor, notes=f"listener RSS {idle_rss // 1024} -> {monitor.listener_peak_rss // 1024} "
                       f"MiB; rejected {rejected}; {hog_open} of the hog's connections open "
                       f"{hog_checked_after:.1f} s in; senders reconnected: {cut or 'none'}"))
    check(code, counts, relay, idle_rss, monitor.listener_peak_rss)
    assert hog_open <= per_source, f"{hog_open} connections from one address stayed open"
    assert rejected["max_connections_per_source"] >= len(hog) - per_source, rejected
    assert rejected["max_connections"] > 0, rejected
    assert rejected["idle_timeout"] >= per_source, rejected
    assert not cut, f"senders that were never idle lost their connection: {cut}"


def test_garbage_input(fake_firehose: FakeFirehose, tmp_path: Path, prof: harness.Profile,
                       pki: dict[str, Issued]) -> None:  # noqa: F811
    spool = tmp_path / "spool"
    port, metrics_port, tls_port, proxy_port = harness.ports(4)
    args = harness.chaos_args(
        spool, port, "--tls-port", str(tls_port), "--cert", str(pki["server"].cert),
        "--key", str(pki["server"].key), "--tcp-port", str(proxy_port), "--proxy-protocol",
        str(proxy_port), "--max-message-size", str(MAX_MESSAGE_SIZE), metrics_port=metrics_port)
    rng = random.Random(11)
    started = time.monotonic()
    monitor = Monitor(metrics_port, interval=0.2)
    relays: list[Relay] = []
    senders: list[Sender] = []
    attacks: list[Attack] = []
    half_open: list[socket.socket] = []
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        idle_rss = listener_idle_rss(relay)
        monitor.start()
        context = client_context(pki)

        def tls(sock: socket.socket) -> socket.socket:
            return context.wrap_socket(sock, server_hostname="localhost")

        try:
            senders = harness.start_senders(port, prof, source="127.0.0.2")
            senders.append(TcpSender("s0", tls_port, rate=200, source="127.0.0.2", wrap=tls))
            senders[-1].start()
            time.sleep(0.5)
            hello = client_hello()
            for _ in range(40):
                sock = connect(tls_port)
                sock.sendall(hello[:len(hello) // 2])
                half_open.append(sock)
            slow = [connect(proxy_port) for _ in range(20)]
            half_open += slow
            header = pack_v1("TCP4", "192.0.2.1", "192.0.2.2", 1234, 514)
            attacks = [
                Attack("endless-line", endless_line(port)),
                Attack("octet-counts", octet_counts(port, rng)),
                Attack("tls-garbage", random_bytes_on_new_connections(tls_port)),
                Attack("plaintext-on-tls", plaintext(tls_port)),
                Attack("proxy-garbage", proxy_garbage(proxy_port, rng)),
                Attack("slow-proxy", dribble(slow, header, 0.5)),
                Attack("udp-junk", udp_junk(port)),
            ]
            for attack in attacks:
                attack.start()
            time.sleep(1.0)
            # A TLS client connecting in the middle of the flood of bad handshakes.
            late = TcpSender("s1", tls_port, rate=200, source="127.0.0.3", wrap=tls)
            senders.append(late)
            late.start()
            time.sleep(max(prof.abuse - 1.0, 1.0))
            late_sent, late_failures = late.sent, late.connect_failures
            for attack in attacks:
                attack.stop()
            harness.wait_relay(relay, lambda: all(map(closed_by_peer, half_open)),
                               NEGOTIATION_TIMEOUT + 15, interval=0.5,
                               message="half-open handshakes and slow headers timed out")
            time.sleep(1.5)
            text = harness.scrape(metrics_port)
        finally:
            for attack in attacks:
                attack.halt.set()
            close_all(half_open)
            code, counts = finish(relay, monitor, fake_firehose, spool, senders)
    counted = {
        "tls_handshake": harness.metric(text, REJECTED, reason="tls_handshake"),
        "proxy_header": harness.metric(text, REJECTED, reason="proxy_header"),
        "negotiation_timeout": harness.metric(text, REJECTED, reason="negotiation_timeout"),
        "empty_datagram": harness.metric(text, DROPPED, reason="empty_datagram"),
        "incomplete_frame": harness.metric(text, DROPPED, reason="incomplete_frame"),
        "truncated_tcp": harness.metric(text, TRUNCATED, transport="tcp", port=str(port)),
        "truncated_udp": harness.metric(text, TRUNCATED, transport="udp", port=str(port)),
    }
    harness.record(Result.of(
        "6 garbage input", prof.describe_load() + " + 2x200/s TLS + 7 attackers", started,
        counts, monitor,
        notes=f"listener RSS {idle_rss // 1024} -> {monitor.listener_peak_rss // 1024} MiB; "
              f"counted { {k: int(v) for k, v in counted.items()} }; TLS client connecting "
              f"during the flood: {late_sent} sent, {late_failures} failed handshakes"))
    check(code, counts, relay, idle_rss, monitor.listener_peak_rss)
    assert late_sent > 0, "a TLS client must get through during a flood of bad handshakes"
    assert counted["negotiation_timeout"] >= len(half_open), counted
    assert all(value > 0 for value in counted.values()), counted


def gelf_bombs() -> list[list[bytes]]:
    """Datagram groups that inflate far beyond --max-message-size: one zlib datagram, and a
    gzip payload in chunks (small enough, compressed, to be reassembled)."""
    single = zlib.compress(b"\0" * (60 * MIB), 9)  # about 60 KB
    chunked = gzip.compress(b'{"a": "' + b" " * (30 * MIB) + b'"}', 9)  # about 30 KB
    return [[single], chunks(os.urandom(8), chunked, -(-len(chunked) // 8000))]


def gelf_flood(port: int, bombs: list[list[bytes]]) -> Callable[[threading.Event], None]:
    """Chunk heads that never complete, decompression bombs and corrupt payloads."""
    def body(halt: threading.Event) -> None:
        rng = random.Random(5)
        filler = os.urandom(2000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not halt.is_set():
                for _ in range(500):  # the first of two chunks, of a new message each time
                    sock.sendto(b"\x1e\x0f" + rng.randbytes(8) + b"\x00\x02" + filler,
                                ("127.0.0.1", port))
                for group in bombs:
                    message_id = rng.randbytes(8)
                    for datagram in group:
                        if datagram.startswith(b"\x1e\x0f"):
                            datagram = datagram[:2] + message_id + datagram[10:]
                        sock.sendto(datagram, ("127.0.0.1", port))
                sock.sendto(b"\x78\x9c" + rng.randbytes(300), ("127.0.0.1", port))  # bad zlib
                halt.wait(0.02)
    return body


def gelf_endless_document(port: int) -> Callable[[threading.Event], None]:
    def body(halt: threading.Event) -> None:
        with connect(port) as sock:
            sock.sendall(b'{"version": "1.1", "short_message": "')
            while not halt.is_set():
                with contextlib.suppress(TimeoutError):
                    sock.sendall(b"g" * 65536)
                halt.wait(0.004)
    return body


def test_gelf_floods_and_bombs(fake_firehose: FakeFirehose, tmp_path: Path,
                               prof: harness.Profile) -> None:
    spool = tmp_path / "spool"
    port, metrics_port = harness.ports(2)
    args = harness.chaos_args(spool, port, "--gelf", "--max-message-size",
                              str(MAX_MESSAGE_SIZE), metrics_port=metrics_port)
    bombs = gelf_bombs()
    started = time.monotonic()
    monitor = Monitor(metrics_port, interval=0.2)
    relays: list[Relay] = []
    senders: list[Sender] = []
    attacks: list[Attack] = []
    with harness.stopped_on_exit(relays):
        relay = harness.start_watched(args, fake_firehose, relays, monitor)
        idle_rss = listener_idle_rss(relay)
        monitor.start()
        try:
            senders = harness.start_senders(port, prof, source="127.0.0.2",
                                            encode=harness.gelf_message)
            time.sleep(0.5)
            attacks = [Attack("gelf-flood", gelf_flood(port, bombs)),
                       Attack("gelf-endless", gelf_endless_document(port))]
            for attack in attacks:
                attack.start()
            time.sleep(prof.abuse)
            for attack in attacks:
                attack.stop()
            time.sleep(1.5)
            text = harness.scrape(metrics_port)
        finally:
            for attack in attacks:
                attack.halt.set()
            code, counts = finish(relay, monitor, fake_firehose, spool, senders)
    dropped_chunks = sum(harness.metric(text, "kinesyslog_gelf_chunks_dropped_total",
                                        reason=reason) for reason in ("evicted", "expired"))
    counted = {
        "chunks_evicted_or_expired": dropped_chunks,
        "gelf_corrupt": harness.metric(text, DROPPED, reason="gelf_corrupt"),
        "truncated_udp": harness.metric(text, TRUNCATED, transport="udp", port=str(port)),
        "truncated_tcp": harness.metric(text, TRUNCATED, transport="tcp", port=str(port)),
        "udp_kernel": harness.metric(text, DROPPED, reason="udp_kernel"),
    }
    harness.record(Result.of(
        "6 GELF floods and bombs", prof.describe_load() + " GELF + flood", started, counts,
        monitor, notes=f"listener RSS {idle_rss // 1024} -> "
                       f"{monitor.listener_peak_rss // 1024} MiB; counted "
                       f"{ {k: int(v) for k, v in counted.items()} }"))
    check(code, counts, relay, idle_rss, monitor.listener_peak_rss)
    for name in ("chunks_evicted_or_expired", "gelf_corrupt", "truncated_udp", "truncated_tcp"):
        assert counted[name] > 0, counted
