"""Running a job's requests on several connections at once.

The server answers each request in a few milliseconds and serves several at a
time; one request after another leaves it idle most of the time. A ``Fanout``
runs a batch of calls on up to ``width`` threads (the client's session pools
their connections) and gives back their results in order; with a width of 1 it
runs them inline, one after another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Fanout:
    def __init__(self, width: int, name: str) -> None:
        self.width = max(1, width)
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Every call's result, in order; the first exception is raised after all ended."""
        if self.width == 1 or len(calls) <= 1:
            return [call() for call in calls]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.width, thread_name_prefix=self.name)
            pool = self._pool
        futures = [pool.submit(call) for call in calls]
        errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class Slots:
    """A burst's budget shared by its threads: at most ``count`` requests, none after
    ``stop()`` (an empty answer, an error, a spent rate window)."""

    def __init__(self, count: int) -> None:
        self._remaining = count
        self._stopped = False
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._stopped or self._remaining <= 0:
                return False
            self._remaining -= 1
            return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
