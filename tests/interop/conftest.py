"""Interoperability with the real senders operators run (util-linux logger, Python's
SysLogHandler, rsyslog 8, syslog-ng 3.38, pygelf, graypy) and with HAProxy in front of the
relay: the `interop` marker, the relay under test and the checks of what it wrote.

Each test starts the real `kinesyslog listen --output-dir` on one loopback port (TCP and UDP),
lets a real sender write numbered messages to it, waits (bounded) until they are in the
output directory, stops the relay by PID and compares every event with the message as the
sender meant it: its text, its timestamp where the sender writes one, and its log group and
stream. Missing senders skip with the Debian package to install
(packaging/prerequisites.sh, INTEROP_TOOLS).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import ports, wait_relay
from tests.e2e.relay_process import Relay, decode_records, events_of, wait_for

Event = tuple[str, str, dict]  # (logGroup, logStream, event)
WAIT_TIMEOUT = 20.0  # seconds for the messages of one test to reach the output directory
STOP_TIMEOUT = 10.0  # seconds a sender gets to exit after SIGTERM, and after SIGKILL
START_TIMEOUT = 15.0  # seconds a sender gets to listen on its input


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: real senders (logger, SysLogHandler, rsyslog, syslog-ng, pygelf, "
                   "graypy) and HAProxy against the real relay (tests/interop)")


def require(command: str, package: str) -> str:
    """The path of ``command`` (also looked for in the sbin directories), or a skip naming
    the Debian package that provides it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin",
                              "/sbin"])
    found = shutil.which(command, path=search)
    if found is None:
        pytest.skip(f"{command} is not installed (Debian package {package}; "
                    f"packaging/prerequisites.sh installs it as root)")
    return found


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Ends a sender started by a test, by PID: SIGTERM, then SIGKILL after a bounded wait."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


def wait_listening(process: subprocess.Popen[bytes], host: str, port: int, what: str,
                   log: Path | None = None) -> None:
    """Waits (bounded) until ``host:port`` accepts a connection (opened and closed again);
    fails at once, with the log, if the sender exits meanwhile."""
    def listening() -> bool:
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log is not None and log.exists() else ""
            raise AssertionError(f"{what}: the process exited ({process.returncode}): {text}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        return False

    wait_for(listening, START_TIMEOUT, interval=0.05, message=what)


@dataclass
class RelayUnderTest:
    relay: Relay
    port: int
    out: Path
    kind: str = "syslog"  # "gelf" with --gelf

    @property
    def group(self) -> str:
        return f"/kinesyslog/{self.kind}/{self.port}"

    def events(self) -> list[Event]:
        """The events of every finished record file in the output directory."""
        if not self.out.is_dir():
            return []
        return events_of(record for path in sorted(self.out.glob("record-*.gz"))
                         for record in decode_records(path.read_bytes()))

    def wait_events(self, count: int, timeout: float = WAIT_TIMEOUT) -> None:
        """Waits (bounded) until ``count`` events were written."""
        wait_relay(self.relay, lambda: len(self.events()) >= count, timeout,
                   message=f"{count} events in {self.out}", interval=0.1)

    def finish(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Event]:
        """Waits until ``count`` events were written, stops the relay (which flushes whatever
        else it holds) and returns every event it wrote."""
        self.wait_events(count, timeout)
        code = self.relay.stop()
        assert code == 0, f"the relay exited with {code}\n{self.relay.log}"
        return self.events()


@contextlib.contextmanager
def running_relay(tmp_path: Path, port: int, listen: list[str],
                  extra: Sequence[str] = ()) -> Iterator[RelayUnderTest]:
    """The real relay with ``listen`` options (the ports), writing to ``tmp_path``/out with
    its spool in ``tmp_path``/spool (both kept across restarts in one test); stopped by PID
    when the block ends."""
    out = tmp_path / "out"
    process = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                     "--address", "127.0.0.1", *listen, "--flush-interval", "0.5", *extra])
    try:
        process.start()
        yield RelayUnderTest(process, port, out, "gelf" if "--gelf" in extra else "syslog")
    finally:
        if process.process is not None and process.process.poll() is None:
            try:
                process.stop(timeout=15)
            finally:
                process.kill()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayUnderTest]:
    """The real relay on one free loopback port for TCP and UDP, writing to an output dir."""
    (port,) = ports(1)
    with running_relay(tmp_path, port, ["--tcp-port", str(port), "--udp-port", str(port)]) \
            as under_test:
        yield under_test


def check_messages(relay: RelayUnderTest, events: list[Event], expected: list[str],
                   ordered: bool = True) -> dict[str, int]:
    """Every expected message exactly once, nothing else, all in the relay's group and from
    127.0.0.1; ``ordered``: in sending order. Returns {message: timestamp}."""
    places = Counter((group, stream) for group, stream, _ in events)
    assert set(places) <= {(relay.group, "127.0.0.1")}, f"unexpected group/stream: {places}"
    messages = [event["message"] for _, _, event in events]
    got, wanted = Counter(messages), Counter(expected)
    missing, extra = wanted - got, got - wanted
    assert not missing and not extra, (
        f"{len(missing)} missing (first: {sorted(missing)[:3]}), "
        f"{len(extra)} unexpected or duplicated (first: {sorted(extra)[:3]})")
    if ordered:
        assert messages == expected, "the messages arrived out of sending order"
    return {event["message"]: event["timestamp"] for _, _, event in events}
