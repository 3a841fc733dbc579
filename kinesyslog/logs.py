"""Logging set-up and a rate-limited warning for per-packet problems."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(debug: bool, role: str = "listener") -> None:
    """Logs to stderr (the journal under systemd), each line naming the process role."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{role}] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class RateLimitedLog:
    """Logs a problem at most once per interval, with how often it happened meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, what: str, detail: str = "", count: int = 1) -> None:
        """Reports ``count`` occurrences of a problem: one line, or none within the interval
        (they are counted for the next line)."""
        now = time.monotonic()
        last = self._last.get(what)
        if last is not None and now - last < self._interval:
            self._suppressed[what] = self._suppressed.get(what, 0) + count
            return
        self._last[what] = now
        suppressed = self._suppressed.pop(what, 0)
        if count > 1:  # this line reports one of them; the others count as "more"
            self._suppressed[what] = count - 1
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self._logger.warning("%s%s%s", what, f": {detail}" if detail else "", more)

    def flush(self, force: bool = False) -> None:
        """Reports the problems counted but not logged in a window that has ended (or in
        every window, when force is set: at shutdown), so the log adds up to the counters."""
        now = time.monotonic()
        for what, suppressed in list(self._suppressed.items()):
            if force or now - self._last[what] >= self._interval:
                del self._suppressed[what]
                self._last[what] = now
                self._logger.warning("%s: %d more since the last report", what, suppressed)
