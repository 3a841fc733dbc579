"""syslog-ng 3.38 (Debian 12 package syslog-ng-core) forwarding to the real relay.

syslog-ng is unpacked privately under build/interop (tests/interop/syslog_ng.py: it
conflicts with rsyslog, which stays installed) and runs in the foreground with a private
configuration, persist, pid and control files: one network() source on a free loopback port
reading RFC 5424 lines (flags(syslog-protocol)), one destination to the relay, and no
system() or internal() source (syslog-ng's own messages go to its stderr, kept as its log).
The test writes numbered RFC 5424 messages with microsecond timestamps to that source and
checks, message by message, what the relay wrote (text, timestamp, log group and stream) for:
(a) syslog() over TCP: RFC 5424 with octet counting, whose frame ends in an LF that the relay
strips; (b) syslog() over TLS, syslog-ng verifying that the relay's certificate comes from
the test CA and names 127.0.0.1 (peer-verify(required-trusted)); (c) network() over UDP
and (d) network() over TCP with LF framing, both RFC 3164 (whole seconds, no year). Without
apt's package lists syslog-ng cannot be fetched and the tests skip.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.certs import issue, make_ca
from tests.chaos.harness import ports
from tests.interop.conftest import RelayUnderTest, check_messages, running_relay
from tests.interop.syslog_ng import SyslogNg, Unavailable, running, unpacked

pytestmark = pytest.mark.interop

COUNT = 100
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DESTINATIONS = {  # mode: the destination driver, {port} and {ca} filled in
    "syslog-tcp": 'syslog("127.0.0.1" port({port}) transport("tcp") frac-digits(3))',
    "syslog-tls": 'syslog("127.0.0.1" port({port}) transport("tls") frac-digits(3) '
                  'tls(ca-file("{ca}") peer-verify(required-trusted)))',
    "network-udp": 'network("127.0.0.1" port({port}) transport("udp"))',
    "network-tcp": 'network("127.0.0.1" port({port}) transport("tcp"))',
}


def configuration(input_port: int, destination: str) -> str:
    # keep-hostname(yes): the HOST of the input, not the name of the peer that sent it;
    # use-dns(no): no lookups; stats-freq(0): no statistics lines in the log.
    return f"""\
@version: 3.38
options {{ keep-hostname(yes); use-dns(no); dns-cache(no); stats-freq(0); }};
source s_input {{
    network(ip("127.0.0.1") port({input_port}) transport("tcp") flags(syslog-protocol));
}};
destination d_relay {{ {destination}; }};
log {{ source(s_input); destination(d_relay); }};
"""


@pytest.fixture(scope="session")
def syslog_ng() -> SyslogNg:
    """syslog-ng unpacked once per session under build/interop (reused across sessions)."""
    try:
        return unpacked()
    except Unavailable as error:
        pytest.skip(f"syslog-ng is not available: {error}")


@dataclass
class TlsRelay:
    relay: RelayUnderTest
    ca_file: Path


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[TlsRelay]:
    """The real relay with only a TLS listener on one free loopback port, its certificate
    (localhost, 127.0.0.1) issued by a throwaway CA."""
    ca = make_ca(tmp_path / "pki", "interop-ca")
    server = issue(ca, tmp_path / "pki", "server")
    (port,) = ports(1)
    options = ["--tls-port", str(port), "--cert", str(server.cert), "--key", str(server.key)]
    with running_relay(tmp_path, port, options) as relay:
        yield TlsRelay(relay, ca.cert)


def milliseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def forward(syslog_ng: SyslogNg, relay: RelayUnderTest, tmp_path: Path, mode: str,
            ca_file: Path | None = None) -> None:
    """Sends COUNT messages through syslog-ng with the destination of ``mode`` and checks
    every one the relay wrote."""
    input_port = next(port for port in ports(2) if port != relay.port)
    base = datetime.now(timezone.utc).replace(microsecond=0)
    moments = [base + timedelta(milliseconds=10 * n, microseconds=456) for n in range(COUNT)]
    texts = [f"syslog-ng {mode} message {n:03d} of {COUNT}: grüße, tab\there"
             for n in range(COUNT)]
    payload = "".join(f"<134>1 {moment.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} myhost interop 42 "
                      f"ID7 - {text}\n" for moment, text in zip(moments, texts))
    destination = DESTINATIONS[mode].format(port=relay.port, ca=ca_file)
    with running(syslog_ng, tmp_path / "syslog-ng", configuration(input_port, destination),
                 input_port):
        with socket.create_connection(("127.0.0.1", input_port), timeout=10) as sock:
            sock.sendall(payload.encode())
        events = relay.finish(COUNT)

    if mode.startswith("syslog-"):
        # <PRI>1 ISODATE HOST PROGRAM PID MSGID SDATA MSG, the date with frac-digits(3)
        # (cut, not rounded) in the message's own zone, UTC, written +00:00
        expected = [f"<134>1 {moment.strftime('%Y-%m-%dT%H:%M:%S')}."
                    f"{moment.microsecond // 1000:03d}+00:00 myhost interop 42 ID7 - {text}"
                    for moment, text in zip(moments, texts)]
        times = [milliseconds(moment) for moment in moments]
    else:  # <PRI>BSDDATE HOST PROGRAM[PID]: MSG, RFC 3164: whole seconds, no year
        expected = [f"<134>{moment.strftime('%b')} {moment.day:2d} "
                    f"{moment.strftime('%H:%M:%S')} myhost interop[42]: {text}"
                    for moment, text in zip(moments, texts)]
        times = [milliseconds(moment.replace(microsecond=0)) for moment in moments]
    timestamps = check_messages(relay, events, expected, ordered=mode != "network-udp")
    wrong = [(m, timestamps[m], t) for m, t in zip(expected, times) if timestamps[m] != t]
    assert not wrong, f"{len(wrong)} timestamps differ (message, got, sent): {wrong[:3]}"


@pytest.mark.parametrize("mode", ["syslog-tcp", "network-udp", "network-tcp"])
def test_syslog_ng_forwards(syslog_ng: SyslogNg, relay: RelayUnderTest, tmp_path: Path,
                            mode: str) -> None:
    forward(syslog_ng, relay, tmp_path, mode)


def test_syslog_ng_forwards_over_tls(syslog_ng: SyslogNg, tls_relay: TlsRelay,
                                     tmp_path: Path) -> None:
    forward(syslog_ng, tls_relay.relay, tmp_path, "syslog-tls", tls_relay.ca_file)
