"""util-linux `logger` (Debian package bsdutils) against the real relay: RFC 5424 over UDP,
TCP with LF framing and TCP with octet counting, and RFC 3164 over UDP and TCP."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.interop.conftest import RelayUnderTest, check_messages, require

pytestmark = pytest.mark.interop

COUNT = 50
SENDER_TIMEOUT = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MODES = {  # test id: logger's options
    "udp": ["-d"],
    "tcp": ["-T"],
    "tcp-octet-count": ["-T", "--octet-count"],
    "udp-rfc3164": ["-d", "--rfc3164"],
    "tcp-rfc3164": ["-T", "--rfc3164"],
}
# What logger writes (TZ=UTC): PRI user.notice, then RFC 5424 with its timeQuality element
# or the RFC 3164 header, the tag given with -t and the line read from standard input.
RFC5424 = re.compile(r"<13>1 (?P<time>\S+) (?P<host>\S+) interop - - "
                     r"\[timeQuality [^\]]*\] (?P<text>.*)", re.DOTALL)
RFC3164 = re.compile(r"<13>(?P<time>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
                     r"interop: (?P<text>.*)", re.DOTALL)


def milliseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def rfc3164_milliseconds(stamp: str, received: float) -> int:
    """`Mmm dd hh:mm:ss` in UTC, in the year (of three) that puts it nearest the receive time."""
    year = datetime.fromtimestamp(received, timezone.utc).year
    candidates = [datetime.strptime(f"{y} {stamp}", "%Y %b %d %H:%M:%S")
                  .replace(tzinfo=timezone.utc) for y in (year - 1, year, year + 1)]
    return milliseconds(min(candidates, key=lambda c: abs(c.timestamp() - received)))


@pytest.mark.parametrize("mode", list(MODES))
def test_logger(relay: RelayUnderTest, tmp_path: Path, mode: str) -> None:
    logger = require("logger", "bsdutils")
    texts = [f"logger {mode} message {n:03d} of {COUNT}: grüße, tab\there" for n in range(COUNT)]
    started = time.time()
    result = subprocess.run(
        [logger, "-n", "127.0.0.1", "-P", str(relay.port), "-t", "interop", *MODES[mode]],
        input="\n".join(texts) + "\n", text=True, capture_output=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        timeout=SENDER_TIMEOUT, check=False)
    ended = time.time()
    assert result.returncode == 0, result.stderr
    events = relay.finish(COUNT)

    pattern = RFC3164 if "rfc3164" in mode else RFC5424
    host = socket.gethostname()
    by_text: dict[str, tuple[str, int]] = {}
    for _, _, event in events:
        found = pattern.fullmatch(event["message"])
        assert found, f"not what logger writes: {event['message']!r}"
        assert found["host"] in (host, host.split(".")[0]), event["message"]
        if pattern is RFC5424:
            expected = milliseconds(datetime.fromisoformat(found["time"]))
        else:
            expected = rfc3164_milliseconds(found["time"], started)
        assert event["timestamp"] == expected, (event, expected)
        assert started - 2 <= expected / 1000 <= ended + 1, event  # logger's clock: now
        by_text[found["text"]] = (event["message"], event["timestamp"])
    # Exactly once, in order, with the text logger was given and nothing after it.
    check_messages(relay, events, [by_text[text][0] if text in by_text else text
                                   for text in texts])
