"""``Worker``: runs handlers on tasks from the local queue, and outlives what they do.

A handler is ``handler(params) -> result`` or ``handler(params, context)``,
where ``context.progress(percent, message)`` reports progress. While it runs, a
heartbeat keeps the task's lock. Every outcome ends its task and only its task
(promise 6): a result is encoded (``bridge.queue.encoded``) and stored, one that
cannot be encoded fails the task naming its key path; anything raised, even
``SystemExit`` or ``KeyboardInterrupt``, fails the task (or retries it, per the
type's ``RetryPolicy``); a handler past its time limit fails it ("timed out").
Database trouble is waited out (``Patience``): a finished result is retried until
stored. Finishing a task and taking the next happen in one transaction.
Exit codes and their meaning: ``WorkerExit`` and docs/OPERATIONS.md.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .database import display_url, normalise_url
from .errors import BridgeError, DatabaseError, TaskNotHeldError, ValidationError
from .handlers import (
    Handler,
    TaskContext,
    TaskPolicy,
    awaitable_refusal,
    is_async_handler,
    load_handler,
    wants_context,
)
from .heartbeats import Heartbeats
from .logs import task_fields
from .models import LocalTask
from .patience import GaveUp, Patience, SchemaGone
from .pool import HandlerError, PoolOptions, ProcessRunner, ResultRefused
from .queue import LocalQueue, as_result
from .retry import Retry, RetryPolicy
from .runner import Ran, ThreadRunner
from .storage.changes import ChangeWatch

logger = logging.getLogger("bridge.worker")

Runner = ThreadRunner | ProcessRunner
POOLS = ("thread", "process")
MIN_POLL_SECONDS = 0.01
JOIN_SLICE_SECONDS = 0.2  # the main thread wakes this often, so signal handlers run

__all__ = [
    "Retry",
    "RetryPolicy",
    "TaskContext",
    "TaskPolicy",
    "Worker",
    "WorkerExit",
    "load_handler",
]


class WorkerExit(enum.IntEnum):
    """The worker's exit codes (docs/OPERATIONS.md)."""

    OK = 0  # a requested stop (signal, stop(), --max-tasks); every result stored
    FATAL = 1  # the schema changed under it (run: taskmanager-bridge db upgrade), or 2nd signal
    USAGE = 2  # bad arguments, config, handler, or no usable database at start
    UNSTORED = 3  # stopped while the database refused finished results (their tasks run again)


def describe_error(error: BaseException) -> str:
    """The failed task's reason: the exception's type and text, and what it did not do."""
    if isinstance(error, HandlerError | ResultRefused):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, SystemExit):
        return f"{text} (the handler called sys.exit(); only its task ended)"
    if isinstance(error, KeyboardInterrupt):
        return f"{text} (raised by the handler; only its task ended)"
    return text


@dataclass
class Counters:
    """What really happened, for the logs and the caller."""

    done: int = 0
    failed: int = 0
    timed_out: int = 0
    retried: int = 0
    handed_back: int = 0
    not_recorded: int = 0
    unstored: int = 0

    @property
    def handled(self) -> int:
        return self.done + self.failed + self.retried

    def line(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed ({self.timed_out} timed out), "
            f"{self.retried} retried, {self.handed_back} handed back, "
            f"{self.not_recorded} not recorded (lock lost), {self.unstored} unstored"
        )


class Worker:
    """Runs ``handlers`` (type name -> handler) on ``concurrency`` threads.

    ``policies`` (type name -> ``TaskPolicy``) set time limits and retries; types not
    named there get ``default_policy``. ``grace_seconds``: after ``stop()``, how long
    running handlers may take before their tasks are handed back to the queue.
    ``clock`` (monotonic seconds) and ``rng`` (retry jitter) are injectable.
    """

    def __init__(
        self,
        queue: LocalQueue,
        handlers: Mapping[str, Handler],
        concurrency: int = 1,
        *,
        poll_seconds: float = 0.2,
        policies: Mapping[str, TaskPolicy] | None = None,
        default_policy: TaskPolicy | None = None,
        grace_seconds: float = 30.0,
        db_backoff_max_seconds: float = 5.0,
        summary_seconds: float = 60.0,
        pool: str = "thread",
        pool_options: PoolOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not handlers:
            raise BridgeError("a worker needs at least one handler")
        if concurrency < 1:
            raise BridgeError(f"concurrency must be >= 1, got {concurrency}")
        if pool not in POOLS:
            raise BridgeError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self._is_async = {name: is_async_handler(h) for name, h in handlers.items()}
        # One async handler puts the worker on an event loop (bridge.async_worker).
        self.is_async = any(self._is_async.values())
        if self.is_async and pool == "process":
            names = ", ".join(sorted(n for n, a in self._is_async.items() if a))
            raise BridgeError(
                f"async handlers ({names}) run on the worker's event loop: --pool process "
                "is for blocking handlers"
            )
        self.pool = pool
        self.pool_options = pool_options or PoolOptions()
        self.queue = queue
        self.handlers = dict(handlers)
        self._wants_context = {name: wants_context(h) for name, h in self.handlers.items()}
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.policies = dict(policies or {})
        self.default_policy = default_policy or TaskPolicy()
        self.grace_seconds = grace_seconds
        self.summary_seconds = summary_seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self.patience = Patience.for_engine(queue.store.engine, db_backoff_max_seconds)
        self.counters = Counters()
        self.fatal: str | None = None
        self._stop = threading.Event()  # take no more tasks
        self._abandon = threading.Event()  # the grace is over: stop waiting for anything
        self._count_lock = threading.Lock()
        self._running: dict[int, LocalTask] = {}  # slot -> task whose handler runs now
        self._heartbeats = Heartbeats(queue)
        self.changes = ChangeWatch(queue.store.engine)  # wakes idle slots (SQLite)
        self._signals = 0
        self._max_tasks: int | None = None

    # -- compatibility with the counters' old names ---------------------------------------
    @property
    def completed(self) -> int:
        return self.counters.done

    @property
    def failed(self) -> int:
        return self.counters.failed

    @property
    def exit_code(self) -> WorkerExit:
        if self.fatal is not None:
            return WorkerExit.FATAL
        return WorkerExit.UNSTORED if self.counters.unstored else WorkerExit.OK

    def stop(self) -> None:
        """Take no more tasks; running ones get ``grace_seconds`` (see ``run``)."""
        self._stop.set()
        self.changes.poke()

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        """The signal handler: the first signal stops gracefully, a second exits at once."""
        self._signals += 1
        if self._signals > 1:
            logger.warning(
                "second signal: exiting now; running tasks go back to the queue when their "
                "lock runs out"
            )
            os._exit(WorkerExit.FATAL)
        logger.info(
            "signal %d: taking no more tasks; running handlers get %g s, then their tasks "
            "are handed back",
            signum,
            self.grace_seconds,
        )
        self.stop()

    def handle_signals(self) -> None:
        """SIGTERM/SIGINT stop the worker gracefully from now on (main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def policy(self, task_type: str) -> TaskPolicy:
        return self.policies.get(task_type, self.default_policy)

    # -- one task ---------------------------------------------------------------------------
    def time_limit(self, task: LocalTask) -> float | None:
        """The type's limit, and never past the remote lease less the margin."""
        limit = self.policy(task.type).time_limit
        if task.lease_expires_at is not None:
            left = (task.lease_expires_at - self.queue.clock()).total_seconds()
            left -= self.queue.config.lease_margin_seconds
            limit = left if limit is None else min(limit, left)
        return None if limit is None else max(0.0, limit)

    def _call(self, task: LocalTask, runner: Runner, limit: float | None) -> Ran:
        if isinstance(runner, ProcessRunner):
            return runner.run_task(task, limit, lambda p, m: self.queue.progress(task, p, m))
        handler = self.handlers[task.type]
        if self._wants_context[task.type]:
            context = TaskContext(task, self.queue)
            return runner.run(lambda: handler(task.params, context), limit)
        return runner.run(lambda: handler(task.params), limit)

    def _store(self, what: str, action: Callable[[], Any]) -> Any:
        """A write of a task's end, retried through database trouble until the grace is over."""
        return self.patience.call(what, action, self._abandon)

    def _count(self, name: str) -> int:
        with self._count_lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)
            handled = self.counters.handled
        if self._max_tasks is not None and handled >= self._max_tasks:
            self.stop()
        return handled

    def _log(
        self, task: LocalTask, outcome: str, started: float, level: int = logging.DEBUG
    ) -> None:
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "task %d (%s) %s in %.3f s",
            task.id,
            task.type,
            outcome,
            self.clock() - started,
            extra=task_fields(task.id, task.remote_id, task.type),
        )

    def _complete(
        self, task: LocalTask, value: Any, types: Sequence[str], started: float
    ) -> LocalTask | None:
        refused = awaitable_refusal(value)
        if refused is not None:
            self._fail(task, refused, started)
            return None
        result = as_result(value)
        more = not self._stop.is_set() and not self._last_one()
        try:
            if more:
                next_task: LocalTask | None = self._store(
                    f"storing the result of task {task.id}",
                    lambda: self.queue.complete_and_dequeue(task, result, types),
                )
            else:
                self._store(
                    f"storing the result of task {task.id}",
                    lambda: self.queue.complete(task, result),
                )
                next_task = None
        except ValidationError as exc:
            self._fail(task, f"result refused: {exc}", started)
            return None
        self._count("done")
        self._log(task, "done", started)
        return next_task

    def _last_one(self) -> bool:
        with self._count_lock:
            handled = self.counters.handled
        return self._max_tasks is not None and handled + 1 >= self._max_tasks

    def _fail(self, task: LocalTask, reason: str, started: float, counter: str = "failed") -> None:
        self._store(f"failing task {task.id}", lambda: self.queue.fail(task, reason))
        if counter != "failed":
            self._count(counter)
        self._count("failed")
        self._log(task, f"failed: {reason}", started, logging.WARNING)

    def _failed(self, task: LocalTask, error: BaseException, started: float) -> None:
        delay = self.policy(task.type).retry.delay(task.attempts, error, self.rng)
        reason = describe_error(error)
        if delay is not None and self._fits_lease(task, delay):
            self._store(
                f"re-queueing task {task.id}",
                lambda: self.queue.fail(task, reason, retry=True, delay_seconds=delay),
            )
            self._count("retried")
            self._log(
                task, f"retried in {delay:.1f} s (attempt {task.attempts}): {reason}", started
            )
            return
        if delay is not None:
            reason += (
                f" (a retry in {delay:.1f} s would outlast the remote lease: left to the server)"
            )
        self._fail(task, reason, started)

    def _fits_lease(self, task: LocalTask, delay: float) -> bool:
        if task.lease_expires_at is None:
            return True
        left = (task.lease_expires_at - self.queue.clock()).total_seconds()
        return delay < left - self.queue.config.lease_margin_seconds

    def _settle(
        self, task: LocalTask, ran: Ran, limit: float | None, types: Sequence[str], started: float
    ) -> LocalTask | None:
        """The task's end from its handler's outcome; the next task when one came with it."""
        if ran.kind == "ok":
            return self._complete(task, ran.value, types, started)
        self.settle_failure(task, ran, limit, started)
        return None

    def settle_failure(
        self, task: LocalTask, ran: Ran, limit: float | None, started: float
    ) -> None:
        """The task's end when its handler raised or ran past its time limit."""
        if ran.kind == "timeout":
            self._fail(
                task,
                f"timed out after {limit:.1f} s (time limit; {self._timeout_note(task.type)})",
                started,
                "timed_out",
            )
            return
        assert ran.error is not None
        self._failed(task, ran.error, started)

    def _timeout_note(self, task_type: str) -> str:
        if self._is_async.get(task_type):
            return "the handler's coroutine was cancelled"
        if self.pool == "process":
            return "the handler's process was killed and replaced"
        return "in thread mode the handler's thread cannot be stopped; its result is discarded"

    def _work(
        self, slot: int, task: LocalTask, runner: Runner, types: Sequence[str]
    ) -> LocalTask | None:
        started = self.clock()
        limit = self.time_limit(task)
        self._heartbeats.hold(task)
        try:
            self._running[slot] = task
            ran = self._call(task, runner, limit)
            if self._running.pop(slot, None) is None:
                return None  # handed back by the stopping worker meanwhile
            return self._settle(task, ran, limit, types, started)
        except TaskNotHeldError as exc:
            self._count("not_recorded")
            logger.warning(
                "result of task %d not recorded: %s",
                task.id,
                exc,
                extra=task_fields(task.id, task.remote_id, task.type),
            )
            return None
        except GaveUp as exc:
            self._count("unstored")
            logger.error(
                "task %d: %s; its lock runs out and it runs again",
                task.id,
                exc,
                extra=task_fields(task.id, task.remote_id, task.type),
            )
            return None
        finally:
            self._running.pop(slot, None)
            self._heartbeats.release(task)

    # -- the slots ----------------------------------------------------------------------------
    def _take(self, locked_by: str, types: Sequence[str]) -> LocalTask | None:
        return self.patience.call(
            "taking a task", lambda: self.queue.dequeue(types, locked_by=locked_by), self._stop
        )

    def _may_take(self, types: Sequence[str]) -> bool:
        try:
            return self.queue.store.any_queued(types)
        except DatabaseError:
            return True  # let the dequeue meet the trouble, with its patience and its words

    def _serve(self, slot: int, runner: Runner) -> None:
        locked_by = f"{self.queue.locked_by}-{slot}"
        types = sorted(self.handlers)
        task: LocalTask | None = None
        idle = MIN_POLL_SECONDS
        while not self._stop.is_set():
            if task is None:
                seen = self.changes.generation
                # A look first: most wake-ups are commits that queued nothing.
                task = self._take(locked_by, types) if self._may_take(types) else None
                if task is None:
                    if self._stop.is_set():
                        break
                    # Again as soon as another process commits (SQLite: the daemon claimed
                    # something), else soon after work, backing off to poll_seconds.
                    self.changes.wait(seen, idle)
                    idle = min(self.poll_seconds, idle * 2)
                    continue
                idle = MIN_POLL_SECONDS
            task = self._work(slot, task, runner, types)

    def _loop(self, slot: int) -> None:
        runner = self._runner(slot)
        try:
            while not self._stop.is_set():
                try:
                    self._serve(slot, runner)
                except GaveUp:
                    return
                except SchemaGone as exc:
                    self._fatal(f"the queue database changed under the worker: {exc}")
                    return
                except Exception:
                    # A bug of ours, not the handler's: say so loudly, keep the thread.
                    logger.exception("worker thread %d: unexpected error; carrying on", slot)
                    self._stop.wait(1.0)
        finally:
            runner.close()

    def _runner(self, slot: int) -> Runner:
        if self.pool == "thread":
            return ThreadRunner(f"bridge-worker-{slot}")
        handlers = {name: (h, self._wants_context[name]) for name, h in self.handlers.items()}
        return ProcessRunner(f"bridge-handler-{slot}", handlers, self.pool_options)

    def _fatal(self, message: str, *, store_finished: bool = False) -> None:
        """Stop for what the worker cannot outlive, with ``WorkerExit.FATAL``. By default
        at once (the schema changed under it); ``store_finished``: results already
        finished are stored first (the queue is fine, the worker is not)."""
        with self._count_lock:
            if self.fatal is None:
                self.fatal = message
                logger.error("stopping: %s", message)
        if not store_finished:
            self._abandon.set()
        self.stop()

    # -- the whole worker ---------------------------------------------------------------------
    def describe(self) -> str:
        """The start line: what runs, how, and on which database (no password)."""
        default = self.default_policy
        limit = "lease less margin" if default.time_limit is None else f"{default.time_limit:g} s"
        return (
            f"types {', '.join(sorted(self.handlers))}; concurrency {self.concurrency}; "
            f"pool {'asyncio (one event loop)' if self.is_async else self.pool}; "
            f"time limit {limit}; retries: {default.retry.attempts} attempt(s); "
            f"database {display_url(normalise_url(self.queue.config.db_url))}"
        )

    def run(self, max_tasks: int | None = None) -> int:
        """Process until ``stop()`` (or ``max_tasks`` handled); returns tasks handled.

        After the stop, running handlers get ``grace_seconds``; tasks still running then
        are handed back to the queue (released, not failed) and ``run`` returns.
        ``exit_code`` then says how it ended.
        """
        if max_tasks is not None and (isinstance(max_tasks, bool) or max_tasks < 0):
            raise BridgeError(f"max_tasks must be a whole number >= 0, got {max_tasks!r}")
        if max_tasks == 0:
            return 0  # nothing to do: not "forever"
        self._max_tasks = max_tasks
        logger.info("worker started: %s", self.describe())
        self.changes.start()
        try:
            self._run_slots()
        finally:
            self._heartbeats.close()
            self.changes.close()
        logger.info("worker stopped: %s", self.counters.line())
        return self.counters.handled

    def _run_slots(self) -> None:
        if self.is_async:
            from .async_worker import AsyncEngine

            threads = [
                threading.Thread(target=AsyncEngine(self).run, daemon=True, name="bridge-asyncio")
            ]
        else:
            threads = [
                threading.Thread(
                    target=self._loop, args=(i,), daemon=True, name=f"bridge-worker-{i}"
                )
                for i in range(self.concurrency)
            ]
        for thread in threads:
            thread.start()
        self._wait(threads, until=None)
        deadline = self.clock() + self.grace_seconds
        self._wait(threads, until=deadline)
        self._abandon.set()
        self._hand_back()
        for thread in threads:
            thread.join(JOIN_SLICE_SECONDS)  # a slot stuck in a handler is left behind

    def _wait(self, threads: list[threading.Thread], until: float | None) -> None:
        """Join in slices (so signal handlers run), logging a summary now and then; ``until``
        None: until the stop, else until the threads end or the clock passes ``until``."""
        last, seen = self.clock(), Counters()
        while any(t.is_alive() for t in threads):
            if until is None and self._stop.is_set():
                return
            if until is not None and self.clock() >= until:
                return
            next(t for t in threads if t.is_alive()).join(JOIN_SLICE_SECONDS)
            now = self.clock()
            if now - last >= self.summary_seconds:
                self._summary(seen, now - last)
                last, seen = now, Counters(**vars(self.counters))

    def _summary(self, before: Counters, seconds: float) -> None:
        now = self.counters
        handled = now.handled - before.handled
        logger.info(
            "last %.0f s: %d done, %d failed, %d retried (%.2f tasks/s); since start: %s",
            seconds,
            now.done - before.done,
            now.failed - before.failed,
            now.retried - before.retried,
            handled / seconds if seconds > 0 else 0.0,
            now.line(),
        )

    def _hand_back(self) -> None:
        """Tasks whose handlers outlived the grace go back to the queue for another worker."""
        for slot in list(self._running):
            task = self._running.pop(slot, None)
            if task is None:
                continue
            self._heartbeats.release(task)
            try:
                self.queue.release(task, "handed back: the worker stopped before it finished")
            except BridgeError as exc:
                logger.warning(
                    "task %d could not be handed back (%s); it goes back when its lock runs out",
                    task.id,
                    exc,
                )
                continue
            with self._count_lock:
                self.counters.handed_back += 1
            logger.info(
                "task %d (%s) handed back to the queue (its handler outlived the grace)",
                task.id,
                task.type,
                extra=task_fields(task.id, task.remote_id, task.type),
            )
