"""Python client for the PrismQ TaskManager API, and its emulator (``.emulator``)."""

import logging

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

# A library logs; the application decides where it goes.
logging.getLogger("taskmanager").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_API_URL",
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
