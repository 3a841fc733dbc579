"""What connections may take of the listener: slots, slots per source, idle time, TLS
handshakes in progress, and memory for unfinished messages (docs/contract.md §9.2, §9.3).

The listener asks before it admits a connection and reports what each one holds; the
limits close the connections that must give way. A closed connection is counted by reason.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kinesyslog import constants
from kinesyslog.config import Config
from kinesyslog.logs import RateLimitedLog
from kinesyslog.session import CloseReason

if TYPE_CHECKING:
    from kinesyslog.listeners import StreamConnection


class ConnectionLimits:
    def __init__(self, config: Config, connections: set[StreamConnection],
                 count_rejected: Callable[[CloseReason], None], problems: RateLimitedLog,
                 start_reading: Callable[[StreamConnection], None]) -> None:
        """connections: the listener's open connections (read, never changed here).
        start_reading: registers a connection with the event loop."""
        self.config = config
        self.connections = connections
        self.count_rejected = count_rejected
        self.problems = problems
        self.start_reading = start_reading
        self._per_source: dict[bytes, int] = {}  # open connections by sender address
        self._reclaim_not_before = 0.0  # no connection can give way to a new one before then
        self.partial_bytes = 0  # bytes of unfinished messages held by all framers together
        self.handshakes = 0  # TLS handshakes in progress
        self._handshake_queue: deque[StreamConnection] = deque()  # TLS, waiting for a slot

    # --- slots -------------------------------------------------------------------------------
    def make_room(self) -> bool:
        """Whether one more connection may open (--max-connections), after closing the
        connection idle longest if every slot is taken and it has been idle long enough."""
        if len(self.connections) < self.config.max_connections:
            return True
        return self._reclaim_idle_slot()

    def claim_source(self, source: bytes) -> bool:
        """Counts one more connection of source; False when that would exceed the cap."""
        cap = self.config.max_connections_per_source
        held = self._per_source.get(source, 0)
        if cap and held >= cap:
            return False
        self._per_source[source] = held + 1
        return True

    def release_source(self, source: bytes) -> None:
        held = self._per_source.get(source, 0) - 1
        if held > 0:
            self._per_source[source] = held
        else:
            self._per_source.pop(source, None)

    def _reclaim_idle_slot(self) -> bool:
        """Every slot is taken: closes the connection idle longest if it has been idle for
        IDLE_RECLAIM_AFTER, so that idle connections cannot lock new senders out."""
        now = time.monotonic()
        if now < self._reclaim_not_before:
            return False
        idlest = min((c for c in self.connections if not c.pending and not c.closing),
                     key=lambda c: c.last_active, default=None)
        if idlest is None:
            return False
        if now - idlest.last_active < constants.IDLE_RECLAIM_AFTER:
            # last_active only grows: nothing can qualify before the idlest one does.
            self._reclaim_not_before = idlest.last_active + constants.IDLE_RECLAIM_AFTER
            return False
        self._close_idle(idlest, "every connection slot is taken")
        return True

    # --- unfinished messages ------------------------------------------------------------------
    def partial_changed(self, delta: int) -> None:
        """A connection's unfinished message grew or shrank by delta bytes."""
        self.partial_bytes += delta
        if self.partial_bytes > constants.PARTIAL_MESSAGE_BUDGET:
            self.shed_partial_messages()

    def shed_partial_messages(self) -> None:
        """Unfinished messages of all connections together exceed PARTIAL_MESSAGE_BUDGET:
        closes the connections that hold the most (their unfinished message is dropped and
        counted) until a quarter of the budget is free again. Normal senders send whole
        lines; what piles up is endless lines and huge octet counts."""
        target = constants.PARTIAL_MESSAGE_BUDGET * 3 // 4
        for connection in heapq.nlargest(len(self.connections) // 4 + 1, self.connections,
                                         key=lambda c: c.partial_bytes):
            if self.partial_bytes <= target or not connection.partial_bytes:
                return
            self.count_rejected(CloseReason.BUFFER_LIMIT)
            connection.listener.counters.incomplete_dropped += 1
            self.problems.warning(
                "connection closed: unfinished messages of all connections exceed "
                f"{constants.PARTIAL_MESSAGE_BUDGET} bytes",
                f"{connection.peer} held {connection.partial_bytes} bytes")
            connection.close()

    def expire_idle(self) -> None:
        """Closes connections that sent nothing for --idle-timeout seconds."""
        timeout = self.config.idle_timeout
        if not timeout:
            return
        oldest_allowed = time.monotonic() - timeout
        for connection in [c for c in self.connections if c.last_active < oldest_allowed]:
            if not connection.pending and not connection.closing:
                self._close_idle(connection, f"nothing received for {timeout:g} s")

    def _close_idle(self, connection: StreamConnection, why: str) -> None:
        self.count_rejected(CloseReason.IDLE_TIMEOUT)
        self.problems.warning("idle connection closed", f"{connection.peer}: {why}")
        connection.end_of_stream()

    # --- TLS handshakes -----------------------------------------------------------------------
    def queue_handshake(self, connection: StreamConnection) -> None:
        self._handshake_queue.append(connection)
        self._start_handshakes()

    def _start_handshakes(self) -> None:
        """TLS connections are read (PROXY header, handshake) only while at most
        MAX_TLS_HANDSHAKES are in progress: a server-side handshake holds about 45 KB once
        the ClientHello is in, so thousands of half-open ones must not run at once. The
        others wait, unread, until a slot frees or their negotiation timeout closes them."""
        queue = self._handshake_queue
        while queue and self.handshakes < constants.MAX_TLS_HANDSHAKES:
            connection = queue.popleft()
            if connection.closed:
                continue
            self.handshakes += 1
            connection.holds_handshake_slot = True
            self.start_reading(connection)

    def release_handshake_slot(self, connection: StreamConnection) -> None:
        connection.holds_handshake_slot = False
        self.handshakes -= 1
        self._start_handshakes()

