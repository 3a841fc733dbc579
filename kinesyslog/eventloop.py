"""A small selectors (epoll) loop: readiness callbacks, timers and signal wake-ups."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], Any]
CANCELLED_TIMERS_COMPACT_MIN = 256


def _nothing() -> None:
    """What a cancelled timer calls: nothing, and it holds no reference to its owner."""


class Timer:
    __slots__ = ("callback", "cancelled", "loop", "when")

    def __init__(self, when: float, callback: Callback, loop: EventLoop) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.loop: EventLoop | None = loop

    def cancel(self) -> None:
        """Drops the callback at once: a cancelled timer must not keep its owner (a closed
        connection with its TLS buffers, say) alive until it would have fired."""
        if not self.cancelled:
            self.cancelled = True
            self.callback = _nothing
            if self.loop is not None:
                self.loop._timer_cancelled()
                self.loop = None


class EventLoop:
    def __init__(self) -> None:
        # Seconds to pause after a round of readiness callbacks, unless one of them set
        # more_pending (it stopped with more to read). Under a steady flood each wake-up then
        # finds a batch instead of a few datagrams, so the fixed cost of a wake-up (epoll, the
        # Python callbacks) is shared by many messages; the kernel holds the rest meanwhile.
        self.nap = 0.0
        self.more_pending = False
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_timers = 0
        self._sequence = itertools.count()
        self._signal_handlers: dict[int, Callback] = {}
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._wakeup_reader.setblocking(False)
        self._wakeup_writer.setblocking(False)
        self._selector.register(self._wakeup_reader, selectors.EVENT_READ, self._on_wakeup)
        self._running = False

    # --- readiness -----------------------------------------------------------------------
    def add_reader(self, fileobj: Any, callback: Callback) -> None:
        self._selector.register(fileobj, selectors.EVENT_READ, callback)

    def watch(self, fileobj: Any, callback: Callback, *, readable: bool, writable: bool) -> None:
        """Calls callback when fileobj is readable and/or writable; neither: stop watching."""
        events = selectors.EVENT_READ if readable else 0
        if writable:
            events |= selectors.EVENT_WRITE
        registered = self.is_reading(fileobj)
        if not events:
            if registered:
                self._selector.unregister(fileobj)
        elif registered:
            self._selector.modify(fileobj, events, callback)
        else:
            self._selector.register(fileobj, events, callback)

    def remove_reader(self, fileobj: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # removal is idempotent
            self._selector.unregister(fileobj)

    def is_reading(self, fileobj: Any) -> bool:
        try:
            self._selector.get_key(fileobj)
        except (KeyError, ValueError):
            return False
        return True

    # --- timers --------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, self)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def _timer_cancelled(self) -> None:
        # Thousands of short-lived connections each cancel a 10 s timer: rebuild the heap
        # when cancelled entries are the majority, so that it stays as small as the live ones.
        self._cancelled_timers += 1
        if (self._cancelled_timers > CANCELLED_TIMERS_COMPACT_MIN
                and 2 * self._cancelled_timers > len(self._timers)):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    def call_every(self, interval: float, callback: Callback) -> None:
        def tick() -> None:
            callback()
            self.call_later(interval, tick)

        self.call_later(interval, tick)

    # --- signals -------------------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Runs callback in the loop (not in the signal handler) when signum arrives."""
        self._signal_handlers[signum] = callback
        signal.set_wakeup_fd(self._wakeup_writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signum, lambda *_: None)

    def _on_wakeup(self) -> None:
        try:
            data = self._wakeup_reader.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # --- running -------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self._run_once()

    def run_until(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Runs the loop until predicate() is true or the monotonic deadline passes."""
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            self._run_once(max_wait=max(0.0, deadline - time.monotonic()))
        return True

    def _run_once(self, max_wait: float = 1.0) -> None:
        timeout = max_wait
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        ready = self._selector.select(timeout)
        self.more_pending = False
        for key, _ in ready:
            key.data()
        if ready and self.nap and not self.more_pending:
            time.sleep(self.nap)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                self._cancelled_timers -= 1
            else:
                timer.loop = None
                timer.callback()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._selector.close()
        self._wakeup_reader.close()
        self._wakeup_writer.close()

