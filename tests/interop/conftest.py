"""Interoperability with real syslog senders (util-linux logger, Python's SysLogHandler,
rsyslog 8): the `interop` marker, the relay under test and the checks of what it wrote.

Each test starts the real `kinesyslog listen --output-dir` on one loopback port (TCP and UDP),
lets a real sender write numbered messages to it, waits (bounded) until they are in the
output directory, stops the relay by PID and compares every event with the message as the
sender meant it: its text, its timestamp where the sender writes one, and its log group and
stream. Missing senders skip with the Debian package to install
(packaging/prerequisites.sh, INTEROP_TOOLS).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import ports, wait_relay
from tests.e2e.relay_process import Relay, decode_records, events_of

Event = tuple[str, str, dict]  # (logGroup, logStream, event)
WAIT_TIMEOUT = 20.0  # seconds for the messages of one test to reach the output directory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: real syslog senders (logger, SysLogHandler, rsyslog) against "
                   "the real relay (tests/interop)")


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


@dataclass
class RelayUnderTest:
    relay: Relay
    port: int
    out: Path

    @property
    def group(self) -> str:
        return f"/kinesyslog/syslog/{self.port}"

    def events(self) -> list[Event]:
        """The events of every finished record file in the output directory."""
        if not self.out.is_dir():
            return []
        return events_of(record for path in sorted(self.out.glob("record-*.gz"))
                         for record in decode_records(path.read_bytes()))

    def finish(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Event]:
        """Waits until ``count`` events were written, stops the relay (which flushes whatever
        else it holds) and returns every event it wrote."""
        wait_relay(self.relay, lambda: len(self.events()) >= count, timeout,
                   message=f"{count} events in {self.out}", interval=0.1)
        code = self.relay.stop()
        assert code == 0, f"the relay exited with {code}\n{self.relay.log}"
        return self.events()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayUnderTest]:
    """The real relay on one free loopback port for TCP and UDP, writing to an output dir."""
    (port,) = ports(1)
    out = tmp_path / "out"
    process = Relay(["--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"),
                     "--address", "127.0.0.1", "--tcp-port", str(port), "--udp-port", str(port),
                     "--flush-interval", "0.5"])
    try:
        process.start()
        yield RelayUnderTest(process, port, out)
    finally:
        if process.process is not None and process.process.poll() is None:
            try:
                process.stop(timeout=15)
            finally:
                process.kill()


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
