"""StreamSession, sans-IO: bytes and time in; messages, bytes to send and a close reason out.

TLS runs between two memory BIO pairs: no socket anywhere, as h11 tests its connection."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast.framing import GelfStreamFramer, StreamFramer
from kinesyslog._fast.ring import Ring
from kinesyslog.session import CloseReason, StreamSession
from kinesyslog.tls import make_server_context
from tests.certs import issue, make_ca
from tests.proxy_encoder import pack_v1, pack_v2

PEER = b"10.0.0.5"  # the load balancer, when a PROXY header follows


def session(**options: object) -> StreamSession:
    return StreamSession(StreamFramer(1024), PEER, 514, 100.0, **options)  # type: ignore[arg-type]


def feed_bytewise(target: StreamSession, data: bytes) -> list[bytes]:
    messages: list[bytes] = []
    for index in range(len(data)):
        messages += target.receive(data[index:index + 1])
    return messages


# --- Plain TCP -----------------------------------------------------------------------------

def test_plain_stream_frames_and_ends_with_the_tail() -> None:
    plain = session()
    assert not plain.negotiating and plain.deadline is None
    assert plain.receive(b"<13>one\n13 <14>octet two<13>thr") == [b"<13>one", b"<14>octet two"]
    assert plain.partial_bytes == len(b"<13>thr")
    assert plain.receive(b"ee\n") == [b"<13>three"]
    assert plain.receive(b"<13>tail") == []
    assert plain.end_of_stream() == [b"<13>tail"]
    assert plain.take_outgoing() == b""
    assert plain.open and plain.close_reason is None


def test_truncation_and_incomplete_frames_are_counted() -> None:
    plain = StreamSession(StreamFramer(8), PEER, 514, 0.0)
    assert plain.receive(b"0123456789abc\n20 short") == [b"01234567"]
    assert plain.truncated == 1
    assert plain.end_of_stream() == []
    assert plain.incomplete_dropped == 1


def test_gelf_framing() -> None:
    gelf = StreamSession(GelfStreamFramer(1024), PEER, 12201, 0.0)
    assert gelf.receive(b'{"a": 1}\0{"b":') == [b'{"a": 1}']
    assert gelf.receive(b' 2}\0') == [b'{"b": 2}']


# --- PROXY protocol ------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    pack_v1("TCP4", "192.0.2.7", "192.0.2.1", 40000, 6514),
    pack_v2("PROXY", "TCP4", "192.0.2.7", "192.0.2.1", 40000, 6514),
    pack_v2("PROXY", "TCP6", "2001:DB8::7", "2001:db8::1", 40000, 6514),
], ids=["v1", "v2-ipv4", "v2-ipv6"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_a_proxy_header_names_the_source_and_port(header: bytes, bytewise: bool) -> None:
    admitted: list[bytes] = []
    proxied = session(expect_proxy=True, admit_source=lambda s: admitted.append(s) or True)
    assert proxied.negotiating and proxied.deadline == 100.0 + constants.NEGOTIATION_TIMEOUT
    data = header + b"<13>after the header\n"
    messages = feed_bytewise(proxied, data) if bytewise else proxied.receive(data)
    assert messages == [b"<13>after the header"]
    expected = b"2001:db8::7" if b"2001" in header or b"\x20\x01" in header else b"192.0.2.7"
    assert (proxied.source, proxied.port) == (expected, 6514)
    assert admitted == [expected] and proxied.source_admitted
    assert not proxied.negotiating and not proxied.expire(1000.0)


@pytest.mark.parametrize("header", [pack_v2("LOCAL", "UNKNOWN", None, None, None, None),
                                    pack_v1("UNKNOWN", None, None, None, None)],
                         ids=["v2-local", "v1-unknown"])
def test_local_and_unknown_keep_the_peer(header: bytes) -> None:
    proxied = session(expect_proxy=True, admit_source=lambda s: False)
    assert proxied.receive(header + b"<13>health check\n") == [b"<13>health check"]
    assert (proxied.source, proxied.port) == (PEER, 514)
    assert not proxied.source_admitted and proxied.open


def test_an_invalid_header_closes_with_a_reason_and_frames_nothing() -> None:
    proxied = session(expect_proxy=True)
    assert proxied.receive(b"GET / HTTP/1.1\r\n\r\n<13>x\n") == []
    assert proxied.close_reason is CloseReason.PROXY_HEADER
    assert proxied.close_detail.startswith("invalid PROXY protocol header: ")
    assert proxied.receive(b"<13>more\n") == []  # closed: nothing more is framed


def test_a_source_over_its_cap_is_refused_before_anything_is_framed() -> None:
    proxied = session(expect_proxy=True, admit_source=lambda s: False)
    header = pack_v1("TCP4", "192.0.2.7", "192.0.2.1", 1, 514)
    assert proxied.receive(header + b"<13>x\n") == []
    assert proxied.close_reason is CloseReason.MAX_CONNECTIONS_PER_SOURCE


def test_negotiation_has_a_deadline() -> None:
    proxied = session(expect_proxy=True)
    assert proxied.receive(b"PROXY TCP4 192.0.2") == []
    assert not proxied.expire(100.0 + constants.NEGOTIATION_TIMEOUT - 0.001)
    assert proxied.expire(100.0 + constants.NEGOTIATION_TIMEOUT)
    assert proxied.close_reason is CloseReason.NEGOTIATION_TIMEOUT
    assert proxied.close_detail == "no complete PROXY header in time"
    assert proxied.end_of_stream() == []


# --- TLS -----------------------------------------------------------------------------------

class Client:
    """A TLS client over memory BIOs."""

    def __init__(self, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing)

    def handshake_with(self, server: StreamSession) -> list[bytes]:
        messages: list[bytes] = []
        for _ in range(10):
            try:
                self.tls.do_handshake()
                return messages + server.receive(self.outgoing.read())  # the client Finished
            except ssl.SSLWantReadError:
                messages += server.receive(self.outgoing.read())
                self.incoming.write(server.take_outgoing())
        raise AssertionError("no handshake in 10 rounds")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ssl.SSLContext]]:
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory, "ca")
    server = issue(ca, directory, "server")
    yield ca.cert, make_server_context(server.cert, server.key, None)


def test_tls_handshake_messages_and_close_notify(
        tls_files: tuple[Path, ssl.SSLContext]) -> None:
    ca, context = tls_files
    server = session(tls_context=context)
    assert server.negotiating
    client = Client(ca)
    assert client.handshake_with(server) == []
    assert not server.negotiating and server.open
    client.tls.write(b"<13>one\n<13>tw")
    assert server.receive(client.outgoing.read()) == [b"<13>one"]
    client.tls.write(b"o\n<13>unterminated")
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.unwrap()  # close_notify, then waits for the server's
    assert server.receive(client.outgoing.read()) == [b"<13>two"]
    assert server.ended and server.close_reason is None
    assert server.end_of_stream() == [b"<13>unterminated"]
    client.incoming.write(server.take_outgoing())
    client.tls.unwrap()  # the server answered the close_notify


def test_tls_garbage_fails_the_handshake(tls_files: tuple[Path, ssl.SSLContext]) -> None:
    server = session(tls_context=tls_files[1])
    assert server.receive(b"<13>plain text on a TLS port\n") == []
    assert server.close_reason is CloseReason.TLS_HANDSHAKE
    assert server.close_detail == "TLS handshake failed: wrong version number"


def test_tls_errors_after_the_handshake_keep_what_was_framed(
        tls_files: tuple[Path, ssl.SSLContext]) -> None:
    ca, context = tls_files
    server = session(tls_context=context)
    client = Client(ca)
    client.handshake_with(server)
    client.tls.write(b"<13>fine\n")
    record = client.outgoing.read()
    corrupted = record[:-1] + bytes([record[-1] ^ 1])
    assert server.receive(client.outgoing.read() + record) == [b"<13>fine"]
    assert server.receive(corrupted) == []
    assert server.close_reason is CloseReason.TLS_ERROR
    assert server.close_detail.startswith("TLS error: ")


def behind_a_balancer(server: StreamSession, header: bytes, ca: Path) -> Client:
    """A TLS client whose ClientHello follows a PROXY header in one segment, handshaken."""
    client = Client(ca)
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.do_handshake()
    assert server.receive(header + client.outgoing.read()) == []
    client.incoming.write(server.take_outgoing())
    client.handshake_with(server)
    return client


def test_proxy_header_before_tls(tls_files: tuple[Path, ssl.SSLContext]) -> None:
    ca, context = tls_files
    server = session(tls_context=context, expect_proxy=True)
    client = behind_a_balancer(
        server, pack_v2("PROXY", "TCP4", "192.0.2.9", "192.0.2.1", 1, 6514), ca)
    client.tls.write(b"<13>via NLB\n")
    assert server.receive(client.outgoing.read()) == [b"<13>via NLB"]
    assert (server.source, server.port) == (b"192.0.2.9", 6514)


def test_tls_into_the_ring_keeps_the_order_when_the_ring_fills(
        tls_files: tuple[Path, ssl.SSLContext], tmp_path: Path) -> None:
    """One receive() decrypts many TLS records, each framed on its own: once the ring had no
    room for a message, every later one is returned too, in order, even one that would fit."""
    ca, context = tls_files
    server = StreamSession(StreamFramer(300_000), PEER, 6514, 100.0, tls_context=context,
                           expect_proxy=True)
    client = behind_a_balancer(server, pack_v1("TCP4", "192.0.2.9", "192.0.2.1", 1, 6514), ca)
    ring = Ring(str(tmp_path / "ring"), 1 << 20)
    server.write_into(ring, constants.KIND_SYSLOG)  # after negotiation: the header's source
    big = [b"<13>%d " % index + b"b" * 249_990 for index in range(5)]
    small = [b"<13>small %d" % index for index in range(3)]
    for message in [*big, *small]:
        client.tls.write(message + b"\n")  # 16 KiB TLS records
    returned = server.receive(client.outgoing.read(), 1234)
    entries = ring.read_batch(100)
    assert [entry[4] for entry in entries] == big[:4]
    assert returned == [big[4], *small]
    assert {(entry[2], entry[1], entry[3]) for entry in entries} == {(b"192.0.2.9", 6514, 1234)}
    assert (server.written, server.written_bytes) == (4, sum(map(len, big[:4])))
