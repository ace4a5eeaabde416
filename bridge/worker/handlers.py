"""What a handler is: how the CLI finds one, what it is given, how it is called.

A handler is ``handler(params) -> result`` or ``handler(params, context)`` (``context``:
a ``TaskContext``), a plain function or an ``async def``; ``TaskPolicy`` is what the
worker applies to every task of a type.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BridgeConfigError, BridgeError, ValidationError
from ..models import LocalTask
from ..queue import LocalQueue
from .outcome import Ran
from .retry import RetryPolicy

Handler = Callable[..., Any]


class Handlers:
    """A worker's handlers by task type, and how each is called: as a coroutine or not,
    with a ``context`` or not (decided once, not per task)."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.by_type = dict(handlers)
        self.types = sorted(self.by_type)
        self.is_async = {name: is_async_handler(h) for name, h in self.by_type.items()}
        self.wants_context = {name: wants_context(h) for name, h in self.by_type.items()}
        self.any_async = any(self.is_async.values())

    def __getitem__(self, task_type: str) -> Handler:
        return self.by_type[task_type]


def load_handler(spec: str, app_dir: str | os.PathLike[str] | None = None) -> Handler:
    """``package.module:function`` -> the function (for the CLI's ``--handler``).

    The module is looked for in ``app_dir`` (default: the current folder) first, as
    ``python -m`` and celery's ``--workdir`` do.
    """
    folder = str(Path(app_dir if app_dir is not None else os.getcwd()).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BridgeError(f"--handler must look like package.module:function, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # the module's own code ran: anything may come out
        raise BridgeError(
            f"cannot import handler module {module_name!r} (looked in {folder} and sys.path): "
            f"{_import_failure(exc)}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise BridgeError(f"handler {spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BridgeError(f"handler {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _import_failure(exc: BaseException) -> str:
    """``SyntaxError: '(' was never closed (/app/mod.py:3)``: the type, the text and, for
    a syntax error, where, so that one line says what to fix."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}:{exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


class BoundWrite:
    """``fn(connection, *args, **kwargs)``: one write registered by a handler, run in its
    result's transaction. Plain data (the function and its arguments), so that a handler
    process can send it to the worker."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        if not callable(fn):
            raise ValidationError(
                f"write_with_result needs a function fn(connection, ...), got {fn!r}"
            )
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self, connection: Any) -> Any:
        return self.fn(connection, *self.args, **self.kwargs)


class TaskContext:
    """What a handler may use besides its params: progress, and its own database writes
    made once with its result (``write_with_result``, ``idempotency_key``)."""

    def __init__(self, task: LocalTask, queue: LocalQueue) -> None:
        self.task = task
        self.queue = queue
        self.writes: list[BoundWrite] = []

    def progress(self, percent: int, message: str | None = None) -> None:
        self.queue.progress(self.task, percent, message)

    def write_with_result(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(connection, *args, **kwargs)`` inside the transaction that stores this
        task's result and its outbox row, after the handler returns: the writes and the
        result are committed together or not at all, so they happen once per task however
        often processes die. ``connection`` is a SQLAlchemy ``Connection`` to the queue's
        database; ``fn`` must not commit or roll back. Calls run in the order made. If
        ``fn`` raises, nothing of it is kept and the task ends as if the handler had
        raised it (its retry policy applies); if the handler raises or times out, no
        write runs."""
        self.writes.append(BoundWrite(fn, args, kwargs))

    @property
    def idempotency_key(self) -> str:
        """One text for every run and attempt of this task (``LocalQueue.idempotency_key``):
        the key for ``bridge.record_once`` in another database."""
        return self.queue.idempotency_key(self.task)


def with_writes(ran: Ran, context: TaskContext) -> Ran:
    """A handler's outcome with the writes it registered, when it returned (a raise or
    a time limit drops them)."""
    if ran.kind != "ok" or not context.writes:
        return ran
    return dataclasses.replace(ran, writes=tuple(context.writes))


@dataclass(frozen=True)
class TaskPolicy:
    """Per task type: a time limit (seconds; ``None``: what is left of the remote lease
    less ``lease_margin_seconds``, none for a local-only task) and a retry policy."""

    time_limit: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        limit = self.time_limit
        if limit is not None and (isinstance(limit, bool) or not 0 <= limit < math.inf):
            raise BridgeConfigError(
                f"time_limit must be a finite number of seconds >= 0 (None: the remote "
                f"lease less the margin), got {limit!r}"
            )


def wants_context(handler: Handler) -> bool:
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


def is_async_handler(handler: Handler) -> bool:
    """``async def`` (a function, a partial of one, or an object whose ``__call__`` is)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - the method itself is inspected
    )


def awaitable_refusal(value: Any) -> str | None:
    """Why a handler's return value is refused when it is a coroutine (an ``async def``
    wrapped in a plain function: the worker cannot tell it is async), else ``None``."""
    if not inspect.isawaitable(value):
        return None
    close = getattr(value, "close", None)
    if callable(close):
        close()  # never run: no "was never awaited" warning besides this reason
    return (
        "result refused: the handler returned a coroutine; make it async def "
        "(a decorator keeps it async with functools.wraps and async def itself)"
    )
