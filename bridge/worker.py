"""``Worker``: runs handlers on tasks from the local queue.

A handler is ``handler(params) -> result`` or ``handler(params, context)``,
where ``context.progress(percent, message)`` reports progress. While it runs, a
heartbeat keeps the task's lock; its return value completes the task, an
exception fails it (with the exception's type and text). Finishing a task and
taking the next happen in one transaction.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BridgeError, TaskNotHeldError
from .logs import task_fields
from .models import LocalTask
from .queue import LocalQueue

logger = logging.getLogger("bridge.worker")

Handler = Callable[..., Any]
MIN_POLL_SECONDS = 0.01


def load_handler(spec: str) -> Handler:
    """``package.module:function`` -> the function (for the CLI's ``--handler``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BridgeError(f"--handler must look like package.module:function, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BridgeError(f"cannot import handler module {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise BridgeError(f"handler {spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BridgeError(f"handler {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


@dataclass
class TaskContext:
    """What a handler may use besides its params."""

    task: LocalTask
    queue: LocalQueue

    def progress(self, percent: int, message: str | None = None) -> None:
        self.queue.progress(self.task, percent, message)


def _wants_context(handler: Handler) -> bool:
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)


class _Heartbeat:
    """Renews a task's lock every third of the lock time until stopped."""

    def __init__(self, queue: LocalQueue, task: LocalTask) -> None:
        self.queue, self.task = queue, task
        self._stop = threading.Event()
        self.lost = False
        interval = max(0.05, queue.config.lock_seconds / 3)
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.queue.heartbeat(self.task)
            except TaskNotHeldError as exc:
                self.lost = True
                logger.warning(
                    "task %d lost its lock while running: %s",
                    self.task.id,
                    exc,
                    extra=task_fields(self.task.id, self.task.remote_id, self.task.type),
                )
                return
            except BridgeError as exc:
                logger.warning("heartbeat of task %d failed (will retry): %s", self.task.id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Runs ``handlers`` (type name -> handler) on ``concurrency`` threads."""

    def __init__(
        self,
        queue: LocalQueue,
        handlers: Mapping[str, Handler],
        concurrency: int = 1,
        *,
        poll_seconds: float = 0.5,
    ) -> None:
        if not handlers:
            raise BridgeError("a worker needs at least one handler")
        if concurrency < 1:
            raise BridgeError(f"concurrency must be >= 1, got {concurrency}")
        self.queue = queue
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self.completed = 0
        self.failed = 0

    def stop(self) -> None:
        """Finish the tasks in hand, take no more."""
        self._stop.set()

    def _run_one(self, task: LocalTask) -> tuple[bool, Any]:
        handler = self.handlers[task.type]
        heartbeat = _Heartbeat(self.queue, task)
        try:
            if _wants_context(handler):
                result = handler(task.params, TaskContext(task, self.queue))
            else:
                result = handler(task.params)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            heartbeat.stop()
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            result = {"result": result}
        return True, result

    def _loop(self, index: int, max_tasks: int | None) -> None:
        worker_id = f"{self.queue.worker_id}-{index}"
        types = sorted(self.handlers)
        task = None
        idle = MIN_POLL_SECONDS
        while not self._stop.is_set():
            if task is None:
                task = self.queue.dequeue(types, worker_id=worker_id)
                if task is None:
                    # Soon again just after work (the daemon refills in bursts), backing
                    # off to poll_seconds when the queue stays empty.
                    self._stop.wait(idle)
                    idle = min(self.poll_seconds, idle * 2)
                    continue
                idle = MIN_POLL_SECONDS
            current = task
            ok, outcome = self._run_one(current)
            try:
                if ok:
                    with self._count_lock:
                        self.completed += 1
                        done = self.completed + self.failed
                    if self._stop.is_set() or (max_tasks is not None and done >= max_tasks):
                        self.queue.complete(task, outcome)
                        task = None
                    else:
                        task = self.queue.complete_and_dequeue(task, outcome, types)
                else:
                    logger.warning(
                        "task %d (%s) failed: %s",
                        task.id,
                        task.type,
                        outcome,
                        extra=task_fields(task.id, task.remote_id, task.type),
                    )
                    self.queue.fail(task, outcome)
                    with self._count_lock:
                        self.failed += 1
                    task = None
            except TaskNotHeldError as exc:
                logger.warning(
                    "result of task %d not recorded: %s",
                    current.id,
                    exc,
                    extra=task_fields(current.id, current.remote_id, current.type),
                )
                task = None
            if max_tasks is not None and self.completed + self.failed >= max_tasks:
                self._stop.set()

    def run(self, max_tasks: int | None = None) -> int:
        """Process until ``stop()`` (or ``max_tasks`` handled); returns tasks handled."""
        threads = [
            threading.Thread(
                target=self._loop, args=(i, max_tasks), daemon=True, name=f"bridge-worker-{i}"
            )
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # in slices, so signal handlers run (see Daemon)
                thread.join(0.2)
        return self.completed + self.failed
