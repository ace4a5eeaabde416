"""Outbox rows delivered, said once a minute at INFO; each push at DEBUG.

A line per push ("delivered 1 outbox row(s)") drowned the daemon's log: a busy
bridge pushes several times a second, as each worker's result starts a push.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("bridge.daemon")


class PushSummary:
    """Counts delivered rows and logs ``delivered N outbox rows in the last 60 s`` at
    most every ``every`` seconds (nothing for a minute without deliveries)."""

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, every: float = 60.0
    ) -> None:
        self.monotonic = monotonic
        self.every = every
        self._count = 0
        self._since = monotonic()
        self._lock = threading.Lock()

    def pushed(self, delivered: int) -> None:
        """After each push (the push job runs often: the summary comes on time)."""
        if delivered:
            logger.debug("delivered %d outbox row(s)", delivered)
        with self._lock:
            self._count += delivered
            due = self.monotonic() - self._since >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        """Log what was delivered since the last summary, if anything was."""
        with self._lock:
            count, seconds = self._count, self.monotonic() - self._since
            self._count, self._since = 0, self.monotonic()
        if count:
            logger.info("delivered %d outbox rows in the last %.0f s", count, seconds)
