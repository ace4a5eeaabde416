"""The thread engine: ``concurrency`` slots, each a thread that takes a task, runs its
handler (on its own thread, a ``Watchman`` keeping the time limit; or in a handler
process of its own with ``--pool process``) and hands the outcome to the ``WorkerCore``.

Finishing a task and taking the next happen in one transaction; an idle slot looks
again as soon as another process commits (SQLite), else backing off to
``poll_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import DatabaseError, TaskNotHeldError
from ..models import LocalTask
from ..storage import GaveUp, SchemaGone
from .core import MIN_POLL_SECONDS, NOT_LOOKED, NextTask, WorkerCore, next_idle_wait
from .handlers import Handlers, TaskContext, with_writes
from .outcome import Ran, run_call
from .process_pool import PoolOptions, ProcessRunner
from .time_limits import Overrun, Watchman

logger = logging.getLogger("bridge.worker")


class _TakenOver(Exception):
    """The slot's call passed its time limit and the slot went on on a new thread: this
    one ends with the handler, touching neither the task nor the slot."""


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
        self.watchman = Watchman(self._take_over)
        self._threads: list[threading.Thread] = []

    def threads(self) -> list[threading.Thread]:
        """The slots' threads. The list stays the slots' current threads: a slot whose
        handler passed its time limit has its new thread put in the old one's place."""
        self._threads[:] = [self._thread(i, self._loop, i) for i in range(self.concurrency)]
        return self._threads

    def close(self) -> None:
        self.watchman.close()

    @staticmethod
    def _thread(slot: int, target: Callable[..., object], *args: object) -> threading.Thread:
        return threading.Thread(target=target, args=args, daemon=True, name=f"bridge-worker-{slot}")

    # -- one slot -----------------------------------------------------------------------------
    def _loop(self, slot: int) -> None:
        runner = self._runner(slot)
        try:
            while not self.core.stopping.is_set():
                if not self._guarded(slot, lambda: self._serve(slot, runner)):
                    return
        finally:
            if runner is not None:
                runner.close()

    def _guarded(self, slot: int, action: Callable[[], object]) -> bool:
        """Run ``action`` for the slot; False when the slot's thread must end (the worker
        gave up on the database, its schema is gone, or another thread took the slot)."""
        try:
            action()
        except (GaveUp, _TakenOver):
            return False
        except SchemaGone as exc:
            self.core.stop_fatally(f"the queue database changed under the worker: {exc}")
            return False
        except Exception:
            # A bug of ours, not the handler's: say so loudly, keep the thread.
            logger.exception("worker thread %d: unexpected error; carrying on", slot)
            self.core.stopping.wait(1.0)
        return True

    def _runner(self, slot: int) -> ProcessRunner | None:
        """A handler process for the slot with ``--pool process``; None: the slot's own
        thread runs its handlers."""
        if self.pool == "thread":
            return None
        handlers = {
            name: (h, self.handlers.wants_context[name])
            for name, h in self.handlers.by_type.items()
        }
        return ProcessRunner(f"bridge-handler-{slot}", handlers, self.pool_options)

    def _take_over(self, call: Overrun) -> None:
        """The watchman's: ``call`` passed its limit. A new thread fails its task and then
        serves the slot; the old one is left with the handler. Without a new thread (a
        process at its limit of threads) the task is failed here, and the old thread
        serves the slot again once its handler returns."""
        try:
            thread = self._thread(call.slot, self._after_overrun, call)
            thread.start()
        except Exception:  # RuntimeError: can't start new thread
            logger.exception(
                "worker thread %d: no new thread for the slot past its time limit; its task "
                "is failed now and the slot goes on when the handler returns",
                call.slot,
            )
            self._settle_overrun(call)
            return  # the watchman sets ``replaced``
        self._threads[call.slot] = thread
        call.successor = True

    def _after_overrun(self, call: Overrun) -> None:
        if self._settle_overrun(call):
            self._loop(call.slot)

    def _settle_overrun(self, call: Overrun) -> bool:
        """Fail ``call``'s task as timed out; False when the slot must stop."""
        timed_out = Ran("timeout")
        return self._guarded(
            call.slot,
            lambda: self._outcome(call.slot, call.task, timed_out, call.limit, call.started),
        )

    def _serve(self, slot: int, runner: ProcessRunner | None) -> None:
        core = self.core
        locked_by = f"{core.queue.locked_by}-{slot}"
        task: LocalTask | None = None
        looked = False  # the last result's transaction found nothing queued for the slot
        seen = 0
        idle = MIN_POLL_SECONDS
        while not core.stopping.is_set():
            if task is None:
                if not looked:
                    seen = core.changes.generation
                    # A look first: most wake-ups are commits that queued nothing.
                    task = self._take(locked_by) if self._may_take() else None
                looked = False
                if task is None:
                    if core.stopping.is_set():
                        break
                    # Again as soon as another process commits (SQLite: the daemon claimed
                    # something), else soon after work, backing off to poll_seconds.
                    core.changes.wait(seen, idle)
                    idle = next_idle_wait(idle, self.poll_seconds)
                    continue
                idle = MIN_POLL_SECONDS
            task, looked, seen = self._work(slot, task, runner)
        if task is not None:  # taken with the last result as the worker stopped: not run
            core.hand_back(task, "handed back: the worker stopped")

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
    def _work(self, slot: int, task: LocalTask, runner: ProcessRunner | None) -> NextTask:
        """Run ``task``; what storing its outcome brought (``NextTask``)."""
        core = self.core
        started = core.clock()
        limit = core.time_limit(task)
        core.begin(slot, task)
        try:
            ran = self._call(slot, task, runner, limit, started)
        except BaseException:
            core.end(slot)
            core.release(task)
            raise
        if isinstance(ran, Overrun):  # past its limit: the task is failed without this thread
            if ran.successor:
                raise _TakenOver
            return NOT_LOOKED  # no thread could take the slot over: this one serves it again
        return self._outcome(slot, task, ran, limit, started)

    def _outcome(
        self, slot: int, task: LocalTask, ran: Ran, limit: float | None, started: float
    ) -> NextTask:
        """Store what the handler came to; the next task when one came with its result,
        and whether the queue was looked at for it (``NextTask``)."""
        core = self.core
        try:
            if not core.end(slot):
                return NOT_LOOKED  # handed back by the stopping worker meanwhile
            if ran.kind == "ok":
                types = self.handlers.types
                return core.complete(task, ran.value, started, types, ran.writes)
            core.settle_failure(task, ran, limit, started)
            return NOT_LOOKED
        except (TaskNotHeldError, GaveUp) as exc:
            core.not_ended(task, exc)
            return NOT_LOOKED
        finally:
            core.end(slot)
            core.release(task)

    def _call(
        self,
        slot: int,
        task: LocalTask,
        runner: ProcessRunner | None,
        limit: float | None,
        started: float,
    ) -> Ran | Overrun:
        """The handler's outcome; its ``Overrun`` when it passed its limit and the
        watchman settled the task without this thread."""
        queue = self.core.queue
        if runner is not None:
            key = queue.idempotency_key(task) if self.handlers.wants_context[task.type] else ""
            return runner.run_task(task, limit, lambda p, m: queue.progress(task, p, m), key)
        handler = self.handlers[task.type]
        context = TaskContext(task, queue) if self.handlers.wants_context[task.type] else None
        if limit is None:
            return self._run_handler(handler, task, context)
        if limit <= 0:
            return Ran("timeout")  # the lease is already spent: the handler never starts
        call = Overrun(slot, limit, task, started)
        self.watchman.watch(call)
        ran = self._run_handler(handler, task, context)
        return ran if self.watchman.returned(call) else call

    @staticmethod
    def _run_handler(handler: Any, task: LocalTask, context: TaskContext | None) -> Ran:
        if context is None:
            return run_call(lambda: handler(task.params))
        return with_writes(run_call(lambda: handler(task.params, context)), context)
