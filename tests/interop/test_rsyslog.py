"""rsyslog 8 (Debian packages rsyslog and rsyslog-gnutls) forwarding to the real relay with
omfwd.

rsyslogd runs in the foreground with a private configuration and work directory: one imtcp
input on a free loopback port, bound to a ruleset whose only action is omfwd to the relay (so
rsyslogd's own messages go nowhere), and no imuxsock, imjournal or imklog. The test writes
numbered RFC 5424 messages to that input and checks what the relay wrote for each of:
(a) TCP, octet counting, RSYSLOG_SyslogProtocol23Format (whose template ends in an LF that
rsyslog keeps inside the counted frame: the relay strips it), (b) TCP, LF framing,
RSYSLOG_ForwardFormat, (c) UDP, the default RSYSLOG_TraditionalForwardFormat (RFC 3164),
(d) TLS with the gtls driver checking the relay's certificate name (x509/name), with and
without a client certificate that the relay requires (--client-ca), (e) TLS refused by the
relay when rsyslog has no client certificate or one from another CA, and (f) rsyslog's
disk-assisted action queue keeping what arrives while the relay is down (and rsyslog itself is
restarted) and resending it once the relay is back."""

from __future__ import annotations

import contextlib
import glob
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.certs import Issued, issue, make_ca
from tests.chaos.harness import metric, ports, scrape
from tests.e2e.relay_process import wait_for
from tests.interop.conftest import (
    RelayUnderTest,
    check_messages,
    require,
    running_relay,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.interop

COUNT = 100
ACTION_TIMEOUT = 15.0  # seconds for what rsyslogd should do (a refused handshake, a queue file)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ACTIONS = {  # mode: omfwd parameters
    "tcp-octet-counted": 'protocol="tcp" TCP_Framing="octet-counted" '
                         'template="RSYSLOG_SyslogProtocol23Format"',
    "tcp-lf": 'protocol="tcp" template="RSYSLOG_ForwardFormat"',
    "udp": 'protocol="udp"',
}
# A forwarding queue that moves to disk (work directory) beyond 10 waiting messages, retried
# every second without end: rsyslog's disk-assisted queue. Batches of one message, so that
# what waits is in the queue, not in the batch its worker holds while the relay is down.
DISK_ASSISTED_QUEUE = ('queue.type="LinkedList" queue.filename="to_relay" queue.size="100" '
                       'queue.highWatermark="10" queue.lowWatermark="5" '
                       'queue.dequeueBatchSize="1" '
                       'queue.saveOnShutdown="on" action.resumeRetryCount="-1" '
                       'action.resumeInterval="1"')


def configuration(work: Path, input_port: int, relay_port: int, action: str) -> str:
    return f"""\
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input_port}" ruleset="to_relay")
ruleset(name="to_relay") {{
    action(type="omfwd" target="127.0.0.1" port="{relay_port}" {action})
}}
"""


def tls_action(ca: Issued, client: Issued | None) -> str:
    """omfwd over TLS (gtls), checking that the relay's certificate is issued by ``ca`` for
    the name localhost; presenting ``client`` when given."""
    action = ('protocol="tcp" template="RSYSLOG_ForwardFormat" StreamDriver="gtls" '
              'StreamDriverMode="1" StreamDriverAuthMode="x509/name" '
              f'StreamDriverPermittedPeers="localhost" StreamDriver.CAFile="{ca.cert}"')
    if client is not None:
        action += f' StreamDriver.CertFile="{client.cert}" StreamDriver.KeyFile="{client.key}"'
    return action


def require_gtls() -> None:
    if not glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so"):
        pytest.skip("rsyslog's TLS driver is not installed (Debian package rsyslog-gnutls; "
                    "packaging/prerequisites.sh installs it as root)")


@contextlib.contextmanager
def rsyslogd(work: Path, input_port: int, relay_port: int,
             action: str) -> Iterator[subprocess.Popen[bytes]]:
    """rsyslogd -n with its own configuration, pid file and work directory ``work`` (created
    if needed, kept across restarts); stopped by PID (SIGTERM, then SIGKILL after a bounded
    wait) when the block ends."""
    binary = require("rsyslogd", "rsyslog")
    work.mkdir(exist_ok=True)
    conf = work / "rsyslog.conf"
    conf.write_text(configuration(work, input_port, relay_port, action))
    log = work / "rsyslogd.log"
    with open(log, "ab") as output:
        process = subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(work / "pid")],
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
    try:
        wait_listening(process, "127.0.0.1", input_port, "rsyslogd's imtcp input", log)
        yield process
    finally:
        stop_process(process)


def milliseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


@dataclass
class Batch:
    """Numbered RFC 5424 lines for rsyslog's input and what each template makes of them."""
    moments: list[datetime]
    stamps: list[str]
    texts: list[str]

    @classmethod
    def of(cls, label: str, count: int = COUNT, first: int = 0) -> Batch:
        base = datetime.now(timezone.utc).replace(microsecond=0)
        moments = [base + timedelta(milliseconds=10 * n, microseconds=456)
                   for n in range(first, first + count)]
        return cls(moments, [moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for moment in moments],
                   [f"rsyslog {label} message {n:03d}: grüße" for n in range(first, first + count)])

    def send(self, input_port: int) -> None:
        payload = "".join(f"<134>1 {stamp} myhost interop 42 ID7 - {text}\n"
                          for stamp, text in zip(self.stamps, self.texts))
        with socket.create_connection(("127.0.0.1", input_port), timeout=10) as sock:
            sock.sendall(payload.encode())

    def expected(self, template: str) -> tuple[list[str], list[int]]:
        """The messages and timestamps (ms) the relay should write for ``template``."""
        if template == "RSYSLOG_SyslogProtocol23Format":
            # <%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% ... %msg%
            return ([f"<134>1 {stamp} myhost interop 42 ID7 - {text}"
                     for stamp, text in zip(self.stamps, self.texts)],
                    [milliseconds(moment) for moment in self.moments])
        if template == "RSYSLOG_ForwardFormat":
            # <%PRI%>%TIMESTAMP:::date-rfc3339% %HOSTNAME% %syslogtag%%msg%
            return ([f"<134>{stamp} myhost interop[42] {text}"
                     for stamp, text in zip(self.stamps, self.texts)],
                    [milliseconds(moment) for moment in self.moments])
        assert template == "RSYSLOG_TraditionalForwardFormat"
        # <%PRI%>%TIMESTAMP% %HOSTNAME% %syslogtag%%msg%: RFC 3164, whole seconds
        return ([f"<134>{moment.strftime('%b')} {moment.day:2d} "
                 f"{moment.strftime('%H:%M:%S')} myhost interop[42] {text}"
                 for moment, text in zip(self.moments, self.texts)],
                [milliseconds(moment.replace(microsecond=0)) for moment in self.moments])


def check_timestamps(got: dict[str, int], expected: list[str], times: list[int]) -> None:
    wrong = [(m, got[m], t) for m, t in zip(expected, times) if got[m] != t]
    assert not wrong, f"{len(wrong)} timestamps differ (message, got, sent): {wrong[:3]}"


def other_port(taken: int) -> int:
    return next(port for port in ports(2) if port != taken)


@pytest.mark.parametrize("mode", list(ACTIONS))
def test_rsyslog_forwards(relay: RelayUnderTest, tmp_path: Path, mode: str) -> None:
    require("rsyslogd", "rsyslog")
    input_port = other_port(relay.port)
    batch = Batch.of(mode)
    with rsyslogd(tmp_path / "rsyslog", input_port, relay.port, ACTIONS[mode]):
        batch.send(input_port)
        events = relay.finish(COUNT)

    template = {"tcp-octet-counted": "RSYSLOG_SyslogProtocol23Format",
                "tcp-lf": "RSYSLOG_ForwardFormat"}.get(mode, "RSYSLOG_TraditionalForwardFormat")
    expected, times = batch.expected(template)
    check_timestamps(check_messages(relay, events, expected, ordered=mode != "udp"),
                     expected, times)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    """The relay's CA and server certificate (localhost, 127.0.0.1), a client certificate
    from the same CA, and one from a CA the relay does not trust."""
    ca = make_ca(tmp_path / "pki", "interop-ca")
    other = make_ca(tmp_path / "pki", "other-ca")
    return {"ca": ca, "server": issue(ca, tmp_path / "pki", "server"),
            "client": issue(ca, tmp_path / "pki", "rsyslog-client", client=True),
            "stranger": issue(other, tmp_path / "pki", "stranger-client", client=True)}


def tls_options(port: int, pki: dict[str, Issued], mutual: bool) -> list[str]:
    options = ["--tls-port", str(port), "--cert", str(pki["server"].cert),
               "--key", str(pki["server"].key)]
    return options + (["--client-ca", str(pki["ca"].cert)] if mutual else [])


@pytest.mark.parametrize("mutual", [False, True], ids=["server-certificate", "mutual-tls"])
def test_rsyslog_forwards_over_tls(tmp_path: Path, pki: dict[str, Issued], mutual: bool) -> None:
    require("rsyslogd", "rsyslog")
    require_gtls()
    relay_port, input_port = ports(2)
    batch = Batch.of("tls mutual" if mutual else "tls")
    action = tls_action(pki["ca"], pki["client"] if mutual else None)
    with running_relay(tmp_path, relay_port, tls_options(relay_port, pki, mutual)) as relay, \
            rsyslogd(tmp_path / "rsyslog", input_port, relay_port, action):
        batch.send(input_port)
        events = relay.finish(COUNT)
    expected, times = batch.expected("RSYSLOG_ForwardFormat")
    check_timestamps(check_messages(relay, events, expected), expected, times)


@pytest.mark.parametrize("client", [None, "stranger"],
                         ids=["no-client-certificate", "certificate-of-another-ca"])
def test_rsyslog_without_a_trusted_client_certificate_is_refused(
        tmp_path: Path, pki: dict[str, Issued], client: str | None) -> None:
    """The relay requires a client certificate (--client-ca): rsyslog's connections fail the
    handshake, are counted, and nothing of theirs is written."""
    require("rsyslogd", "rsyslog")
    require_gtls()
    relay_port, input_port, metrics_port = ports(3)
    action = tls_action(pki["ca"], pki[client] if client else None)
    options = tls_options(relay_port, pki, mutual=True)
    with running_relay(tmp_path, relay_port, options,
                       ["--prometheus-port", str(metrics_port)]) as relay, \
            rsyslogd(tmp_path / "rsyslog", input_port, relay_port, action):
        Batch.of("refused", count=10).send(input_port)
        wait_for(lambda: metric(scrape(metrics_port), "kinesyslog_connections_rejected_total",
                                reason="tls_handshake") >= 1,
                 ACTION_TIMEOUT, interval=0.2, message="a refused TLS handshake")
        events = relay.finish(0)
    assert events == [], f"a refused sender's messages were written: {events[:3]}"


def test_rsyslog_disk_assisted_queue_resends_after_the_relay_restarts(tmp_path: Path) -> None:
    """The relay stops after the first batch. rsyslog's action queue takes the second batch,
    spilling it to disk, and resends it once the relay listens again (restarted on the same
    port and spool): every message arrives. rsyslog's disk-assisted queue does not keep the
    order (what went to disk comes after what stayed in memory), and it resends at least
    once: the message it wrote into the closed connection is sent again later, so duplicates
    are accepted there, and only there (never of what the first relay wrote)."""
    require("rsyslogd", "rsyslog")
    relay_port, input_port = ports(2)
    listen = ["--tcp-port", str(relay_port)]
    action = f'{ACTIONS["tcp-octet-counted"]} {DISK_ASSISTED_QUEUE}'
    work = tmp_path / "rsyslog"
    first, second = Batch.of("queued", 50), Batch.of("queued", 50, first=50)
    with rsyslogd(work, input_port, relay_port, action):
        with running_relay(tmp_path, relay_port, listen) as relay:
            first.send(input_port)
            relay.wait_events(50)
        second.send(input_port)
        wait_for(lambda: any(work.glob("to_relay.0*")), ACTION_TIMEOUT, interval=0.1,
                 message=f"rsyslogd's queue file in {work}")
        with running_relay(tmp_path, relay_port, listen) as restarted:
            events = restarted.finish(100)
    expected, times = Batch(first.moments + second.moments, first.stamps + second.stamps,
                            first.texts + second.texts).expected("RSYSLOG_SyslogProtocol23Format")
    seen: set[str] = set()
    firsts, again = [], []
    for event in events:
        (again if event[2]["message"] in seen else firsts).append(event)
        seen.add(event[2]["message"])
    resent = expected[50:]
    assert all(event[2]["message"] in resent for event in again), \
        f"duplicates outside the batch sent while the relay was down: {again}"
    check_timestamps(check_messages(restarted, firsts, expected, ordered=False),
                     expected, times)
