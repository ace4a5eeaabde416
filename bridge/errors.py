"""The bridge's exception tree: one clear, typed error per cause."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised by the bridge."""


class BridgeConfigError(BridgeError, ValueError):
    """A setting is unknown, missing or has a bad value (the message names it)."""


class DatabaseError(BridgeError):
    """The local queue's database cannot be used: unreachable, corrupt, locked, read-only, full."""


class SchemaError(DatabaseError):
    """The database has no bridge schema, or one older or newer than this version expects."""


class TaskNotHeldError(BridgeError):
    """The caller no longer holds the task: its lock expired and it was re-queued, or it ended.

    Nothing was changed. ``current_status`` is the task's status now, if it still exists;
    ``task_id`` the local id (a batch call returns one error per refused task).
    """

    def __init__(
        self, message: str, current_status: str | None = None, task_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.current_status = current_status
        self.task_id = task_id


class ValidationError(BridgeError, ValueError):
    """Params, a result or a schema that cannot be queued (the server would refuse them)."""


class WriteFailed(BridgeError):
    """A handler's write (``context.write_with_result``) raised in the result's
    transaction: nothing of it, nor the result, was kept. ``error`` is what it raised;
    the worker ends the task as if the handler had raised it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
