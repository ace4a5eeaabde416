"""Running a job's requests on several connections at once.

The server answers each request in a few milliseconds and serves several at a
time; one request after another leaves it idle most of the time. A ``Fanout``
runs a batch of operations with up to ``width`` requests in flight and gives back
their results in order. ``run_steps`` takes operations written as steps (generators
that ``yield from`` the client's calls): on the ``http.client`` transport they all
run on the calling thread (``taskmanager.in_flight``: no thread to wake per answer,
none waiting for the GIL behind another), elsewhere each on a thread of its own.
``run`` takes plain callables, on up to ``width`` threads (the client's pool keeps
their connections); with a width of 1 it runs them inline, one after another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar

from taskmanager.exchange import Steps

T = TypeVar("T")


class StepsRunner(Protocol):
    """The part of ``TaskManagerClient`` that carries out operations given as steps."""

    @property
    def runs_together(self) -> bool: ...

    def run(self, steps: Steps[Any]) -> Any: ...

    def run_together(self, operations: Sequence[Steps[Any]], width: int) -> list[Any]: ...


TopUp = Callable[[int, int], int]  # (in flight, taken so far) -> more requests granted


class Fanout:
    """Calls run side by side on up to ``width`` threads (``run`` may ask for fewer)."""

    def __init__(self, width: int, name: str) -> None:
        self.width = max(1, width)
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run_steps(
        self, client: StepsRunner, operations: Sequence[Steps[T]], width: int | None = None
    ) -> list[T]:
        """Every operation's result, in order, with at most ``width`` (at most the
        fan-out's own) under way at once; the first exception is raised after all ended."""
        runners = min(self.width, width or self.width)
        if client.runs_together:
            return client.run_together(operations, runners)
        return self.run([partial(client.run, steps) for steps in operations], runners)

    def run(self, calls: Sequence[Callable[[], T]], width: int | None = None) -> list[T]:
        """Every call's result, in order, with at most ``width`` (at most the fan-out's
        own) running at once; the first exception is raised after all ended."""
        runners = min(self.width, width or self.width, len(calls))
        if runners <= 1:
            return [call() for call in calls]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.width, thread_name_prefix=self.name)
            pool = self._pool
        results: list[T | None] = [None] * len(calls)
        errors: list[BaseException | None] = [None] * len(calls)
        order = iter(range(len(calls)))
        order_lock = threading.Lock()

        def runner() -> None:
            while True:
                with order_lock:
                    index = next(order, None)
                if index is None:
                    return
                try:
                    results[index] = calls[index]()
                except BaseException as exc:  # re-raised below, after every call ended
                    errors[index] = exc

        for future in [pool.submit(runner) for _ in range(runners)]:
            future.result()
        for error in errors:
            if error is not None:
                raise error
        return results  # type: ignore[return-value]  # every slot filled, none raised

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class Slots:
    """A burst's budget shared by its threads: ``count`` requests, topped up by
    ``top_up(in_flight, taken)`` whenever they are spent (room opened as workers took
    tasks), none after ``stop()`` (an empty answer, an error, a spent rate window).

    A taker calls ``settle()`` once its request's answer is recorded (or there was
    none to record), so that a top-up counts what is still in flight."""

    def __init__(self, count: int, top_up: TopUp | None = None) -> None:
        self.granted = count
        self._taken = 0
        self._settled = 0
        self._top_up = top_up
        self._stopped = False
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._stopped:
                return False
            if self._taken >= self.granted and self._top_up is not None:
                self.granted += max(0, self._top_up(self._taken - self._settled, self._taken))
            if self._taken >= self.granted:
                return False
            self._taken += 1
            return True

    def settle(self) -> None:
        with self._lock:
            self._settled += 1

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
