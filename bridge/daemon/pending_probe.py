"""Seeing pending work without spending the claim window.

The server keeps one rate window per client and path: every claim of every type
shares ``/tasks/claim``, and an empty claim spends it as much as a real one. The
list endpoint has a window of its own, and one unfiltered page of pending tasks
covers every type at once. So an idle bridge looks (one request a second for all
its types) and claims only what it saw; a slow claim probe per type covers what
the list cannot see (tasks whose lease ran out stay ``claimed`` on the server).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta

from taskmanager import TaskManagerClient
from taskmanager.protocol import RateLimitInfo

LIST_PATH, CLAIM_PATH = "/tasks", "/tasks/claim"
PAGE = 100
ASSUMED_WINDOW_LIMIT = 100  # the deployment's default, when it sends no X-RateLimit-Limit
WINDOW_SECONDS = 60.0  # the deployment's default window


def window_free_at(
    info: RateLimitInfo | None, in_flight: int = 1, wall: Callable[[], float] = time.time
) -> float:
    """Seconds until a request on this path would not be refused (0: now): the window is
    spent when what the server said is left would not cover the requests that may be in
    flight beside this one, and it is free again at its reset."""
    if info is None:
        return 0.0
    now = wall()
    resets = info.exhausted_until(now, reserve=in_flight - 1)
    return max(0.0, resets - now) if resets is not None else 0.0


def probe_interval(
    types: int, poll_max_seconds: float, share: float, limit: int | None
) -> timedelta:
    """How often each type is claimed blind while idle, so that all types together spend
    at most ``share`` of the claim window (and no more often than ``poll_max_seconds``)."""
    per_minute = share * (limit or ASSUMED_WINDOW_LIMIT)
    budget = WINDOW_SECONDS * types / max(per_minute, 1e-9)
    return timedelta(seconds=max(poll_max_seconds, budget))


class PendingWatch:
    """Counts pending tasks of our types, one list request per look."""

    def __init__(self, client: TaskManagerClient, types: Sequence[str]) -> None:
        self.client = client
        self.types = list(types)
        self._rotation = 0  # when the unfiltered page is full: one typed look per turn

    def look(self) -> dict[str, int]:
        """Pending tasks seen per type (a full page counts as ``PAGE``: "many")."""
        rows = list(self.client.list_tasks(status="pending", page_size=PAGE, max_items=PAGE))
        seen = Counter(row.type for row in rows if row.type in self.types)
        if len(rows) < PAGE or seen:
            return {t: (PAGE if len(rows) == PAGE else seen[t]) for t in seen}
        # A page full of other types' tasks hides ours: look at one of ours by name.
        task_type = self.types[self._rotation % len(self.types)]
        self._rotation += 1
        typed = list(
            self.client.list_tasks(status="pending", task_type=task_type, page_size=1, max_items=1)
        )
        return {task_type: PAGE} if typed else {}
