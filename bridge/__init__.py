"""The bridge: a durable local queue beside the workers, synced with the TaskManager API."""

# One distribution ships both packages: one version, read once from its metadata.
from taskmanager import __version__

from .config import BridgeConfig
from .errors import (
    BridgeConfigError,
    BridgeError,
    DatabaseError,
    SchemaError,
    TaskNotHeldError,
    ValidationError,
)
from .models import LocalTask, OutboxEntry, QueueCounts
from .once import forget_once_keys, record_once
from .queue import LocalQueue
from .worker import Retry, RetryPolicy, TaskContext, TaskPolicy, Worker

__all__ = [
    "BridgeConfig",
    "BridgeConfigError",
    "BridgeError",
    "DatabaseError",
    "LocalQueue",
    "LocalTask",
    "OutboxEntry",
    "QueueCounts",
    "Retry",
    "RetryPolicy",
    "SchemaError",
    "TaskContext",
    "TaskNotHeldError",
    "TaskPolicy",
    "ValidationError",
    "Worker",
    "__version__",
    "forget_once_keys",
    "record_once",
]
