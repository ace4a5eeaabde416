"""The event loop async handlers run on: a thread of its own, out of the worker's reach.

Handlers share one loop, and nothing a handler does to it may end another task or the
worker:

* the worker's own work (taking tasks, storing results, time limits, the grace) runs
  on another loop in another thread: a handler's ``asyncio.all_tasks()`` never sees it;
* every task on this loop belongs to the handler that made it (``HandlerTask``), and
  a cancel issued by another handler is ignored: the cleanup idiom ``for t in
  asyncio.all_tasks(): t.cancel()`` cancels the caller's own tasks only;
* ``loop.stop()`` in a handler, or an exception escaping one of its callbacks, stops
  the loop: it runs again at once, and nothing waiting on it is lost;
* a loop that fails again as soon as it runs (a handler closed its selector) is
  broken: ``on_broken`` is told once, and the worker stops with a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..logs import task_fields
from ..models import LocalTask
from .loop_stalls import LoopStalls
from .outcome import Ran

logger = logging.getLogger("bridge.worker")

# The handler run a task belongs to: set by the run's top-level task, inherited by
# every task and callback its handler creates (they copy the context).
_OWNER: contextvars.ContextVar[HandlerRun | None] = contextvars.ContextVar(
    "bridge_handler_run", default=None
)
FAILURES_TO_BREAK = 3  # the loop failing this often ...
FAILURE_WINDOW_SECONDS = 1.0  # ... this fast is broken, not merely interrupted
IGNORED_CANCEL_SECONDS = 1.0  # a handler still running this long after its cancel: said


class HandlerTask(asyncio.Task):  # type: ignore[type-arg]
    """A task of the handlers' loop, owned by the handler run that created it."""

    def __init__(self, coro: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        self.owner = context.get(_OWNER) if context is not None else _OWNER.get()

    def cancel(self, msg: Any = None) -> bool:
        issuer = _OWNER.get()
        if issuer is not None and self.owner is not None and issuer is not self.owner:
            issuer.refused_cancel()
            return False  # another handler's task: not the issuer's to cancel
        return super().cancel(msg)


def _task_factory(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
) -> HandlerTask:
    return HandlerTask(coro, loop=loop, **kwargs)


@dataclass
class Finished:
    """How a handler run ended: its ``Ran``, and whether its time limit ran out while
    the loop was blocked (then the limit says nothing about this task)."""

    ran: Ran | None  # None: cancelled by the worker (the end of the grace)
    stalled: bool = False


class HandlerRun:
    """One handler call on the handlers' loop; ``done`` is its ``Finished``."""

    def __init__(self, task: LocalTask, call: Callable[[], Awaitable[Any]], limit: float | None):
        self.task, self.call, self.limit = task, call, limit
        self.done: concurrent.futures.Future[Finished] = concurrent.futures.Future()
        self.top: HandlerTask | None = None
        self.expired = False  # the time limit cancelled it
        self.by_worker = False  # the worker cancelled it (the grace ended)
        self._refused = 0

    def refused_cancel(self) -> None:
        self._refused += 1
        if self._refused == 1:
            logger.warning(
                "task %d (%s): its handler cancelled tasks of other handlers (such as "
                "`for t in asyncio.all_tasks(): t.cancel()`); ignored: a handler may "
                "cancel only the tasks it created",
                self.task.id,
                self.task.type,
                extra=task_fields(self.task.id, self.task.remote_id, self.task.type),
            )


class HandlerLoop:
    """Runs coroutine handlers on a loop in a thread of its own (see the module)."""

    def __init__(self, on_broken: Callable[[str], None]) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
        self.stalls = LoopStalls()
        self.broken: str | None = None
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._live: set[HandlerRun] = set()  # submitted and not yet ended
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="bridge-handlers")

    def start(self) -> None:
        self._thread.start()

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self.stalls.start, self.loop)
        failures: collections.deque[float] = collections.deque(maxlen=FAILURES_TO_BREAK)
        while not self._closing:
            try:
                self.loop.run_forever()
            except BaseException as exc:  # from a handler's callback, or a broken loop
                failures.append(time.monotonic())
                if self.loop.is_closed() or (
                    len(failures) == FAILURES_TO_BREAK
                    and failures[-1] - failures[0] < FAILURE_WINDOW_SECONDS
                ):
                    self._break(f"{type(exc).__name__}: {exc}")
                    return
                logger.error(
                    "%s escaped the handlers' event loop (raised by a handler's callback); "
                    "the loop runs on",
                    f"{type(exc).__name__}: {exc}",
                )
            else:
                if not self._closing:
                    logger.warning("a handler stopped the event loop (loop.stop()); it runs on")

    def _break(self, why: str) -> None:
        with self._lock:
            self.broken = why
            live, self._live = self._live, set()
        for run in live:
            run.done.cancel()  # never to end: the worker hands its task back
        self._on_broken(f"the handlers' event loop is broken ({why})")

    # -- the worker's side (any thread) -------------------------------------------------
    def submit(self, run: HandlerRun) -> concurrent.futures.Future[Finished]:
        """Start ``run`` on the loop; its ``done`` future (cancelled if the loop breaks)."""
        with self._lock:
            if self.broken is None:
                self._live.add(run)
                run.done.add_done_callback(lambda _: self._forget(run))
        if self.broken is not None:
            run.done.cancel()
            return run.done
        try:
            self.loop.call_soon_threadsafe(self._start, run)
        except RuntimeError:  # the loop is closed
            run.done.cancel()
        return run.done

    def _forget(self, run: HandlerRun) -> None:
        with self._lock:
            self._live.discard(run)

    def cancel(self, run: HandlerRun) -> None:
        """The worker's cancel (the grace is over): honoured whatever the handler did."""
        run.by_worker = True
        try:
            self.loop.call_soon_threadsafe(_cancel_by_worker, run)  # after its _start
        except RuntimeError:  # the loop is closed
            run.done.cancel()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the loop and its thread; handlers still running are abandoned."""
        self._closing = True
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            try:
                self.loop.close()
            except Exception as exc:  # a broken loop may not even close
                logger.debug("the handlers' event loop did not close: %s", exc)

    # -- on the loop ----------------------------------------------------------------------
    def _start(self, run: HandlerRun) -> None:
        top = HandlerTask(self._guarded(run), loop=self.loop)
        top.owner = run
        run.top = top
        top.add_done_callback(lambda _: _settle(run, None))

    async def _guarded(self, run: HandlerRun) -> None:
        """The handler's own outcome, whatever it raises (``GeneratorExit``, ``SystemExit``
        and ``KeyboardInterrupt`` included: inside this coroutine they are the handler's,
        and let out they would end the loop); its time limit; whether the loop stalled."""
        _OWNER.set(run)
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        began = time.monotonic()
        timer = None if run.limit is None else loop.call_later(run.limit, _expire, run)
        try:
            _settle(run, Ran("ok", await run.call()))
        except asyncio.CancelledError as exc:
            if run.by_worker:
                raise
            if run.expired:
                uncancel = getattr(current, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
                _settle(run, Ran("timeout"), self.stalls.since(began, time.monotonic()))
            else:  # the handler's own (a cancelled child task, or it cancelled itself)
                _settle(run, Ran("error", error=exc))
        except BaseException as exc:
            if _closing_coroutine(current):
                raise
            _settle(run, Ran("error", error=exc))
        finally:
            if timer is not None:
                timer.cancel()


def _cancel_by_worker(run: HandlerRun) -> None:
    if run.top is not None:
        run.top.cancel()
    else:
        _settle(run, None)


def _expire(run: HandlerRun) -> None:
    run.expired = True
    if run.top is not None:
        run.top.cancel()
        run.top.get_loop().call_later(IGNORED_CANCEL_SECONDS, _ignored, run)


def _ignored(run: HandlerRun) -> None:
    if not run.done.done():
        logger.warning(
            "task %d (%s) ignores its cancellation %.0f s past its time limit: it keeps its "
            "slot until it returns (a handler must not swallow CancelledError)",
            run.task.id,
            run.task.type,
            IGNORED_CANCEL_SECONDS,
            extra=task_fields(run.task.id, run.task.remote_id, run.task.type),
        )


def _settle(run: HandlerRun, ran: Ran | None, stalled: bool = False) -> None:
    """The run's outcome, once: the first one set stands (a result set before a cancel
    that came right after it is kept)."""
    if not run.done.done():
        run.done.set_result(Finished(ran, stalled))


def _closing_coroutine(current: asyncio.Task[Any] | None) -> bool:
    """Whether a ``GeneratorExit`` is the coroutine being closed (the loop is going away),
    not one the handler raised while running: it must then propagate."""
    try:
        return asyncio.current_task() is not current or current is None
    except RuntimeError:  # no running loop: closed from outside
        return True
