"""Time limits for handlers that run on their slot's own thread.

Python cannot stop a thread. The thread engine used to run every call under a limit
on a helper thread the slot waited for, so that the slot could stop waiting at the
limit: two thread switches a task, and with four slots the GIL handed back and
forth between eight threads (a third of a worker's CPU a task with a handler that
returns at once: 0.31 against 0.21 ms, ``tests/bench/worker_slots.py``).

Now the slot runs the call itself, and one ``Watchman`` thread for the whole worker
keeps the deadlines of the calls under way. It sleeps until the earliest, and is
woken only by a call whose deadline comes before that (rarely: a task's limit is
mostly what is left of its remote lease, and later tasks have later leases). At a
deadline the watchman takes the call away from its slot (``Overrun``) and hands it
to ``on_overrun``: the engine fails the task on a new thread that then serves the
slot. The old thread goes on with the handler; when it returns, ``returned`` tells
it that the call is no longer its own, and the thread ends without touching the
task or the slot. A handler that never returns keeps its thread, and whatever it
holds, until the process exits, as before: ``--pool process`` really stops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("bridge.worker")

# The watchman looks at least this often. With no call under way, a call starting
# later than that never wakes it (a limit is mostly what is left of a remote lease,
# minutes), so a worker whose slots go idle between tasks does not wake it per task;
# and no wait is longer than the platform's timeouts can take (a limit of 1e10 s).
LONGEST_WAIT_SECONDS = 60.0


class Overrun:
    """One call under a time limit: its slot's, until the watchman takes it away."""

    __slots__ = ("deadline", "limit", "replaced", "slot", "started", "successor", "task")

    def __init__(self, slot: int, limit: float, task: Any, started: float) -> None:
        self.slot = slot
        self.deadline = time.monotonic() + limit
        self.limit = limit
        self.task = task
        self.started = started  # the worker's clock, for the failure's message
        # Set once the call is settled without its thread: a new thread serves the slot
        # (``successor``), and the old one ends only then, so that the worker never
        # sees a slot without a live thread; or no thread could be started, the task
        # was failed all the same, and the old one serves the slot again when its
        # handler returns.
        self.replaced: threading.Event | None = None
        self.successor = False


class Watchman:
    """Hands the calls that pass their deadline to ``on_overrun`` (on its own thread),
    which starts the slot's new thread and then sets the call's ``replaced``."""

    def __init__(self, on_overrun: Callable[[Overrun], None]) -> None:
        self._on_overrun = on_overrun
        self._lock = threading.Condition()
        self._calls: dict[int, Overrun] = {}  # slot -> its call under way
        # When the watchman wakes next. A call that ends does not move it: one wake-up
        # at a stale deadline costs less than one per task.
        self._wake_at: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.wakes = 0  # times the watchman looked (what it costs; the tests count them)

    def watch(self, call: Overrun) -> None:
        """``call`` starts on its slot's thread."""
        with self._lock:
            if self._thread is None:  # set once started: a failed start is tried again
                thread = threading.Thread(target=self._run, daemon=True, name="bridge-time-limits")
                thread.start()
                self._thread = thread
            self._calls[call.slot] = call
            if self._wake_at is None or call.deadline < self._wake_at:
                self._wake_at = call.deadline
                self._lock.notify()

    def returned(self, call: Overrun) -> bool:
        """``call`` returned on its slot's thread: True when its outcome is still the
        slot's; False when the watchman took it away, once that is settled (see
        ``replaced``)."""
        with self._lock:
            replaced = call.replaced
            if replaced is None and self._calls.get(call.slot) is call:
                del self._calls[call.slot]
        if replaced is None:
            return True
        replaced.wait()
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                self.wakes += 1
                now = time.monotonic()
                overdue = [call for call in self._calls.values() if call.deadline <= now]
                for call in overdue:
                    call.replaced = threading.Event()
                    del self._calls[call.slot]
                if not overdue:
                    deadlines = [call.deadline for call in self._calls.values()]
                    look_again = now + LONGEST_WAIT_SECONDS
                    self._wake_at = min(min(deadlines, default=look_again), look_again)
                    self._lock.wait(self._wake_at - now)
                    continue
            for call in overdue:
                try:
                    self._on_overrun(call)
                except Exception:  # the watchman must outlive it: other limits depend on it
                    logger.exception("time limits: the overrun of slot %d failed", call.slot)
                finally:
                    assert call.replaced is not None
                    call.replaced.set()  # never leave the old thread waiting
