"""The thread engine: ``concurrency`` slots, each a thread that takes a task, runs its
handler (inline, on a helper thread under a time limit, or in a handler process of
its own with ``--pool process``) and hands the outcome to the ``WorkerCore``.

Finishing a task and taking the next happen in one transaction; an idle slot looks
again as soon as another process commits (SQLite), else backing off to
``poll_seconds``.
"""

from __future__ import annotations

import logging
import threading

from ..errors import DatabaseError, TaskNotHeldError
from ..models import LocalTask
from ..storage import GaveUp, SchemaGone
from .core import MIN_POLL_SECONDS, WorkerCore, next_idle_wait
from .handlers import Handlers, TaskContext, with_writes
from .process_pool import PoolOptions, ProcessRunner
from .thread_runner import Ran, ThreadRunner

logger = logging.getLogger("bridge.worker")

Runner = ThreadRunner | ProcessRunner


class ThreadEngine:
    """Runs a worker's blocking handlers on ``concurrency`` slot threads."""

    def __init__(
        self,
        core: WorkerCore,
        handlers: Handlers,
        concurrency: int,
        poll_seconds: float,
        pool: str,
        pool_options: PoolOptions,
    ) -> None:
        self.core = core
        self.handlers = handlers
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.pool = pool
        self.pool_options = pool_options

    def threads(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"bridge-worker-{i}")
            for i in range(self.concurrency)
        ]

    # -- one slot -----------------------------------------------------------------------------
    def _loop(self, slot: int) -> None:
        core = self.core
        runner = self._runner(slot)
        try:
            while not core.stopping.is_set():
                try:
                    self._serve(slot, runner)
                except GaveUp:
                    return
                except SchemaGone as exc:
                    core.stop_fatally(f"the queue database changed under the worker: {exc}")
                    return
                except Exception:
                    # A bug of ours, not the handler's: say so loudly, keep the thread.
                    logger.exception("worker thread %d: unexpected error; carrying on", slot)
                    core.stopping.wait(1.0)
        finally:
            runner.close()

    def _runner(self, slot: int) -> Runner:
        if self.pool == "thread":
            return ThreadRunner(f"bridge-worker-{slot}")
        handlers = {
            name: (h, self.handlers.wants_context[name])
            for name, h in self.handlers.by_type.items()
        }
        return ProcessRunner(f"bridge-handler-{slot}", handlers, self.pool_options)

    def _serve(self, slot: int, runner: Runner) -> None:
        core = self.core
        locked_by = f"{core.queue.locked_by}-{slot}"
        task: LocalTask | None = None
        idle = MIN_POLL_SECONDS
        while not core.stopping.is_set():
            if task is None:
                seen = core.changes.generation
                # A look first: most wake-ups are commits that queued nothing.
                task = self._take(locked_by) if self._may_take() else None
                if task is None:
                    if core.stopping.is_set():
                        break
                    # Again as soon as another process commits (SQLite: the daemon claimed
                    # something), else soon after work, backing off to poll_seconds.
                    core.changes.wait(seen, idle)
                    idle = next_idle_wait(idle, self.poll_seconds)
                    continue
                idle = MIN_POLL_SECONDS
            task = self._work(slot, task, runner)

    def _take(self, locked_by: str) -> LocalTask | None:
        core = self.core
        types = self.handlers.types
        return core.store(
            "taking a task",
            lambda: core.queue.dequeue(types, locked_by=locked_by),
            give_up=core.stopping,
        )

    def _may_take(self) -> bool:
        try:
            return self.core.queue.any_queued(self.handlers.types)
        except DatabaseError:
            return True  # let the dequeue meet the trouble, with its patience and its words

    # -- one task -------------------------------------------------------------------------------
    def _work(self, slot: int, task: LocalTask, runner: Runner) -> LocalTask | None:
        """Run ``task``; the next task when one came with its result."""
        core = self.core
        started = core.clock()
        limit = core.time_limit(task)
        core.begin(slot, task)
        try:
            ran = self._call(task, runner, limit)
            if not core.end(slot):
                return None  # handed back by the stopping worker meanwhile
            if ran.kind == "ok":
                types = self.handlers.types
                return core.complete(task, ran.value, started, types, ran.writes)
            core.settle_failure(task, ran, limit, started)
            return None
        except (TaskNotHeldError, GaveUp) as exc:
            core.not_ended(task, exc)
            return None
        finally:
            core.end(slot)
            core.release(task)

    def _call(self, task: LocalTask, runner: Runner, limit: float | None) -> Ran:
        queue = self.core.queue
        if isinstance(runner, ProcessRunner):
            key = queue.idempotency_key(task) if self.handlers.wants_context[task.type] else ""
            return runner.run_task(task, limit, lambda p, m: queue.progress(task, p, m), key)
        handler = self.handlers[task.type]
        if self.handlers.wants_context[task.type]:
            context = TaskContext(task, queue)
            return with_writes(runner.run(lambda: handler(task.params, context), limit), context)
        return runner.run(lambda: handler(task.params), limit)
