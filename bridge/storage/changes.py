"""Noticing another process's commit at once, without polling the queue itself.

A worker with nothing to do and a daemon between pushes would otherwise look
again only at their next poll (up to ``poll_seconds`` and ``push_interval_seconds``):
a task the daemon just claimed waits for an idle worker, a result a worker just
stored waits for the push. On SQLite, ``PRAGMA data_version`` on a connection of
our own changes whenever another connection commits: reading it takes no lock and
costs microseconds, so one thread reads it every few milliseconds and wakes whoever
waits. On PostgreSQL there is no such number (LISTEN/NOTIFY would need a trigger
on the queue's tables): the watch is off and polling works as before.

A timed wake-up is not free (50-120 us of CPU each on a small VM, more than the read
itself), so the watch sleeps with ``time.sleep`` (half an ``Event.wait``'s cost),
reads on the driver's connection, and looks only while it is wanted: while a caller
waits in ``wait`` or a listener is registered. A worker whose slots are all busy
does not poll at all; the first read after a pause compares with the last one
before it, so a commit made meanwhile still wakes the new waiter.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

logger = logging.getLogger("bridge.storage")

WATCH_SECONDS = 0.005  # while commits come
QUIET_WATCH_SECONDS = 0.02  # once they stop: a quarter of the reads
# How long without a commit counts as quiet. An idle daemon still commits its own
# bookkeeping every second or two (its tick, its last contact): after a quiet second
# a worker's watch read every 5 ms most of the time (113 wake-ups a second, idle);
# after a quarter of a second, 69 (the worker idle: 15-16 ms of CPU a second instead
# of 20-24). Commits closer together than this (any stream of tasks) keep 5 ms; one
# commit alone (the daemon's bookkeeping) leaves a quiet watch quiet.
QUIET_AFTER_SECONDS = 0.25


class ChangeWatch:
    """Counts the commits others made (``generation``); wakes waiters when it moves."""

    def __init__(
        self,
        engine: Engine,
        interval: float = WATCH_SECONDS,
        quiet_interval: float = QUIET_WATCH_SECONDS,
    ) -> None:
        """``interval`` while commits come close together; ``quiet_interval`` (never
        less) once they stop."""
        self.available = engine.dialect.name == "sqlite"
        self.interval = interval
        self.quiet_interval = max(interval, quiet_interval)
        self.generation = 0
        self._engine = engine
        lock = threading.Lock()
        self._changed = threading.Condition(lock)
        # The watch's thread waits here (no timer) while nobody waits or listens.
        self._wanted = threading.Condition(lock)
        self._waiting = 0
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._driver: Any = None  # our own connection, read by the watch's thread only
        self.reads = 0  # of data_version, so far (the watch's cost: one wake-up each)

    def start(self) -> ChangeWatch:
        """Read the current version now (a commit from here on is a change), then watch."""
        if self.available and self._thread is None:
            first = self._read()
            self._thread = threading.Thread(
                target=self._run, args=(first,), daemon=True, name="bridge-changes"
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._changed:
            self._wanted.notify_all()
        if self._thread is not None:
            self._thread.join(1.0)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the watch's thread; keep it short) after each change;
        the watch then looks all the time."""
        with self._changed:
            self._listeners.append(listener)
            self._wanted.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Until the generation moves past ``seen`` or ``timeout`` passes; the generation
        now. Without a watch (PostgreSQL) this is a plain wait of ``timeout``."""
        with self._changed:
            self._waiting += 1
            if self._waiting == 1:
                self._wanted.notify_all()
            try:
                self._changed.wait_for(lambda: self.generation != seen, timeout)
            finally:
                self._waiting -= 1
            return self.generation

    def _read(self) -> int | None:
        """This connection's data_version; ``None`` while the database is unreadable."""
        self.reads += 1
        try:
            if self._driver is None:
                self._driver = self._engine.raw_connection()
            driver = self._driver.driver_connection
            return int(driver.execute("PRAGMA data_version").fetchone()[0])
        except Exception:  # database trouble: the pollers still cover it; try again
            logger.debug("change watch: data_version unreadable", exc_info=True)
            if self._driver is not None:
                with contextlib.suppress(Exception):
                    self._driver.invalidate()
            self._driver = None
            return None

    def _run(self, last: int | None) -> None:
        quiet_since = time.monotonic()
        changed_at = float("-inf")
        interval = self.interval
        while not self._stop.is_set():
            rested = self._await_demand()
            if not rested:
                time.sleep(interval)
            if self._stop.is_set():
                break
            version = self._read()
            if rested and last is None and version is not None:
                self._moved()  # no reading from before the rest to compare: assume a change
            if version is None:
                last = None  # a new connection counts from its own number
                self._stop.wait(1.0)
                continue
            if last is not None and version != last:
                self._moved()
                now = time.monotonic()
                if now - changed_at <= QUIET_AFTER_SECONDS:  # commits close together
                    quiet_since = now
                changed_at = now
            last = version
            quiet = time.monotonic() - quiet_since > QUIET_AFTER_SECONDS
            interval = self.quiet_interval if quiet else self.interval
        if self._driver is not None:
            with contextlib.suppress(Exception):
                self._driver.close()

    def _await_demand(self) -> bool:
        """Block (no timer) while nobody waits or listens; True when it did, so that the
        caller reads at once: a commit made during the pause may be what a new waiter
        is waiting for."""
        with self._changed:
            if self._waiting or self._listeners:
                return False
            self._wanted.wait_for(lambda: self._waiting or self._listeners or self._stop.is_set())
            return True

    def poke(self) -> None:
        """Wake every waiter now (a stop)."""
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def _moved(self) -> None:
        # One waiter per change: an idle worker's slots would otherwise all try to take
        # at each commit (a write transaction each). A slot that takes a task commits,
        # which wakes the next one.
        with self._changed:
            self.generation += 1
            self._changed.notify(1)
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop the watch
                logger.exception("change watch listener failed")
