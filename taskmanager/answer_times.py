"""How long the server takes to answer, seen from this client.

The least time among the latest answers is the network's round trip plus the
server's own time for one request: queueing at a busy server raises the typical
answer, not the least. A caller sizing how many requests to keep in flight needs
that figure: when it is mostly travel, requests side by side hide it without
making the server do more per task.
"""

from __future__ import annotations

import threading
from collections import deque

RECENT_ANSWERS = 64


class AnswerTimes:
    """The latest answers' times (seconds from send to answer), any status."""

    def __init__(self, keep: int = RECENT_ANSWERS) -> None:
        self._times: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(max(0.0, seconds))

    def fastest(self) -> float | None:
        """The least of the latest answers' times; ``None`` before the first answer."""
        with self._lock:
            return min(self._times) if self._times else None
