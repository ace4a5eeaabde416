"""The worker's event loop: up to ``concurrency`` async handlers at once in one thread.

A worker with an ``async def`` handler runs this engine instead of one thread
per slot. Handlers are coroutines on one loop of their own, in a thread of its
own (``bridge.handler_loop``: nothing a handler does to that loop reaches the
engine or another handler's task); the engine's loop takes tasks, stores results
and keeps the time limits. The local queue's calls (taking tasks, storing results,
failures, progress) run on a small thread pool, never on a loop, so a slow disk
does not stall every handler. Each trip to the
database stores every result finished since the last trip and takes as many
new tasks as there are free slots, in one transaction
(``complete_many_and_dequeue``): one commit for many tasks at high concurrency.

Every promise of the thread worker holds, through the worker's own methods:
heartbeats keep the locks, a time limit cancels the coroutine (the task fails
"timed out"), anything the handler raises (``SystemExit`` included) ends only
its task, retries follow the type's policy, a result that cannot be encoded
fails its task, database trouble is waited out (``Patience``), and on stop the
running handlers get the grace, after which their tasks are handed back.
A blocking handler of the same worker runs on a thread of its own; its time limit
is kept by the engine's loop, which no handler blocks, so it never runs out early and
its task is never handed back while the thread still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BridgeError, TaskNotHeldError, ValidationError
from ..logs import task_fields
from ..models import LocalTask
from ..payloads import encoded_result
from ..queue import LocalQueue
from ..storage import GaveUp, SchemaGone
from .core import MIN_POLL_SECONDS, WorkerCore, next_idle_wait
from .handler_loop import HandlerLoop, HandlerRun
from .handlers import Handlers, TaskContext, awaitable_refusal, with_writes
from .outcome import Ran, run_call

logger = logging.getLogger("bridge.worker")

_T = TypeVar("_T")

# Threads for the queue's calls: one takes and stores batches, the others record
# failures and progress meanwhile (SQLite serialises the writes anyway).
QUEUE_THREADS = 4
STALLED = "handed back: its time limit ran out while the event loop was blocked"
WAIT_SLICE_SECONDS = 0.2  # a loop with every slot busy still looks at stop() this often


class AsyncTaskContext(TaskContext):
    """What an async handler may use besides its params: ``await context.progress(...)``,
    and ``write_with_result``/``idempotency_key`` as a blocking handler's context (the
    writes run where the queue's writes run, never on the loop)."""

    def __init__(
        self,
        task: LocalTask,
        queue: LocalQueue,
        submit: Callable[..., asyncio.Future[Any]],
    ) -> None:
        super().__init__(task, queue)
        self._submit = submit

    def progress(self, percent: int, message: str | None = None) -> asyncio.Future[None]:  # type: ignore[override]
        """Record progress (renews the lock) off the event loop. The write starts when
        called, so a forgotten ``await`` loses nothing; awaiting waits for it (and raises
        what it raised, such as a bad percent)."""
        return self._submit(self.queue.progress, self.task, percent, message)


@dataclass
class _Finished:
    task: LocalTask
    result: dict[str, Any]
    started: float


class AsyncEngine:
    """Runs a worker's handlers: coroutines on the handlers' loop, blocking ones on
    threads of their own, the engine itself on a loop in a thread of its own."""

    def __init__(
        self, core: WorkerCore, handlers: Handlers, concurrency: int, poll_seconds: float
    ) -> None:
        self.core = core
        self.handlers = handlers
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._finished: list[_Finished] = []
        self._finished_in_trip: list[_Finished] = []  # the batch of the trip under way
        self._running: set[asyncio.Task[None]] = set()
        self._runs: set[HandlerRun] = set()  # coroutine handlers under way
        self._busy = 0  # handlers not yet ended (a finished Task leaves _running a bit later)
        self._next_key = 0
        self._queue_pool: ThreadPoolExecutor | None = None
        self._handlers = HandlerLoop(on_broken=self._broken)
        self._waiter: asyncio.Future[None] | None = None  # the loop's wait, cut short by _wake_up
        self._woken = False  # a handler ended while the loop was not waiting

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self.run, daemon=True, name="bridge-asyncio")]

    def run(self) -> None:
        """The thread's target: the loop until the worker stops."""
        core = self.core
        self._handlers.start()
        # Read now, off every loop: a local task's idempotency key needs it, and a
        # handler asking for the key must not wait on the database on its loop.
        with contextlib.suppress(BridgeError):
            core.queue.queue_id()
        try:
            asyncio.run(self._main())
        except GaveUp:
            return
        except SchemaGone as exc:
            core.stop_fatally(f"the queue database changed under the worker: {exc}")
        except Exception:  # a bug of ours, not a handler's: say so and stop taking tasks
            logger.exception("the worker's event loop failed; stopping")
            core.stop()
        finally:
            self._handlers.close()

    def _broken(self, why: str) -> None:
        """The handlers' loop cannot run any more (from its thread): the worker stops with
        a non-zero exit code; the tasks it holds go back to the queue."""
        self.core.stop_fatally(
            f"{why}; results finished are stored, running tasks go back to the queue",
            store_finished=True,
        )

    # -- the loop ---------------------------------------------------------------------------
    async def _main(self) -> None:
        self._queue_pool = ThreadPoolExecutor(QUEUE_THREADS, thread_name_prefix="bridge-queue")
        loop = asyncio.get_running_loop()

        def changed() -> None:  # another process committed (SQLite): look now, not later
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._wake_up)

        self.core.changes.on_change(changed)
        try:
            await self._serve()
        finally:
            for run in self._runs:
                self._handlers.cancel(run)  # past the grace: the worker hands them back
            for running in self._running:
                running.cancel()
            if self._running:
                await asyncio.wait(self._running, timeout=1.0)
            if self._finished:  # finished after the last trip, with the grace over
                self._unstored(self._finished, "the grace ended before they were stored")
                self._finished = []
            self._queue_pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        core = self.core
        idle = MIN_POLL_SECONDS
        while not core.abandoned.is_set():
            stopping = core.stopping.is_set()
            if stopping and not self._busy and not self._finished:
                return
            room = 0 if stopping else self._room()
            taken = await self._guarded_trip(room) if self._finished or room else 0
            if self._finished:
                continue  # more finished during the trip: store them now
            if taken:
                idle = MIN_POLL_SECONDS
                continue  # slots may have freed meanwhile
            if room:
                # The queue ran dry: look again soon after work, backing off to
                # poll_seconds while it stays empty; a finished handler wakes us.
                await self._sleep_or_wake(idle)
                idle = next_idle_wait(idle, self.poll_seconds)
            else:
                await self._sleep_or_wake(WAIT_SLICE_SECONDS)

    async def _guarded_trip(self, room: int) -> int:
        """A trip whose failure ends neither the loop nor the worker: a take given up at
        the stop takes nothing; a bug of ours is logged and its batch's tasks run again
        when their locks run out (as a thread worker's slot carries on)."""
        try:
            return await self._trip(room)
        except GaveUp:
            if self.core.abandoned.is_set():
                raise  # results given up at the end of the grace: the worker is done
            return 0
        except (SchemaGone, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("storing results or taking tasks failed unexpectedly; carrying on")
            for item in self._finished_in_trip:
                self.core.release(item.task)
            self._finished_in_trip = []
            await self._sleep_or_wake(1.0)
            return 0

    def _room(self) -> int:
        """How many more tasks to take: the free slots, and no more than ``max_tasks`` allows."""
        room = self.concurrency - self._busy  # finished ones are stored on this trip
        allowed = self.core.room(in_hand=self._busy + len(self._finished))
        return max(0, room if allowed is None else min(room, allowed))

    async def _sleep_or_wake(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a handler ends (``_wake_up``)."""
        loop = asyncio.get_running_loop()
        if self._woken:
            self._woken = False
            return
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(seconds, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._woken = False

    def _wake_up(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter)
        else:
            self._woken = True

    def _submit(self, call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Start a blocking queue call on the queue's threads now; its future."""
        return asyncio.get_running_loop().run_in_executor(self._queue_pool, call, *args)

    async def _offload(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking queue call on the queue's threads, off the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._queue_pool, call, *args)

    # -- one trip to the database ---------------------------------------------------------
    async def _trip(self, room: int) -> int:
        """Store every finished result and take up to ``room`` tasks, in one transaction
        (one commit), and start them; returns how many were taken.

        While the database is in trouble the results are what must not be lost: the
        trip is retried until the grace is over (a take alone, until the stop).
        """
        core = self.core
        queue = core.queue
        types = self.handlers.types
        batch, self._finished = self._finished, []
        self._finished_in_trip = batch
        if not batch:
            taken: list[LocalTask] = await self._offload(
                core.store,
                f"taking up to {room} task(s)",
                lambda: queue.dequeue_many(room, types),
                core.stopping,
            )
        else:
            finished = [(item.task, item.result) for item in batch]
            try:
                refused, taken = await self._offload(
                    core.store,
                    f"storing {len(batch)} result(s)",
                    lambda: queue.complete_many_and_dequeue(finished, room, types),
                )
            except GaveUp as exc:
                self._finished_in_trip = []
                self._unstored(batch, str(exc))
                raise
            self._count_stored(batch, refused)
        self._finished_in_trip = []
        if core.abandoned.is_set() and taken:  # taken as the grace ended: not started
            await self._offload(self._hand_back_now, taken)
            return 0
        for task in taken:
            self._start(task)
        return len(taken)

    def _hand_back_now(self, tasks: list[LocalTask]) -> None:
        for task in tasks:
            self.core.hand_back(task, "handed back: the worker stopped")

    def _unstored(self, batch: list[_Finished], why: str) -> None:
        for item in batch:
            self.core.release(item.task)
            self.core.count("unstored")
        logger.error(
            "%d result(s) not stored: %s; their locks run out and they run again",
            len(batch),
            why,
        )

    def _count_stored(self, batch: list[_Finished], refused: list[TaskNotHeldError]) -> None:
        lost = {error.task_id: error for error in refused}
        for item in batch:
            self.core.release(item.task)
            if item.task.id in lost:
                self.core.not_ended(item.task, lost[item.task.id])
            else:
                self.core.stored(item.task, item.started)

    # -- one task ---------------------------------------------------------------------------
    def _start(self, task: LocalTask) -> None:
        key = self._next_key = self._next_key + 1
        self.core.begin(key, task)
        self._busy += 1
        running = asyncio.ensure_future(self._work(key, task))
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _work(self, key: int, task: LocalTask) -> None:
        core = self.core
        started = core.clock()
        limit = core.time_limit(task)
        stored_later = False
        try:
            ran, stalled = await self._call(task, limit)
            if not core.end(key):
                return  # handed back by the stopping worker meanwhile
            if (
                ran.kind == "timeout"
                and stalled
                and not (task.error or "").startswith(STALLED)  # once: it may be the blocker
            ):
                await self._offload(self._hand_back_stalled, task)
            elif ran.kind == "ok":
                stored_later = await self._finish(task, ran, started)
            else:
                await self._offload(core.settle_failure, task, ran, limit, started)
        except asyncio.CancelledError:
            raise  # past the grace, or a broken loop: the task is still core's to hand back
        except (TaskNotHeldError, GaveUp) as exc:
            core.not_ended(task, exc)
        except SchemaGone as exc:
            core.stop_fatally(f"the queue database changed under the worker: {exc}")
        except Exception:  # a bug of ours: the task runs again when its lock runs out
            logger.exception("task %d: unexpected error in the worker; carrying on", task.id)
        finally:
            self._busy -= 1
            if not stored_later:
                core.release(task)
            self._wake_up()

    def _hand_back_stalled(self, task: LocalTask) -> None:
        """A time limit that ran out while the handlers' loop was blocked (by another
        handler, or the process stopped) says nothing about this task: it goes back to
        the queue, unfailed, instead of failing "timed out". Once per task: the handler
        that blocked the loop may be this one."""
        if self.core.hand_back(task, STALLED):
            logger.warning(
                "task %d (%s) handed back: its time limit ran out while the event loop was blocked",
                task.id,
                task.type,
                extra=task_fields(task.id, task.remote_id, task.type),
            )

    async def _finish(self, task: LocalTask, ran: Ran, started: float) -> bool:
        """Queue the result for the next trip; a result that cannot be encoded fails its
        task here instead of spoiling the batch. True when it was queued. A result with
        the handler's own writes is stored at once, alone, in their transaction (off the
        loop, as every queue call): a write that raises must not spoil a batch either."""
        value = ran.value
        if ran.writes:
            await self._offload(self.core.complete, task, value, started, None, ran.writes)
            return False
        refused = awaitable_refusal(value)
        try:
            if refused is None:
                result = encoded_result(value)
        except ValidationError as exc:
            refused = f"result refused: {exc}"
        if refused is not None:
            await self._offload(self.core.fail, task, refused, started)
            return False
        self._finished.append(_Finished(task, result, started))
        return True

    async def _call(self, task: LocalTask, limit: float | None) -> tuple[Ran, bool]:
        """The handler's outcome, or "timeout" once ``limit`` passes, and whether the
        handlers' loop was blocked when it did (a coroutine is cancelled; a blocking
        handler's thread is left to finish, its result discarded)."""
        queue = self.core.queue
        handler = self.handlers[task.type]
        wants_context = self.handlers.wants_context[task.type]
        args: tuple[Any, ...] = (task.params,)
        if not self.handlers.is_async[task.type]:
            context = TaskContext(task, queue)
            if wants_context:
                args += (context,)
            call = _in_thread(lambda: handler(*args), task.id)
            try:  # on this loop, which no handler blocks: the limit is the thread's own
                ran = await (call if limit is None else asyncio.wait_for(call, limit))
            except asyncio.TimeoutError:
                return Ran("timeout"), False
            return with_writes(ran, context), False
        context = AsyncTaskContext(task, queue, self._submit)
        if wants_context:
            args += (context,)
        run = HandlerRun(task, lambda: handler(*args), limit)
        self._runs.add(run)
        try:
            finished = await asyncio.wrap_future(self._handlers.submit(run))
        finally:
            self._runs.discard(run)
        if finished.ran is None:  # cancelled by the worker: the grace is over
            raise asyncio.CancelledError
        return with_writes(finished.ran, context), finished.stalled


async def _in_thread(call: Callable[[], Any], task_id: int) -> Ran:
    """A blocking handler on a thread of its own: one stuck past its time limit holds
    only its own thread (as the thread worker's runner does), never another's turn."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Ran] = loop.create_future()

    def deliver(ran: Ran) -> None:
        if not outcome.done():
            outcome.set_result(ran)

    def target() -> None:
        ran = run_call(call)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: discarded
            loop.call_soon_threadsafe(deliver, ran)

    threading.Thread(target=target, daemon=True, name=f"bridge-handler-{task_id}").start()
    return await outcome


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
