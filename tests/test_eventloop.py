"""The selectors loop: timers in order, periodic calls, readiness, signals, stop."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from kinesyslog.eventloop import EventLoop

WAIT = 5.0


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    event_loop = EventLoop()
    yield event_loop
    event_loop.close()


def run_for(loop: EventLoop, seconds: float) -> None:
    loop.run_until(lambda: False, time.monotonic() + seconds)


def test_timers_fire_in_time_order_and_cancelled_ones_never(loop: EventLoop) -> None:
    fired: list[str] = []
    loop.call_later(0.03, lambda: fired.append("third"))
    loop.call_later(0.01, lambda: fired.append("first"))
    cancelled = loop.call_later(0.015, lambda: fired.append("cancelled"))
    loop.call_later(0.02, lambda: fired.append("second"))
    loop.call_later(0.02, lambda: fired.append("second, same time: in call order"))
    cancelled.cancel()
    cancelled.cancel()  # idempotent
    assert loop.run_until(lambda: len(fired) == 4, time.monotonic() + WAIT)
    assert fired == ["first", "second", "second, same time: in call order", "third"]


def test_call_every_repeats(loop: EventLoop) -> None:
    ticks: list[float] = []
    loop.call_every(0.01, lambda: ticks.append(time.monotonic()))
    assert loop.run_until(lambda: len(ticks) >= 5, time.monotonic() + WAIT)
    assert all(later - earlier >= 0.009 for earlier, later in zip(ticks, ticks[1:]))


def test_readiness_callbacks_and_watch(loop: EventLoop) -> None:
    left, right = socket.socketpair()
    try:
        events: list[str] = []
        loop.add_reader(left, lambda: events.append(left.recv(100).decode()))
        right.send(b"hello")
        assert loop.run_until(lambda: events == ["hello"], time.monotonic() + WAIT)
        assert loop.is_reading(left)
        loop.watch(left, lambda: events.append("writable"), readable=False, writable=True)
        assert loop.run_until(lambda: "writable" in events, time.monotonic() + WAIT)
        loop.watch(left, lambda: None, readable=False, writable=False)
        assert not loop.is_reading(left)
        loop.remove_reader(left)  # removing twice is harmless
        right.send(b"unheard")
        run_for(loop, 0.05)
        assert events.count("writable") >= 1 and "unheard" not in events
    finally:
        left.close()
        right.close()


def test_signals_run_their_handler_in_the_loop(loop: EventLoop) -> None:
    received: list[int] = []
    loop.add_signal_handler(signal.SIGUSR2, lambda: received.append(signal.SIGUSR2))
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert loop.run_until(lambda: received == [signal.SIGUSR2], time.monotonic() + WAIT)
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_stop_ends_run(loop: EventLoop) -> None:
    loop.call_later(0.01, loop.stop)
    started = time.monotonic()
    loop.run()
    assert time.monotonic() - started < WAIT


def test_run_until_gives_up_at_the_deadline(loop: EventLoop) -> None:
    started = time.monotonic()
    assert loop.run_until(lambda: False, started + 0.05) is False
    assert 0.05 <= time.monotonic() - started < WAIT


@pytest.mark.parametrize(("nap", "more_pending", "sleeps"), [
    (0.001, False, [0.001]),  # a round that read everything: pause
    (0.001, True, []),  # a callback stopped with more to read: go on at once
    (0.0, False, []),  # no nap configured
])
def test_nap_after_a_round_of_reads(loop: EventLoop, monkeypatch: pytest.MonkeyPatch,
                                    nap: float, more_pending: bool, sleeps: list[float]) -> None:
    reader, writer = socket.socketpair()
    try:
        def on_readable() -> None:
            reader.recv(1)
            loop.more_pending = more_pending

        loop.nap = nap
        loop.add_reader(reader, on_readable)
        slept: list[float] = []
        monkeypatch.setattr("kinesyslog.eventloop.time.sleep", slept.append)
        writer.send(b"x")
        loop._run_once(max_wait=WAIT)
        assert slept == sleeps
        loop._run_once(max_wait=0.01)  # nothing ready: the select timeout is the only wait
        assert slept == sleeps
    finally:
        reader.close()
        writer.close()
