"""TLS (RFC 5425), mutual TLS, SIGHUP reloads and the PROXY protocol, end to end."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.certs import Issued, issue, make_ca
from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    octet_counted,
    wait_for,
)
from tests.e2e.test_metrics import fetch, sample
from tests.e2e.test_relay import s3_events
from tests.proxy_encoder import pack_v1, pack_v2

pytestmark = pytest.mark.e2e


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    directory = tmp_path / "pki"
    ca = make_ca(directory, "test-ca")
    foreign = make_ca(directory, "foreign-ca")
    return {
        "ca": ca,
        "server": issue(ca, directory, "server"),
        "server2": issue(ca, directory, "server2"),
        "client": issue(ca, directory, "client", client=True),
        "foreign_client": issue(foreign, directory, "foreign-client", client=True),
    }


def client_context(pki: dict[str, Issued], client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    if client is not None:
        context.load_cert_chain(str(pki[client].cert), str(pki[client].key))
    return context


def tls_connect(port: int, context: ssl.SSLContext, host: str = "127.0.0.1",
                prefix: bytes = b"") -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=10)
    if prefix:
        raw.sendall(prefix)
    return context.wrap_socket(raw, server_hostname="localhost")


def send_tls(port: int, context: ssl.SSLContext, payload: bytes, host: str = "127.0.0.1",
             prefix: bytes = b"") -> None:
    with tls_connect(port, context, host, prefix) as sock:
        sock.sendall(payload)
        sock.unwrap()


def output_events(out: Path) -> list[tuple[str, str, dict]]:
    return events_of(r for p in sorted(out.iterdir()) for r in decode_records(p.read_bytes()))


def local_relay(tmp_path: Path, *args: str) -> Relay:
    return Relay(["--output-dir", str(tmp_path / "out"), "--spool-dir", str(tmp_path / "spool"),
                  "--flush-interval", "0.2", *args])


def test_tls_to_s3_both_framings_and_64k(moto_server, pki, tmp_path: Path) -> None:
    port = free_ports()
    relay = Relay(["--stream", moto_server.stream, "--region", "us-east-1", "--spool-dir",
                   str(tmp_path / "spool"), "--address", "::", "--tls-port", str(port),
                   "--cert", str(pki["server"].cert), "--key", str(pki["server"].key),
                   "--flush-interval", "0.2"], env=moto_server.env).start()
    big = b"<13>1 - h app - - - " + b"B" * (65536 - 20)
    lf = [b"<13>1 2026-11-21T10:00:00Z h app - - - tls lf %d" % i for i in range(100)]
    counted = [b"<13>1 - h app - - - tls counted\nline %d" % i for i in range(100)]
    try:
        send_tls(port, client_context(pki), b"".join(m + b"\n" for m in lf))
        send_tls(port, client_context(pki), octet_counted([*counted, big]), host="::1")
    finally:
        assert relay.stop() == 0, relay.log
    events = s3_events(moto_server)
    group = f"/kinesyslog/syslog/{port}"
    by_message = {e["message"]: (g, s) for g, s, e in events}
    assert len(by_message) == len(events) == 201
    for message in lf:
        assert by_message[message.decode()] == (group, "127.0.0.1")
    for message in [*counted, big]:
        assert by_message[message.decode()] == (group, "::1")
    assert len(big) == 65536


def test_a_sender_that_closes_without_reading_loses_nothing(pki, tmp_path: Path) -> None:
    """Syslog senders never read: one that closes its socket right after its last write,
    without close_notify, must not lose what the relay has not read yet. (A TLS 1.3 session
    ticket left unread in the sender's socket made its close a reset, and the kernel then
    discarded the messages still queued for the relay: about one in ten here.)"""
    port = free_ports()
    relay = local_relay(tmp_path, "--address", "127.0.0.1", "--tls-port", str(port), "--cert",
                        str(pki["server"].cert), "--key", str(pki["server"].key)).start()
    messages = [b"<13>1 - h app - - - abrupt close %06d " % i + b"x" * 100
                for i in range(100_000)]
    payload = b"".join(m + b"\n" for m in messages)
    try:
        sock = tls_connect(port, client_context(pki))
        for offset in range(0, len(payload), 1 << 20):
            sock.sendall(payload[offset:offset + (1 << 20)])
        sock.shutdown(socket.SHUT_WR)  # no close_notify, nothing read
        sock.close()
        wait_for(lambda: len(output_events(tmp_path / "out")) >= len(messages), 30,
                 interval=0.2, message="every message of the abruptly closed connection")
    finally:
        assert relay.stop() == 0, relay.log
    assert [e["message"] for _, _, e in output_events(tmp_path / "out")] == [
        m.decode() for m in messages]


def test_mutual_tls_accepts_only_clients_of_the_ca(pki, tmp_path: Path) -> None:
    port = free_ports()
    relay = local_relay(tmp_path, "--address", "127.0.0.1", "--tls-port", str(port), "--cert",
                        str(pki["server"].cert), "--key", str(pki["server"].key),
                        "--client-ca", str(pki["ca"].cert)).start()
    try:
        send_tls(port, client_context(pki, "client"), b"<13>from a trusted client\n")
        for client in (None, "foreign_client"):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                # TLS 1.3 clients learn of the refusal on their first read.
                sock = tls_connect(port, client_context(pki, client))
                sock.sendall(b"<13>must never arrive\n")
                assert sock.recv(100) == b""
                raise ConnectionError("closed by the relay")
    finally:
        assert relay.stop() == 0, relay.log
    assert [e["message"] for _, _, e in output_events(tmp_path / "out")] == [
        "<13>from a trusted client"]
    assert int(re.findall(r"(\d+) tls_handshake\b", relay.log)[-1]) == 2


def test_sighup_reloads_certificate_for_new_connections(pki, tmp_path: Path) -> None:
    port = free_ports()
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").write_bytes(pki["server"].cert.read_bytes())
    (live / "key.pem").write_bytes(pki["server"].key.read_bytes())
    relay = local_relay(tmp_path, "--address", "127.0.0.1", "--tls-port", str(port), "--cert",
                        str(live / "cert.pem"), "--key", str(live / "key.pem")).start()
    try:
        existing = tls_connect(port, client_context(pki))
        existing.sendall(b"<13>before reload\n")
        first_serial = x509_serial(existing)
        assert first_serial == pki["server"].certificate.serial_number

        (live / "cert.pem").write_bytes(b"garbage")  # a failed reload keeps the old material
        relay.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload failed" in relay.log, 10)
        with tls_connect(port, client_context(pki)) as sock:
            assert x509_serial(sock) == first_serial

        (live / "cert.pem").write_bytes(pki["server2"].cert.read_bytes())
        (live / "key.pem").write_bytes(pki["server2"].key.read_bytes())
        relay.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded for new connections" in relay.log, 10)
        with tls_connect(port, client_context(pki)) as sock:
            assert x509_serial(sock) == pki["server2"].certificate.serial_number
            sock.sendall(b"<13>new connection\n")
        existing.sendall(b"<13>existing connection after reload\n")
        existing.unwrap()
        existing.close()
    finally:
        assert relay.stop() == 0, relay.log
    assert sorted(e["message"] for _, _, e in output_events(tmp_path / "out")) == [
        "<13>before reload", "<13>existing connection after reload", "<13>new connection"]


def x509_serial(sock: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("tls", [False, True])
def test_proxy_protocol_sets_stream_and_group(moto_server, pki, tmp_path: Path,
                                              tls: bool) -> None:
    port = free_ports()
    kind = ["--tls-port", str(port), "--cert", str(pki["server"].cert), "--key",
            str(pki["server"].key)] if tls else ["--tcp-port", str(port)]
    relay = Relay(["--stream", moto_server.stream, "--region", "us-east-1", "--spool-dir",
                   str(tmp_path / "spool"), "--address", "::", "--proxy-protocol", str(port),
                   "--flush-interval", "0.2", *kind], env=moto_server.env).start()
    headers = {
        "v1-tcp4": pack_v1("TCP4", "192.0.2.7", "198.51.100.1", 40000, 514),
        "v1-tcp6": pack_v1("TCP6", "2001:db8::7", "2001:db8::1", 40000, 1514),
        "v1-unknown": pack_v1("UNKNOWN", None, None, None, None),
        "v2-ipv4": pack_v2("PROXY", "TCP4", "203.0.113.9", "10.0.0.1", 5000, 6514,
                           tlvs=[(0xEA, b"\x01vpce-0123456789abcdef0")]),
        "v2-ipv6": pack_v2("PROXY", "TCP6", "2001:DB8:0:0:0:0:0:9", "2001:db8::1", 5000, 10514),
        "v2-local": pack_v2("LOCAL", "UNKNOWN", None, None, None, None),
    }
    expected = {
        "v1-tcp4": ("192.0.2.7", 514), "v1-tcp6": ("2001:db8::7", 1514),
        "v1-unknown": ("::1", port), "v2-ipv4": ("203.0.113.9", 6514),
        "v2-ipv6": ("2001:db8::9", 10514), "v2-local": ("127.0.0.1", port),
    }
    try:
        for name, header in headers.items():
            host = "::1" if name == "v1-unknown" else "127.0.0.1"
            payload = b"<13>1 - h app - - - via %s\n" % name.encode()
            if tls:
                send_tls(port, client_context(pki), payload, host=host, prefix=header)
            else:
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall(header[:7])  # the header split over two segments
                    time.sleep(0.05)
                    sock.sendall(header[7:] + payload)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"<13>no header at all\n")
            sock.settimeout(10)
            assert sock.recv(100) == b""  # closed by the relay
    finally:
        assert relay.stop() == 0, relay.log
    events = {e["message"]: (g, s) for g, s, e in s3_events(moto_server)}
    for name, (source, group_port) in expected.items():
        message = f"<13>1 - h app - - - via {name}"
        assert events[message] == (f"/kinesyslog/syslog/{group_port}", source), name
    assert len(events) == len(expected)
    assert int(re.findall(r"(\d+) proxy_header\b", relay.log)[-1]) >= 1


def test_silent_clients_time_out_and_others_flow(pki, tmp_path: Path) -> None:
    port, tls_port, metrics_port = free_ports(), free_ports(), free_ports()
    relay = local_relay(tmp_path, "--address", "127.0.0.1", "--tcp-port", str(port),
                        "--tls-port", str(tls_port), "--cert", str(pki["server"].cert),
                        "--key", str(pki["server"].key), "--proxy-protocol", str(port),
                        "--max-connections", "3", "--prometheus-port",
                        str(metrics_port)).start()

    def connections_open() -> float:
        text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        return sample(text, "kinesyslog_connections_open") if "connections_open " in text else -1
    try:
        silent_proxy = socket.create_connection(("127.0.0.1", port), timeout=30)
        silent_tls = socket.create_connection(("127.0.0.1", tls_port), timeout=30)
        silent_proxy.sendall(b"PROXY TCP4 192.0.2.1")  # an unfinished header, then silence
        started = time.monotonic()
        # Both accepted (the relay accepts per listener socket, in any order) before the rest.
        wait_for(lambda: connections_open() == 2, 10, interval=0.1, message="2 connections open")
        # The third connection is allowed, a fourth refused, while the silent ones wait.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(pack_v1("TCP4", "192.0.2.50", "192.0.2.1", 1, 514) + b"<13>flowing\n")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
                assert refused.recv(10) == b""
        for sock in (silent_proxy, silent_tls):
            assert sock.recv(100) == b""  # closed by the relay after its negotiation timeout
            sock.close()
        assert time.monotonic() - started < 25
    finally:
        assert relay.stop() == 0, relay.log
    assert [(s, e["message"]) for _, s, e in output_events(tmp_path / "out")] == [
        ("192.0.2.50", "<13>flowing")]
    assert int(re.findall(r"(\d+) negotiation_timeout\b", relay.log)[-1]) == 2
    assert int(re.findall(r"(\d+) max_connections\b", relay.log)[-1]) == 1
