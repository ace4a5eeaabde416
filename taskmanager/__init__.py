"""Python client for the PrismQ TaskManager API, and its emulator (``.emulator``)."""

import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .client import TaskManagerClient
from .config import DEFAULT_API_URL, TaskManagerConfig, default_worker_id
from .dedupe import dedupe_key, php_json
from .exceptions import (
    TaskManagerAPIError,
    TaskManagerAuthError,
    TaskManagerConfigError,
    TaskManagerConflictError,
    TaskManagerConnectionError,
    TaskManagerDataTooLongError,
    TaskManagerError,
    TaskManagerNotFoundError,
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerRequestTooLargeError,
    TaskManagerServerError,
    TaskManagerTimeoutError,
    TaskManagerValidationError,
)
from .models import ClaimedTask, CompletionResult, CreatedTask, Task, TaskType

if TYPE_CHECKING:
    from .async_client import AsyncTaskManagerClient


def __getattr__(name: str) -> Any:
    """``AsyncTaskManagerClient`` on first use, so that ``import taskmanager`` works
    without the optional aiohttp (the ``async`` extra)."""
    if name == "AsyncTaskManagerClient":
        from .async_client import AsyncTaskManagerClient

        return AsyncTaskManagerClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# A library logs; the application decides where it goes.
logging.getLogger("taskmanager").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_API_URL",
    "AsyncTaskManagerClient",
    "ClaimedTask",
    "CompletionResult",
    "CreatedTask",
    "Task",
    "TaskManagerAPIError",
    "TaskManagerAuthError",
    "TaskManagerClient",
    "TaskManagerConfig",
    "TaskManagerConfigError",
    "TaskManagerConflictError",
    "TaskManagerConnectionError",
    "TaskManagerDataTooLongError",
    "TaskManagerError",
    "TaskManagerNotFoundError",
    "TaskManagerProtocolError",
    "TaskManagerRateLimitError",
    "TaskManagerRequestTooLargeError",
    "TaskManagerServerError",
    "TaskManagerTimeoutError",
    "TaskManagerValidationError",
    "TaskType",
    "__version__",
    "dedupe_key",
    "default_worker_id",
    "php_json",
]
