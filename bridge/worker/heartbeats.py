"""The worker's heartbeats: the lock of every task it runs, renewed by one thread."""

from __future__ import annotations

import logging
import threading

from ..errors import BridgeError, TaskNotHeldError
from ..logs import task_fields
from ..models import LocalTask
from ..queue import LocalQueue

logger = logging.getLogger("bridge.worker")


class Heartbeats:
    """One thread renews the lock of every task the worker holds, every third of the lock
    time: a thread started per task cost a quarter of a short task's time."""

    def __init__(self, queue: LocalQueue) -> None:
        self.queue = queue
        self.interval = max(0.05, queue.config.lock_seconds / 3)
        self._held: dict[int, LocalTask] = {}
        self._told: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, task: LocalTask) -> None:
        with self._lock:
            self._held[task.id] = task
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="bridge-heartbeats"
                )
                self._thread.start()

    def release(self, task: LocalTask) -> None:
        """A renewal racing the task's end changes nothing (claim token)."""
        with self._lock:
            if self._held.get(task.id) is task:
                del self._held[task.id]
            self._told.discard(task.id)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = list(self._held.values())
            for task in held:
                try:
                    self._renew(task)
                except Exception:  # this thread keeps every lock alive: it must not die
                    logger.exception("heartbeat of task %d failed; trying again", task.id)

    def _renew(self, task: LocalTask) -> None:
        try:
            self.queue.heartbeat(task)
        except TaskNotHeldError as exc:
            with self._lock:
                still_held = self._held.pop(task.id, None) is task
            if still_held:  # not a task that ended meanwhile: its lock really went
                logger.warning(
                    "task %d lost its lock while running: %s",
                    task.id,
                    exc,
                    extra=task_fields(task.id, task.remote_id, task.type),
                )
        except BridgeError as exc:
            with self._lock:
                first = task.id in self._held and task.id not in self._told
                self._told.add(task.id)
            if first:  # once per task: the worker's Patience logs the cause itself
                logger.warning("heartbeat of task %d failed (will retry): %s", task.id, exc)
