"""``Worker``: runs handlers on tasks from the local queue, and outlives what they do.

A handler is ``handler(params) -> result`` or ``handler(params, context)``,
where ``context.progress(percent, message)`` reports progress. While it runs, a
heartbeat keeps the task's lock. Every outcome ends its task and only its task
(promise 6): a result is encoded (``bridge.queue.encoded``) and stored, one that
cannot be encoded fails the task naming its key path; anything raised, even
``SystemExit`` or ``KeyboardInterrupt``, fails the task (or retries it, per the
type's ``RetryPolicy``); a handler past its time limit fails it ("timed out").
Database trouble is waited out (``Patience``): a finished result is retried until
stored. Blocking handlers run on the thread engine (``threads``), ``async def`` ones
on the event-loop engine (``asyncio_engine``); both hand every outcome to one
``WorkerCore``. Exit codes and their meaning: ``WorkerExit`` and docs/OPERATIONS.md.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

from ..errors import BridgeError
from ..queue import LocalQueue
from ..storage import display_url, normalise_url
from .asyncio_engine import AsyncEngine
from .core import Counters, WorkerCore, WorkerExit
from .handlers import Handler, Handlers, TaskPolicy
from .process_pool import PoolOptions
from .registry import WorkerRecord
from .threads import ThreadEngine

logger = logging.getLogger("bridge.worker")

POOLS = ("thread", "process")
JOIN_SLICE_SECONDS = 0.2  # the main thread wakes this often, so signal handlers run


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
        self.handlers = Handlers(handlers)
        # One async handler puts the worker on an event loop (asyncio_engine).
        self.is_async = self.handlers.any_async
        if self.is_async and pool == "process":
            names = ", ".join(n for n in self.handlers.types if self.handlers.is_async[n])
            raise BridgeError(
                f"async handlers ({names}) run on the worker's event loop: --pool process "
                "is for blocking handlers"
            )
        self.pool = pool
        self.queue = queue
        self.concurrency = concurrency
        self.grace_seconds = grace_seconds
        self.summary_seconds = summary_seconds
        self.clock = clock
        self.core = WorkerCore(
            queue,
            policies or {},
            default_policy or TaskPolicy(),
            self._timeout_note,
            db_backoff_max_seconds=db_backoff_max_seconds,
            clock=clock,
            rng=rng or random.Random(),
        )
        self.engine: AsyncEngine | ThreadEngine
        if self.is_async:
            self.engine = AsyncEngine(self.core, self.handlers, concurrency, poll_seconds)
        else:
            options = pool_options or PoolOptions()
            self.engine = ThreadEngine(
                self.core, self.handlers, concurrency, poll_seconds, pool, options
            )
        self._signals = 0

    @property
    def counters(self) -> Counters:
        return self.core.counters

    @property
    def fatal(self) -> str | None:
        return self.core.fatal

    @property
    def exit_code(self) -> WorkerExit:
        return self.core.exit_code

    def stop(self) -> None:
        """Take no more tasks; running ones get ``grace_seconds`` (see ``run``)."""
        self.core.stop()

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

    def _timeout_note(self, task_type: str) -> str:
        if self.handlers.is_async.get(task_type):
            return "the handler's coroutine was cancelled"
        if self.pool == "process":
            return "the handler's process was killed and replaced"
        return "in thread mode the handler's thread cannot be stopped; its result is discarded"

    # -- the whole worker ---------------------------------------------------------------------
    def describe(self) -> str:
        """The start line: what runs, how, and on which database (no password)."""
        default = self.core.default_policy
        limit = "lease less margin" if default.time_limit is None else f"{default.time_limit:g} s"
        return (
            f"types {', '.join(self.handlers.types)}; concurrency {self.concurrency}; "
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
        core = self.core
        core.max_tasks = max_tasks
        logger.info("worker started: %s", self.describe())
        record = WorkerRecord(
            self.queue,
            self.handlers.types,
            self.concurrency,
            "asyncio" if self.is_async else self.pool,
            lambda: core.counters,
        )
        record.start()
        core.changes.start()
        try:
            self._run_engine()
        finally:
            core.heartbeats.close()
            core.changes.close()
            record.stop()
        logger.info("worker stopped: %s", core.counters.line())
        return core.counters.handled

    def _run_engine(self) -> None:
        threads = self.engine.threads()
        try:
            for thread in threads:
                thread.start()
            self._wait(threads, until=None)
            deadline = self.clock() + self.grace_seconds
            self._wait(threads, until=deadline)
            self.core.abandoned.set()
            self.core.hand_back_running()
            for thread in threads:
                thread.join(JOIN_SLICE_SECONDS)  # a slot stuck in a handler is left behind
        finally:
            if isinstance(self.engine, ThreadEngine):
                self.engine.close()

    def _wait(self, threads: list[threading.Thread], until: float | None) -> None:
        """Join in slices (so signal handlers run), logging a summary now and then; ``until``
        None: until the stop, else until the threads end or the clock passes ``until``."""
        last, seen = self.clock(), Counters()
        while any(t.is_alive() for t in threads):
            if until is None and self.core.stopping.is_set():
                return
            if until is not None and self.clock() >= until:
                return
            alive = next((t for t in threads if t.is_alive()), None)
            if alive is not None:  # else all ended since the look above
                alive.join(JOIN_SLICE_SECONDS)
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
