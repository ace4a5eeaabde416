"""``AsyncTaskManagerClient``: every API operation as a coroutine, for asyncio programs.

The same operations as ``TaskManagerClient`` (``calls`` and ``exchange``: one
implementation of requests, quirks, validation, dedupe keys, retries and
logging), carried out with aiohttp. Arguments, returns and errors are the
blocking client's; see its methods for what each promises. Needs the extra:
``pip install "taskmanager-bridge[async]"``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .async_transport import AsyncTransport
from .calls import Calls, TaskPages
from .client_base import ClientBase
from .config import TaskManagerConfig
from .exchange import RequestObserver
from .models import ClaimedTask, CompletionResult, CreatedTask, Task, TaskType

if TYPE_CHECKING:  # aiohttp itself is imported (with a hint when missing) by async_transport
    import aiohttp


class AsyncTaskManagerClient(ClientBase):
    """One client per event loop; its coroutines may run concurrently on it.

    ``sleep`` (a coroutine function), ``clock`` and ``rng`` drive retries and
    back-off, ``now`` stamps claims, ``observer`` sees every attempt: as for
    ``TaskManagerClient``. Close it (``async with``, or ``await close()``).
    """

    def __init__(
        self,
        config: TaskManagerConfig | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        observer: RequestObserver | None = None,
    ) -> None:
        self.config = config if config is not None else TaskManagerConfig()
        self._calls = Calls(self.config, clock=clock, rng=rng, now=now, observer=observer)
        self._transport = AsyncTransport(self.config, session, sleep=sleep)
        self._run = self._transport.run

    # -- lifecycle -------------------------------------------------------------
    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncTaskManagerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the operations (see TaskManagerClient for what each promises) ----------
    async def health_check(self) -> bool:
        return await self._run(self._calls.health_check())

    async def register_task_type(
        self, name: str, version: str, param_schema: Mapping[str, Any]
    ) -> TaskType:
        return await self._run(self._calls.register_task_type(name, version, param_schema))

    async def get_task_type(self, name: str) -> TaskType:
        return await self._run(self._calls.get_task_type(name))

    async def list_task_types(self, active_only: bool = False) -> list[TaskType]:
        return await self._run(self._calls.list_task_types(active_only))

    async def task_type_id(self, name: str) -> int:
        return await self._run(self._calls.task_type_id(name))

    async def create_task_detailed(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> CreatedTask:
        return await self._run(self._calls.create_task_detailed(task_type, params, priority))

    async def create_task(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> int:
        return (await self.create_task_detailed(task_type, params, priority)).id

    async def claim_task(
        self,
        task_type: str | None = None,
        worker_id: str | None = None,
        *,
        task_type_id: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> ClaimedTask | None:
        return await self._run(
            self._calls.claim_task(
                task_type,
                worker_id,
                task_type_id=task_type_id,
                sort_by=sort_by,
                sort_order=sort_order,
            )
        )

    async def update_progress(
        self,
        task_id: int,
        progress: int,
        message: str | None = None,
        worker_id: str | None = None,
    ) -> None:
        await self._run(self._calls.update_progress(task_id, progress, message, worker_id))

    async def complete_task(
        self,
        task_id: int,
        result: Mapping[str, Any] | None = None,
        status: str = "completed",
        *,
        worker_id: str | None = None,
        error: str | None = None,
    ) -> CompletionResult:
        return await self._run(
            self._calls.complete_task(task_id, result, status, worker_id=worker_id, error=error)
        )

    async def fail_task(
        self,
        task_id: int,
        error: str,
        *,
        worker_id: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        return await self.complete_task(task_id, result, "failed", worker_id=worker_id, error=error)

    async def get_task(self, task_id: int) -> Task:
        return await self._run(self._calls.get_task(task_id))

    async def get_task_status(self, task_id: int) -> Task:
        return await self.get_task(task_id)

    async def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        *,
        page_size: int = 50,
        max_items: int | None = None,
    ) -> AsyncIterator[Task]:
        """``async for task in client.list_tasks(...)``: pages fetched as you iterate."""
        pages = TaskPages(status, task_type, page_size, max_items)
        while not pages.done:
            for task in await self._run(self._calls.list_page(pages)):
                yield task
