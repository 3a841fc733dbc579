"""rsyslog 8 (Debian package rsyslog) forwarding to the real relay with omfwd.

rsyslogd runs in the foreground with a private configuration and work directory: one imtcp
input on a free loopback port, bound to a ruleset whose only action is omfwd to the relay (so
rsyslogd's own messages go nowhere), and no imuxsock, imjournal or imklog. The test writes
numbered RFC 5424 messages to that input and checks what the relay wrote for each of:
(a) TCP, octet counting, RSYSLOG_SyslogProtocol23Format (whose template ends in an LF that
rsyslog keeps inside the counted frame: the relay strips it), (b) TCP, LF framing,
RSYSLOG_ForwardFormat, (c) UDP, the default RSYSLOG_TraditionalForwardFormat (RFC 3164)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.chaos.harness import ports
from tests.e2e.relay_process import wait_for
from tests.interop.conftest import RelayUnderTest, check_messages, require

pytestmark = pytest.mark.interop

COUNT = 100
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ACTIONS = {  # mode: omfwd parameters
    "tcp-octet-counted": 'protocol="tcp" TCP_Framing="octet-counted" '
                         'template="RSYSLOG_SyslogProtocol23Format"',
    "tcp-lf": 'protocol="tcp" template="RSYSLOG_ForwardFormat"',
    "udp": 'protocol="udp"',
}


def configuration(work: Path, input_port: int, relay_port: int, action: str) -> str:
    return f"""\
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input_port}" ruleset="to_relay")
ruleset(name="to_relay") {{
    action(type="omfwd" target="127.0.0.1" port="{relay_port}" {action})
}}
"""


@contextlib.contextmanager
def rsyslogd(tmp_path: Path, input_port: int, relay_port: int,
             action: str) -> Iterator[subprocess.Popen[bytes]]:
    """rsyslogd -n with its own configuration, work directory and pid file; stopped by PID
    (SIGTERM, then SIGKILL after a bounded wait) when the block ends."""
    binary = require("rsyslogd", "rsyslog")
    work = tmp_path / "rsyslog"
    work.mkdir()
    conf = work / "rsyslog.conf"
    conf.write_text(configuration(work, input_port, relay_port, action))
    log = work / "rsyslogd.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(work / "pid")],
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})
    try:
        def listening() -> bool:
            assert process.poll() is None, f"rsyslogd exited: {log.read_text()}"
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", input_port), timeout=1):
                return True
            return False

        wait_for(listening, START_TIMEOUT, interval=0.05, message="rsyslogd's imtcp input")
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)


def milliseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize("mode", list(ACTIONS))
def test_rsyslog_forwards(relay: RelayUnderTest, tmp_path: Path, mode: str) -> None:
    require("rsyslogd", "rsyslog")
    input_port = next(port for port in ports(2) if port != relay.port)
    base = datetime.now(timezone.utc).replace(microsecond=0)
    moments = [base + timedelta(milliseconds=10 * n, microseconds=456) for n in range(COUNT)]
    stamps = [moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for moment in moments]
    texts = [f"rsyslog {mode} message {n:03d} of {COUNT}: grüße" for n in range(COUNT)]
    lines = [f"<134>1 {stamp} myhost interop 42 ID7 - {text}\n"
             for stamp, text in zip(stamps, texts)]
    with rsyslogd(tmp_path, input_port, relay.port, ACTIONS[mode]):
        with socket.create_connection(("127.0.0.1", input_port), timeout=10) as sock:
            sock.sendall("".join(lines).encode())
        events = relay.finish(COUNT)

    # What rsyslog's templates make of <134>1 STAMP myhost interop 42 ID7 - TEXT:
    if mode == "tcp-octet-counted":  # <%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% ... %msg%
        expected = [f"<134>1 {stamp} myhost interop 42 ID7 - {text}"
                    for stamp, text in zip(stamps, texts)]
        times = [milliseconds(moment) for moment in moments]
    elif mode == "tcp-lf":  # <%PRI%>%TIMESTAMP:::date-rfc3339% %HOSTNAME% %syslogtag%%msg%
        expected = [f"<134>{stamp} myhost interop[42] {text}"
                    for stamp, text in zip(stamps, texts)]
        times = [milliseconds(moment) for moment in moments]
    else:  # <%PRI%>%TIMESTAMP% %HOSTNAME% %syslogtag%%msg%: RFC 3164, whole seconds
        expected = [f"<134>{moment.strftime('%b')} {moment.day:2d} "
                    f"{moment.strftime('%H:%M:%S')} myhost interop[42] {text}"
                    for moment, text in zip(moments, texts)]
        times = [milliseconds(moment.replace(microsecond=0)) for moment in moments]
    timestamps = check_messages(relay, events, expected, ordered=mode != "udp")
    wrong = [(m, timestamps[m], t) for m, t in zip(expected, times) if timestamps[m] != t]
    assert not wrong, f"{len(wrong)} timestamps differ (message, got, sent): {wrong[:3]}"
