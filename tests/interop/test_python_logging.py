"""Python's logging.handlers.SysLogHandler (stdlib) against the real relay, over UDP and TCP.

SysLogHandler writes `<PRI>` + ident + the formatted record + NUL, one datagram per record
over UDP and NUL-terminated frames over TCP; it writes no timestamp, so the relay must use
its receive time."""

from __future__ import annotations

import logging
import math
import socket
import time
from logging.handlers import SysLogHandler

import pytest

from tests.interop.conftest import RelayUnderTest, check_messages

pytestmark = pytest.mark.interop

COUNT = 50
KINDS = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}


@pytest.mark.parametrize("kind", list(KINDS))
def test_syslog_handler(relay: RelayUnderTest, kind: str) -> None:
    handler = SysLogHandler(address=("127.0.0.1", relay.port), facility=SysLogHandler.LOG_LOCAL3,
                            socktype=KINDS[kind])
    handler.ident = "pyapp[42]: "
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger(f"interop-{kind}")  # not registered: no other handlers
    logger.addHandler(handler)
    texts = [f"python {kind} message {n:03d} of {COUNT}: grüße" for n in range(COUNT)]
    started = math.floor(time.time() * 1000)
    try:
        for n, text in enumerate(texts):
            if n % 2:
                logger.warning("%s", text)
            else:
                logger.error(text)
    finally:
        handler.close()
    ended = math.ceil(time.time() * 1000)
    events = relay.finish(COUNT)

    # local3 (19) * 8 + warning (4) or error (3); the NUL SysLogHandler appends is framing.
    expected = [f"<{19 * 8 + (4 if n % 2 else 3)}>pyapp[42]: "
                f"{'WARNING' if n % 2 else 'ERROR'} {text}" for n, text in enumerate(texts)]
    timestamps = check_messages(relay, events, expected)
    # No timestamp in the message: the receive time, taken after the send began (the
    # relay stamps on read; allow its flush interval and the wait above).
    late = [(m, t) for m, t in timestamps.items() if not started <= t <= ended + 5000]
    assert not late, f"receive times outside [{started}, {ended} + 5 s]: {late[:3]}"
