"""The worker room: runs handlers on tasks from the local queue and outlives what they do.

``service.Worker`` is the whole worker; ``core.WorkerCore`` decides how each task
ends; ``threads`` and ``asyncio_engine`` are the two ways of running handlers (the
latter with ``handler_loop``); ``time_limits`` keeps the thread engine's limits;
``process_pool`` runs one call in a handler process and ``outcome`` says what a
call came to; ``handlers``, ``retry`` and ``heartbeats`` are what every engine shares.
"""

from .asyncio_engine import AsyncTaskContext
from .core import WorkerExit
from .handlers import TaskContext, TaskPolicy, load_handler
from .process_pool import PoolOptions
from .retry import Retry, RetryPolicy
from .service import Worker

__all__ = [
    "AsyncTaskContext",
    "PoolOptions",
    "Retry",
    "RetryPolicy",
    "TaskContext",
    "TaskPolicy",
    "Worker",
    "WorkerExit",
    "load_handler",
]
