"""Running one handler call, in the worker's own thread or under a time limit.

Python cannot stop a thread. Under a time limit the call runs on a helper thread
the slot waits for; past the limit the slot stops waiting, the task is failed,
and the helper is left to finish on its own (its result is discarded, and the
next call gets a new helper). A handler that never returns keeps its thread, and
whatever it holds, until the process exits: ``--pool process`` really stops it.
"""

from __future__ import annotations

import queue as queue_module
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

RanKind = Literal["ok", "error", "timeout"]


@dataclass(frozen=True)
class Ran:
    """What one handler call came to: its value, what it raised, or the time limit."""

    kind: RanKind
    value: Any = None
    error: BaseException | None = None
    # The handler's own writes for its result's transaction (``write_with_result``).
    writes: tuple[Callable[[Any], Any], ...] = ()
    # The traceback, when ``error`` cannot carry its own (it came from another process).
    detail: str | None = None


def run_call(call: Callable[[], Any]) -> Ran:
    """Whatever the call raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is its
    own outcome: in a worker thread neither can come from a signal (Python raises those in
    the main thread only), so they belong to the handler's task, not to the process."""
    try:
        return Ran("ok", call())
    except BaseException as exc:
        return Ran("error", error=exc)


class _Job:
    """One call handed to the helper. ``done`` is a lock held until the call ended: a
    bare lock's timed acquire and release cost the slot and the helper a third less
    CPU than an ``Event`` (a condition and a lock made for every wait), once a task."""

    __slots__ = ("call", "done", "ran")

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.done = threading.Lock()
        self.done.acquire()
        self.ran = Ran("timeout")


def _helper(inbox: queue_module.SimpleQueue[_Job | None]) -> None:
    while (job := inbox.get()) is not None:
        job.ran = run_call(job.call)
        job.done.release()


class ThreadRunner:
    """One worker slot's way of running calls: inline, or on a helper under a limit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inbox: queue_module.SimpleQueue[_Job | None] | None = None
        self.abandoned = 0

    def run(self, call: Callable[[], Any], limit: float | None) -> Ran:
        if limit is None:
            return run_call(call)
        if self._inbox is None:
            self._inbox = queue_module.SimpleQueue()
            threading.Thread(
                target=_helper, args=(self._inbox,), daemon=True, name=f"{self.name}-handler"
            ).start()
        job = _Job(call)
        self._inbox.put(job)
        if job.done.acquire(timeout=min(max(0.0, limit), threading.TIMEOUT_MAX)):
            return job.ran
        self._inbox.put(None)  # the helper ends after the call it is stuck in, if ever
        self._inbox = None
        self.abandoned += 1
        return Ran("timeout")

    def close(self) -> None:
        if self._inbox is not None:
            self._inbox.put(None)
            self._inbox = None
