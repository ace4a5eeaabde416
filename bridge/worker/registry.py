"""The worker's own row in the ``workers`` table: written at start, beaten every few
seconds with its counts from a thread of its own, marked stopped at the end. What
``status``, the dashboard and the metrics show of workers comes from these rows; a
worker killed without a word stops beating and shows as lost."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from ..errors import BridgeError
from ..models import WorkerInfo
from ..queue import LocalQueue
from .core import Counters

logger = logging.getLogger("bridge.worker")

LOST_AFTER_BEATS = 3  # silent this many beats (``worker_beat_seconds``): lost


class WorkerRecord:
    """This process's row: ``start`` it, ``stop`` it; it beats in between."""

    def __init__(
        self,
        queue: LocalQueue,
        types: list[str],
        concurrency: int,
        pool: str,
        counters: Callable[[], Counters],
    ) -> None:
        self.queue, self.types, self.concurrency, self.pool = queue, types, concurrency, pool
        self.counters = counters
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._told = False
        self._recorded = False
        self._info: WorkerInfo | None = None

    def start(self) -> None:
        now = self.queue.clock()
        info = WorkerInfo(
            id=self.queue.locked_by,
            host=socket.gethostname(),
            pid=os.getpid(),
            types=self.types,
            concurrency=self.concurrency,
            pool=self.pool,
            started_at=now,
            beat_at=now,
            stopped_at=None,
            done=0,
            failed=0,
        )
        self._recorded = self._safely(lambda: self.queue.record_worker(info))
        self._info = info
        self._thread = threading.Thread(target=self._run, daemon=True, name="bridge-beat")
        self._thread.start()

    def stop(self) -> None:
        """The last beat, marked stopped (waited for a moment only: a locked database
        must not hold the worker's exit)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.queue.config.worker_beat_seconds):
            self._beat(stopped=False)
        self._beat(stopped=True)

    def _beat(self, *, stopped: bool) -> None:
        info = self._info
        if not self._recorded and info is not None:  # the start's record failed: again
            self._recorded = self._safely(lambda: self.queue.record_worker(info))
        counters = self.counters()
        self._safely(
            lambda: self.queue.worker_beat(counters.done, counters.failed, stopped=stopped)
        )

    def _safely(self, write: Callable[[], None]) -> bool:
        """A write of the row; database trouble is said once and otherwise ignored (the
        row is for operators, the tasks matter more)."""
        try:
            write()
        except BridgeError as exc:
            if not self._told:
                self._told = True
                logger.warning("the worker could not record itself for status (%s)", exc)
            return False
        return True
