"""``--pool process``: each worker slot runs its handlers in a process of its own.

A thread cannot be stopped; a process can. The slot sends a task to its handler
process over a pipe and waits for the answer up to the task's time limit. Past
the limit the process is killed and replaced, and the task fails ("timed out").
A process that dies meanwhile (``os.abort()``, a segfault, the OOM killer) fails
its task only, with the signal or exit code, and is replaced; so is one that has
run ``max_tasks_per_child`` tasks or grown past ``max_memory_mb`` (a leak).

The child encodes the result itself (``taskmanager.encoding``), so values that
cannot cross a pipe are refused like any other non-JSON value, and it dies with
the worker (``PR_SET_PDEATHSIG``), never outliving it. Children are started with
``spawn``: the worker's own threads make ``fork`` unsafe.

Every message names the task it belongs to (a number per task sent) and the process
that sent it, and the slot takes only the answer of its handler process for the task
in hand: a handler that forks, where the forked copy returns too, cannot answer for
its task or any later one (the copy exits without a word), and nothing left in the
pipe is taken for another task's result. An exception is sent pickled inside a
message the worker can always read; one whose class the worker cannot import fails
its task with the exception's type and text instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from taskmanager.encoding import EncodingError, to_json

from ..errors import BridgeError, ValidationError
from ..models import LocalTask
from ..payloads import traceback_text
from .handlers import BoundWrite, Handler
from .outcome import Ran
from .time_limits import LONGEST_WAIT_SECONDS

Progress = Callable[[int, "str | None"], None]
PR_SET_PDEATHSIG = 1


class HandlerProcessDied(BridgeError):
    """The handler's process ended while running a task (signal or exit code in the text)."""


class HandlerError(Exception):
    """A handler's exception that could not reach the worker as itself (it cannot be
    pickled, or its class cannot be imported in the worker): its type and text."""


class ResultRefused(BridgeError):
    """The child could not encode the handler's result (its text names the key path)."""


@dataclass(frozen=True)
class PoolOptions:
    max_tasks_per_child: int | None = None
    max_memory_mb: float | None = None


class _ChildContext:
    """``context`` for a handler in a child: progress goes to the worker over the pipe
    (from the handler's process only: a forked copy's reports are dropped here), and its
    writes go with its answer, to run in the worker's result transaction."""

    def __init__(self, task: LocalTask, conn: Connection, token: int, owner: int, key: str) -> None:
        self.task, self._conn, self._token, self._owner = task, conn, token, owner
        self.idempotency_key = key
        self.writes: list[BoundWrite] = []

    def progress(self, percent: int, message: str | None = None) -> None:
        if os.getpid() == self._owner:
            self._conn.send((self._token, self._owner, "progress", percent, message))

    def write_with_result(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """As ``TaskContext.write_with_result``, but ``fn`` runs in the worker's process:
        it must be a module-level function the worker can import, and its arguments
        picklable (refused here, at once, with the reason)."""
        write = BoundWrite(fn, args, kwargs)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        found: Any = None
        with contextlib.suppress(Exception):
            module: Any = importlib.import_module(fn.__module__)
            found = functools.reduce(getattr, fn.__qualname__.split("."), module)
        if found is not fn:
            raise ValidationError(
                f"write_with_result in a process pool runs fn in the worker's process: it "
                f"must be a module-level function (def at the top of a module the worker "
                f"can import), not {name} (a lambda, a nested function or a method)"
            )
        try:
            pickle.dumps(write)
        except Exception as exc:
            raise ValidationError(
                f"write_with_result in a process pool sends the arguments of {name} to the "
                f"worker's process: they must be picklable ({type(exc).__name__}: {exc})"
            ) from None
        self.writes.append(write)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pickled(error: BaseException) -> bytes | None:
    """The exception as bytes for the worker to unpickle, or None when it cannot be
    pickled (its text still travels)."""
    try:
        return pickle.dumps(error)
    except Exception:
        return None


def _answer(handler: Handler, wants_context: bool, task: LocalTask, context: _ChildContext) -> Any:
    """The handler's outcome as a message body: only builtins (a result's JSON, the
    writes and an exception pickled apart), so the worker can always read the message."""
    try:
        value = handler(task.params, context) if wants_context else handler(task.params)
    except BaseException as exc:  # the task's outcome, as in a thread (see runner.run_call)
        return ("error", _pickled(exc), f"{type(exc).__name__}: {exc}", traceback_text(exc))
    if value is None:
        value = {}
    elif not isinstance(value, Mapping):
        value = {"result": value}
    try:
        result = to_json(value, "results")
    except EncodingError as exc:
        return ("refused", str(exc))
    return ("ok", result, pickle.dumps(context.writes) if context.writes else None)


def child_main(conn: Connection, handlers: Mapping[str, tuple[Handler, bool]]) -> None:
    """The handler process: run each task it is sent, answer, until the pipe closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker, which decides
    owner = os.getpid()
    conn.send((0, owner, "ready"))  # started and imported: time limits count from here
    while True:
        try:
            token, task, key = conn.recv()
        except (EOFError, OSError):
            return
        handler, wants_context = handlers[task.type]
        context = _ChildContext(task, conn, token, owner, key)
        body = _answer(handler, wants_context, task, context)
        if os.getpid() != owner:
            os._exit(0)  # a copy the handler forked, back here: it may not answer or take
        conn.send((token, owner, *body))


def _outcome(body: tuple[Any, ...]) -> Ran:
    """A handler process's answer as the slot's ``Ran``."""
    if body[0] == "ok":
        if body[2] is None:
            return Ran("ok", body[1])
        try:
            writes = pickle.loads(body[2])
        except Exception as exc:  # a function the worker's process cannot import
            why = f"{type(exc).__name__}: {exc}"
            return Ran("error", error=HandlerError(f"its writes could not be read: {why}"))
        return Ran("ok", body[1], writes=tuple(writes))
    if body[0] == "refused":
        return Ran("error", error=ResultRefused(f"result refused: {body[1]}"))
    pickled, text, detail = body[1], body[2], body[3]
    if pickled is None:
        return Ran("error", error=HandlerError(text), detail=detail)
    try:
        error = pickle.loads(pickled)
    except Exception as exc:  # its class is importable in the handler's process only
        unread = HandlerError(
            f"{text} (the exception could not be read by the worker: {type(exc).__name__}: {exc})"
        )
        return Ran("error", error=unread, detail=detail)
    return Ran("error", error=error, detail=detail)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _death(process: BaseProcess) -> str:
    process.join(5)
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class ProcessRunner:
    """One worker slot's handler process, replaced whenever it cannot be trusted."""

    def __init__(
        self, name: str, handlers: Mapping[str, tuple[Handler, bool]], options: PoolOptions
    ) -> None:
        self.name, self.handlers, self.options = name, dict(handlers), options
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._tasks = 0
        self._sent = 0  # tasks sent to any handler process: each answer names its own
        self.replaced = 0

    def _start(self) -> tuple[BaseProcess, Connection]:
        if self._process is None or self._conn is None:
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=child_main, args=(child, self.handlers), name=self.name, daemon=True
            )
            process.start()
            child.close()
            try:
                parent.recv()  # "ready": a slow start is not the handler's time
            except (EOFError, OSError):
                parent.close()
                raise HandlerProcessDied(
                    f"a handler process could not start ({_death(process)}); see its output"
                ) from None
            self._process, self._conn, self._tasks = process, parent, 0
        return self._process, self._conn

    def _replace(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            process.join(5)
        self.replaced += 1

    def run_task(
        self, task: LocalTask, limit: float | None, progress: Progress, key: str = ""
    ) -> Ran:
        """Run ``task`` in the slot's handler process (``key``: its idempotency key, for
        the handler's context)."""
        try:
            process, conn = self._start()
        except HandlerProcessDied as exc:
            return Ran("error", error=exc)
        self._sent += 1
        token = self._sent
        conn.send((token, task, key))
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not conn.poll(None if left is None else min(left, LONGEST_WAIT_SECONDS)):
                if deadline is not None and time.monotonic() < deadline:
                    continue  # a very long limit is waited for in slices
                self._replace()
                return Ran("timeout")
            try:
                message = conn.recv()
            except (EOFError, OSError):
                died = HandlerProcessDied(f"the handler process died ({_death(process)})")
                self._replace()
                return Ran("error", error=died)
            except Exception as exc:  # not one of our messages: the pipe cannot be trusted
                self._replace()
                unreadable = HandlerError(f"the handler's answer could not be read ({exc!r})")
                return Ran("error", error=unreadable)
            if message[:2] != (token, process.pid):
                continue  # an earlier task's, or a forked copy's: not this task's answer
            if message[2] != "progress":
                break
            with contextlib.suppress(BridgeError):
                progress(message[3], message[4])
        self._after_task(process)
        return _outcome(message[2:])

    def _after_task(self, process: BaseProcess) -> None:
        self._tasks += 1
        most, memory = self.options.max_tasks_per_child, self.options.max_memory_mb
        if (most is not None and self._tasks >= most) or (
            memory is not None and process.pid is not None and _rss_mb(process.pid) > memory
        ):
            self._replace()

    def close(self) -> None:
        if self._process is not None:
            self._replace()
