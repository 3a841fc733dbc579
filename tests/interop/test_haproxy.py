"""HAProxy 2.6 (Debian package haproxy) in front of the real relay, standing in for an AWS
network load balancer that adds a PROXY protocol header.

The relay listens on 127.0.0.1 with a TCP and a TLS port, both named by `--proxy-protocol`.
HAProxy runs in the foreground (`-db`) with a private configuration in the test's tmp dir:
one `mode tcp` frontend on 127.0.0.7 whose only server is one of those relay ports, with
`send-proxy` (v1) or `send-proxy-v2`. A Python client bound to 127.0.0.5 sends numbered
RFC 5424 messages with non-ASCII text to the frontend over one connection, in plain TCP or in
TLS that HAProxy passes through untouched (the relay terminates it; the client verifies the
relay's certificate). Four cases: v1 and v2 over TCP and over TLS, with LF framing or octet
counting. Every event must carry the message as sent, in sending order, with its RFC 5424
timestamp, the logStream of the original client (127.0.0.5, not HAProxy's address) and the
logGroup of HAProxy's frontend port (the header's destination port, not the relay's port).

Halfway through, a connection straight to the relay's port without a PROXY header must be
closed by the relay and counted (`connections_rejected{reason="proxy_header"}`), while the
HAProxy connection carries on undisturbed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.certs import issue, make_ca
from tests.chaos.harness import ports, wait_relay
from tests.e2e.test_metrics import fetch, sample
from tests.interop.conftest import (
    Event,
    RelayUnderTest,
    require,
    running_relay,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.interop

COUNT = 100
CHUNKS = 7  # the messages go out in this many writes, cut at arbitrary byte offsets
CLIENT = "127.0.0.5"  # the sender's source address: the logStream expected
FRONTEND = "127.0.0.7"  # HAProxy's listening address
RELAY = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TEXT = "grüße, Καλημέρα, 日本語 ✓"


@dataclass(frozen=True)
class Case:
    proxy: str  # HAProxy's server options that add the header
    tls: bool  # the client speaks TLS through HAProxy to the relay's TLS port
    octet_counting: bool  # RFC 6587 octet counting, else LF framing


CASES = {
    "v1-tcp": Case("send-proxy", tls=False, octet_counting=False),
    # crc32c: the relay verifies the checksum; unique-id: a TLV to skip, as NLB's 0xEA is.
    "v2-tcp": Case("send-proxy-v2 proxy-v2-options crc32c,unique-id", tls=False,
                   octet_counting=True),
    "v2-tls": Case("send-proxy-v2", tls=True, octet_counting=True),
    "v1-tls": Case("send-proxy", tls=True, octet_counting=False),
}


@dataclass
class ProxiedRelay:
    under: RelayUnderTest
    tcp_port: int
    tls_port: int
    metrics_port: int
    ca: Path  # the CA that signed the relay's certificate

    def rejected(self, reason: str) -> float:
        """connections_rejected{reason}, 0 before the first one (no sample yet)."""
        text = fetch(f"http://{RELAY}:{self.metrics_port}/metrics")[1]
        if f'reason="{reason}"' not in text:
            return 0.0
        return sample(text, "kinesyslog_connections_rejected_total", reason=reason)


@pytest.fixture
def proxied_relay(tmp_path: Path) -> Iterator[ProxiedRelay]:
    """The real relay with a TCP and a TLS port, both behind `--proxy-protocol`."""
    require("haproxy", "haproxy")  # before starting anything
    tcp_port, tls_port, metrics_port = ports(3)
    ca = make_ca(tmp_path / "pki", "interop-ca")
    server = issue(ca, tmp_path / "pki", "relay")
    options = ["--tcp-port", str(tcp_port), "--tls-port", str(tls_port),
               "--cert", str(server.cert), "--key", str(server.key),
               "--proxy-protocol", str(tcp_port), "--proxy-protocol", str(tls_port)]
    with running_relay(tmp_path, tcp_port, options,
                       ["--prometheus-port", str(metrics_port)]) as relay:
        yield ProxiedRelay(relay, tcp_port, tls_port, metrics_port, ca.cert)


def configuration(work: Path, front_port: int, relay_port: int, proxy: str) -> str:
    return f"""\
global
    pidfile {work / "haproxy.pid"}
    log stderr format raw local0
    nbthread 1
    maxconn 64

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 15s
    timeout server 15s

frontend syslog
    bind {FRONTEND}:{front_port}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend kinesyslog

backend kinesyslog
    server relay {RELAY}:{relay_port} {proxy}
"""


class HAProxy:
    """`haproxy -db` with its own configuration and work directory; its stderr in a file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log_path = log

    @property
    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"\n--- haproxy stderr ---\n{text}"


@contextlib.contextmanager
def haproxy(tmp_path: Path, front_port: int, relay_port: int, proxy: str) -> Iterator[HAProxy]:
    """HAProxy running until the block ends, then stopped by PID (SIGTERM, then SIGKILL after
    a bounded wait). Failures inside the block carry HAProxy's stderr in their message."""
    binary = require("haproxy", "haproxy")
    work = tmp_path / "haproxy"
    work.mkdir()
    conf = work / "haproxy.cfg"
    conf.write_text(configuration(work, front_port, relay_port, proxy))
    log = work / "haproxy.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([binary, "-db", "-f", str(conf)], cwd=work,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   env={"PATH": "/usr/bin:/bin"})
    running = HAProxy(process, log)

    try:
        try:
            # A plain connect and close: HAProxy passes it on as a header and a close, which
            # the relay must take without an event (it is also what a health check does).
            wait_listening(process, FRONTEND, front_port, "haproxy's frontend", log)
            yield running
        except AssertionError as error:
            raise AssertionError(f"{error}{running.log}") from None
        except OSError as error:
            raise AssertionError(f"{error!r}{running.log}") from error
    finally:
        stop_process(process)


def connect(port: int, tls: bool, ca: Path, host: str) -> socket.socket:
    """A connection from CLIENT to host:port, TLS (verifying the relay's certificate) or not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((CLIENT, 0))
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect((host, port))
        if tls:
            context = ssl.create_default_context(cafile=str(ca))
            return context.wrap_socket(sock, server_hostname="localhost")
        return sock
    except BaseException:
        sock.close()
        raise


def rejected_without_header(relay: ProxiedRelay, port: int) -> None:
    """A syslog line straight to the relay's PROXY port: closed without an answer."""
    with connect(port, tls=False, ca=relay.ca, host=RELAY) as sock:
        # Sent whole before the relay can close; a reset instead of a FIN is a close too.
        sock.sendall(f"<13>1 - {CLIENT} bypass - - - no PROXY header: {TEXT}\n".encode())
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", f"the relay answered {answer!r} instead of closing"


def milliseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def check_events(events: list[Event], expected: list[str], times: list[int], group: str,
                 stream: str) -> None:
    """Message by message: the text, its place in the order, its group, stream, timestamp."""
    places = Counter((event_group, event_stream) for event_group, event_stream, _ in events)
    assert set(places) == {(group, stream)}, f"expected only {(group, stream)}: {places}"
    messages = [event["message"] for _, _, event in events]
    for index, (got, wanted) in enumerate(zip(messages, expected)):
        assert got == wanted, f"event {index}: {got!r}, expected {wanted!r}"
    assert len(messages) == len(expected), (
        f"{len(messages)} events for {len(expected)} messages; "
        f"extra: {messages[len(expected):][:3]}")
    stamps = [event["timestamp"] for _, _, event in events]
    wrong = [(n, got, want) for n, (got, want) in enumerate(zip(stamps, times)) if got != want]
    assert not wrong, f"{len(wrong)} timestamps differ (event, got, sent): {wrong[:3]}"


def frame(message: str, octet_counting: bool) -> bytes:
    data = message.encode()
    return b"%d %s" % (len(data), data) if octet_counting else data + b"\n"


def chunks(data: bytes, count: int) -> list[bytes]:
    """data cut into count pieces of unequal length (cuts fall inside frames and inside
    multi-byte characters)."""
    cuts = [len(data) * k * k // (count * count) + k for k in range(1, count)]
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("name", list(CASES))
def test_haproxy_in_front(proxied_relay: ProxiedRelay, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    relay = proxied_relay
    relay_port = relay.tls_port if case.tls else relay.tcp_port
    front_port = next(port for port in ports(5)
                      if port not in (relay.tcp_port, relay.tls_port, relay.metrics_port))
    base = datetime.now(timezone.utc).replace(microsecond=0)
    moments = [base + timedelta(milliseconds=10 * n) for n in range(COUNT)]
    expected = [f"<134>1 {moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} "
                f"client.example haproxy-{name} 42 ID{n} - message {n:03d} of {COUNT}: {TEXT}"
                for n, moment in enumerate(moments)]
    payload = chunks(b"".join(frame(m, case.octet_counting) for m in expected), CHUNKS)

    with haproxy(tmp_path, front_port, relay_port, case.proxy) as proxy:
        with connect(front_port, case.tls, relay.ca, FRONTEND) as sock:
            for index, piece in enumerate(payload):
                sock.sendall(piece)
                if index == CHUNKS // 2:
                    rejected_without_header(relay, relay_port)
            if isinstance(sock, ssl.SSLSocket):
                sock.unwrap()  # close_notify, answered by the relay through HAProxy
        wait_relay(relay.under.relay, lambda: relay.rejected("proxy_header") >= 1,
                   SOCKET_TIMEOUT, message="the rejection counted")
        assert relay.rejected("proxy_header") == 1
        events = relay.under.finish(COUNT)
        check_events(events, expected, [milliseconds(moment) for moment in moments],
                     group=f"/kinesyslog/syslog/{front_port}", stream=CLIENT)
        assert proxy.process.poll() is None, f"haproxy exited ({proxy.process.returncode})"
