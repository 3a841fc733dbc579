"""The rate-limited warning: what it holds back is reported once its window is over."""

from __future__ import annotations

import logging
import time

import pytest

from kinesyslog.logs import RateLimitedLog


def test_the_last_window_is_reported_too(caplog: pytest.LogCaptureFixture) -> None:
    problems = RateLimitedLog(logging.getLogger("test.problems"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.problems"):
        for _ in range(5):
            problems.warning("bad packet", "from 192.0.2.1")
        problems.flush()  # the window is still open: nothing yet
        assert [r.getMessage() for r in caplog.records] == ["bad packet: from 192.0.2.1"]
        time.sleep(0.25)
        problems.flush()
        problems.flush()  # reported once
        problems.warning("other", "x")
        problems.warning("other", "y")
        problems.flush(force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "bad packet: from 192.0.2.1",
        "bad packet: 4 more since the last report",
        "other: x",
        "other: 1 more since the last report",
    ]


def test_a_count_adds_up_like_that_many_calls(caplog: pytest.LogCaptureFixture) -> None:
    problems = RateLimitedLog(logging.getLogger("test.counted"), interval=60.0)
    with caplog.at_level(logging.WARNING, logger="test.counted"):
        problems.warning("ring full", "64 dropped", count=64)
        problems.warning("ring full", "100 dropped", count=36)
        problems.flush(force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "ring full: 64 dropped",
        "ring full: 99 more since the last report",
    ]
