"""``WorkerCore``: how each task a worker runs ends, and the worker's run state.

Both engines (threads, and the event loop of ``asyncio_engine``) run handlers their
own way and hand every outcome to this one object, which decides and records it:
done (the result stored, with the next task when one is wanted), failed, retried
per the type's ``RetryPolicy``, timed out, handed back to the queue, or not recorded
(the lock was lost, or the database refused the result until the grace ended). It
also owns what the engines share: the stop and the end of the grace, the fatal
reason, the counters and ``max_tasks``, the tasks under way and their heartbeats.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from ..errors import BridgeError, TaskNotHeldError, ValidationError, WriteFailed
from ..logs import task_fields
from ..models import LocalTask
from ..payloads import as_result, traceback_text
from ..queue import LocalQueue
from ..storage import ChangeWatch, GaveUp, Patience, Write
from .handlers import TaskPolicy, awaitable_refusal
from .heartbeats import Heartbeats
from .outcome import Ran
from .process_pool import HandlerError, ResultRefused

logger = logging.getLogger("bridge.worker")
T = TypeVar("T")

MIN_POLL_SECONDS = 0.01  # an idle slot looks again this soon after work, doubling ...


def next_idle_wait(current: float, poll_seconds: float) -> float:
    """... to ``poll_seconds`` while the queue stays empty (both engines' back-off)."""
    return min(poll_seconds, current * 2)


class NextTask(NamedTuple):
    """What storing a result brought its slot: the next task, and whether the queue was
    looked at for one (``looked`` without a task: nothing the slot could take was queued
    when the result committed, so the slot need not look again before it waits for
    the change watch to move past ``generation``, noted just before that look)."""

    task: LocalTask | None
    looked: bool
    generation: int = 0


NOT_LOOKED = NextTask(None, looked=False)


class WorkerExit(enum.IntEnum):
    """The worker's exit codes (docs/OPERATIONS.md)."""

    OK = 0  # a requested stop (signal, stop(), --max-tasks); every result stored
    FATAL = 1  # schema changed, the handlers' loop broken, or a second signal
    USAGE = 2  # bad arguments, config, handler, or no usable database at start
    UNSTORED = 3  # stopped while the database refused finished results (their tasks run again)


def describe_error(error: BaseException) -> str:
    """The failed task's reason: the exception's type and text, and what it did not do."""
    if isinstance(error, HandlerError | ResultRefused):
        return str(error)
    original = getattr(error, "orig", None)  # a SQLAlchemy error: the driver's words only,
    if isinstance(original, BaseException):  # not the statement and its parameters
        error = original
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


class WorkerCore:
    """Every task's end and the run state, for whichever engine runs the handlers."""

    def __init__(
        self,
        queue: LocalQueue,
        policies: Mapping[str, TaskPolicy],
        default_policy: TaskPolicy,
        timeout_note: Callable[[str], str],
        *,
        db_backoff_max_seconds: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.queue = queue
        self.policies = dict(policies)
        self.default_policy = default_policy
        self.timeout_note = timeout_note  # what a time limit did to a type's handler
        self.clock = clock
        self.rng = rng
        self.patience = Patience.for_engine(queue.store.engine, db_backoff_max_seconds)
        self.counters = Counters()
        self.fatal: str | None = None
        self.max_tasks: int | None = None
        self.stopping = threading.Event()  # take no more tasks
        self.abandoned = threading.Event()  # the grace is over: stop waiting for anything
        self.changes = ChangeWatch(queue.store.engine)  # wakes idle slots (SQLite)
        self.heartbeats = Heartbeats(queue)
        self._lock = threading.Lock()
        self._running: dict[int, LocalTask] = {}  # key -> task whose handler runs now

    # -- run state --------------------------------------------------------------------------
    @property
    def exit_code(self) -> WorkerExit:
        if self.fatal is not None:
            return WorkerExit.FATAL
        return WorkerExit.UNSTORED if self.counters.unstored else WorkerExit.OK

    def stop(self) -> None:
        """Take no more tasks; running ones get the grace."""
        self.stopping.set()
        self.changes.poke()

    def stop_fatally(self, message: str, *, store_finished: bool = False) -> None:
        """Stop for what the worker cannot outlive, with ``WorkerExit.FATAL``. By default
        at once (the schema changed under it); ``store_finished``: results already
        finished are stored first (the queue is fine, the worker is not)."""
        with self._lock:
            if self.fatal is None:
                self.fatal = message
                logger.error("stopping: %s", message)
        if not store_finished:
            self.abandoned.set()
        self.stop()

    def count(self, name: str) -> int:
        """One more of ``name``; stops the worker once ``max_tasks`` are handled."""
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)
            handled = self.counters.handled
        if self.max_tasks is not None and handled >= self.max_tasks:
            self.stop()
        return handled

    def room(self, in_hand: int) -> int | None:
        """How many more tasks ``max_tasks`` lets the worker take with ``in_hand`` tasks
        not yet handled (None: no limit)."""
        if self.max_tasks is None:
            return None
        with self._lock:
            return max(0, self.max_tasks - self.counters.handled - in_hand)

    # -- tasks under way ----------------------------------------------------------------------
    def begin(self, key: int, task: LocalTask) -> None:
        """``task``'s handler starts (``key``: the engine's slot or run number)."""
        self.heartbeats.hold(task)
        self._running[key] = task

    def end(self, key: int) -> bool:
        """The handler under ``key`` ended; False when its task was handed back meanwhile
        (the worker stopped: the outcome is not the task's any more)."""
        return self._running.pop(key, None) is not None

    def release(self, task: LocalTask) -> None:
        """No more heartbeats for ``task`` (its end is stored, or it is not ours)."""
        self.heartbeats.release(task)

    def hand_back_running(self) -> None:
        """Tasks whose handlers outlived the grace go back to the queue for another worker."""
        for key in list(self._running):
            task = self._running.pop(key, None)
            if task is None:
                continue
            self.release(task)
            if self.hand_back(task, "handed back: the worker stopped before it finished"):
                logger.info(
                    "task %d (%s) handed back to the queue (its handler outlived the grace)",
                    task.id,
                    task.type,
                    extra=task_fields(task.id, task.remote_id, task.type),
                )

    def hand_back(self, task: LocalTask, reason: str) -> bool:
        """``task`` back to the queue, unfailed, for any worker to run; False when the
        queue refused (it goes back when its lock runs out)."""
        try:
            self.queue.release(task, reason)
        except BridgeError as exc:
            logger.warning(
                "task %d could not be handed back (%s); it goes back when its lock runs out",
                task.id,
                exc,
            )
            return False
        self.count("handed_back")
        return True

    # -- limits ---------------------------------------------------------------------------------
    def policy(self, task_type: str) -> TaskPolicy:
        return self.policies.get(task_type, self.default_policy)

    def lease_left(self, task: LocalTask) -> float | None:
        """Seconds the task may still run within its remote lease, less the margin
        (None: a local-only task, no lease)."""
        if task.lease_expires_at is None:
            return None
        left = (task.lease_expires_at - self.queue.clock()).total_seconds()
        return left - self.queue.config.lease_margin_seconds

    def time_limit(self, task: LocalTask) -> float | None:
        """The type's limit, and never past the remote lease less the margin."""
        limit = self.policy(task.type).time_limit
        left = self.lease_left(task)
        if left is not None:
            limit = left if limit is None else min(limit, left)
        return None if limit is None else max(0.0, limit)

    # -- outcomes -------------------------------------------------------------------------------
    def store(
        self, what: str, action: Callable[[], T], give_up: threading.Event | None = None
    ) -> T:
        """A write of a task's end, retried through database trouble until ``give_up``
        (default: the end of the grace)."""
        return self.patience.call(what, action, give_up or self.abandoned)

    def complete(
        self,
        task: LocalTask,
        value: Any,
        started: float,
        next_from: Sequence[str] | None = None,
        writes: Sequence[Write] = (),
    ) -> NextTask:
        """Store the handler's ``value`` as the result, with its ``writes`` in the same
        transaction; with ``next_from`` (types), the next task for the same slot comes in
        that transaction too, unless the worker is stopping or ``max_tasks`` is reached.
        A value that cannot be stored fails the task; a write that raises ends it as the
        handler's raise would (its retry policy applies)."""
        refused = awaitable_refusal(value)
        if refused is not None:
            self.fail(task, refused, started)
            return NOT_LOOKED
        result = as_result(value)
        wanted = next_from is not None and not self.stopping.is_set() and self.room(1) != 0
        what = f"storing the result of task {task.id}"
        queue = self.queue
        generation = self.changes.generation  # a commit after the look moves past it
        try:
            if wanted:
                assert next_from is not None
                next_task = self.store(
                    what,
                    lambda: queue.complete_and_dequeue(task, result, next_from, writes=writes),
                )
            else:
                self.store(what, lambda: queue.complete(task, result, writes=writes))
                next_task = None
        except ValidationError as exc:
            self.fail(task, f"result refused: {exc}", started)
            return NOT_LOOKED
        except WriteFailed as exc:
            self._raised(task, exc.error, started, "its write_with_result")
            return NOT_LOOKED
        self.count("done")
        self.log(task, "done", started)
        return NextTask(next_task, looked=wanted, generation=generation)

    def stored(self, task: LocalTask, started: float) -> None:
        """A result the engine stored itself (in a batch): count and log it."""
        self.count("done")
        self.log(task, "done", started)

    def fail(
        self,
        task: LocalTask,
        reason: str,
        started: float,
        counter: str = "failed",
        detail: str | None = None,
    ) -> None:
        """Fail ``task`` for ``reason`` (``detail``: the traceback, kept locally): the
        failure goes to the server (no local retry)."""
        queue = self.queue
        self.store(f"failing task {task.id}", lambda: queue.fail(task, reason, detail=detail))
        if counter != "failed":
            self.count(counter)
        self.count("failed")
        self.log(task, f"failed: {reason}", started, logging.WARNING)

    def settle_failure(
        self, task: LocalTask, ran: Ran, limit: float | None, started: float
    ) -> None:
        """The task's end when its handler raised or ran past its time limit."""
        if ran.kind == "timeout":
            note = self.timeout_note(task.type)
            reason = f"timed out after {limit:.1f} s (time limit; {note})"
            self.fail(task, reason, started, "timed_out")
            return
        assert ran.error is not None
        self._raised(task, ran.error, started, detail=ran.detail)

    def _raised(
        self,
        task: LocalTask,
        error: BaseException,
        started: float,
        source: str = "",
        detail: str | None = None,
    ) -> None:
        delay = self.policy(task.type).retry.delay(task.attempts, error, self.rng)
        reason = describe_error(error)
        if source:
            reason = f"{reason} (raised by {source}; nothing of it was kept)"
        detail = detail or traceback_text(error)
        left = self.lease_left(task)
        if delay is not None and (left is None or delay < left):
            queue = self.queue
            self.store(
                f"re-queueing task {task.id}",
                lambda: queue.fail(task, reason, retry=True, delay_seconds=delay, detail=detail),
            )
            self.count("retried")
            self.log(task, f"retried in {delay:.1f} s (attempt {task.attempts}): {reason}", started)
            return
        if delay is not None:
            reason += (
                f" (a retry in {delay:.1f} s would outlast the remote lease: left to the server)"
            )
        self.fail(task, reason, started, detail=detail)

    def not_ended(self, task: LocalTask, error: TaskNotHeldError | GaveUp) -> None:
        """The task's end could not be stored: its lock went to another run (not
        recorded), or the database refused until the grace ended (unstored). Either way
        the task runs again when its lock runs out."""
        fields = task_fields(task.id, task.remote_id, task.type)
        if isinstance(error, TaskNotHeldError):
            self.count("not_recorded")
            logger.warning("result of task %d not recorded: %s", task.id, error, extra=fields)
        else:
            self.count("unstored")
            logger.error(
                "task %d: %s; its lock runs out and it runs again", task.id, error, extra=fields
            )

    def log(
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
