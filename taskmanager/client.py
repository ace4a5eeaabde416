"""``TaskManagerClient``: every API operation, blocking, for threads.

The operations themselves (requests, quirks, retries) live in ``calls`` and
``exchange``, shared with ``AsyncTaskManagerClient``; this class carries
their steps out with ``requests`` and says what each call promises.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import requests

from .calls import Calls, TaskPages
from .client_base import ClientBase
from .closing import ClosedOnExit
from .config import TaskManagerConfig
from .exceptions import TaskManagerConfigError
from .exchange import Steps
from .in_flight import run_together
from .loop_transport import LoopTransport
from .models import ClaimedTask, CompletionResult, CreatedTask, Task, TaskType
from .stdlib_transport import StdlibTransport
from .transport import RequestObserver, Transport

HttpLibrary = Literal["requests", "aiohttp", "stdlib"]
_R = TypeVar("_R")


class TaskManagerClient(ClientBase, ClosedOnExit):
    """Thread-safe client for one TaskManager API; one keep-alive session per client.

    ``sleep``, ``clock`` and ``rng`` drive retries and back-off; ``now`` stamps
    claims. Tests pass their own to run without waiting. ``observer`` is called
    after every HTTP attempt with (method, path template, status, seconds): the
    bridge's request-latency metric hangs on it. ``http="aiohttp"`` sends through
    aiohttp on an event loop of the client's own thread (the ``[async]`` extra): the
    same methods, answers and errors, with less CPU per request
    (``taskmanager.loop_transport``). ``http="stdlib"`` sends through the standard
    library's ``http.client`` in the calling thread: the least CPU a request
    (``taskmanager.stdlib_transport``; no proxies).
    """

    def __init__(
        self,
        config: TaskManagerConfig | None = None,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        observer: RequestObserver | None = None,
        http: HttpLibrary = "requests",
    ) -> None:
        self.config = config if config is not None else TaskManagerConfig()
        self._calls = Calls(self.config, clock=clock, rng=rng, now=now, observer=observer)
        self._transport: Transport | LoopTransport | StdlibTransport
        if http == "stdlib":
            if session is not None:
                raise TaskManagerConfigError('session= is for requests: not with http="stdlib"')
            self._transport = StdlibTransport(self.config, sleep=sleep)
        elif http == "aiohttp":
            if session is not None:
                raise TaskManagerConfigError('session= is for requests: not with http="aiohttp"')
            self._transport = LoopTransport(self.config, sleep)
        elif http == "requests":
            self._transport = Transport(self.config, session, sleep=sleep)
        else:
            raise TaskManagerConfigError(f'http: "requests", "aiohttp" or "stdlib", not {http!r}')
        self._run = self._transport.run

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self._transport.close()

    # -- operations as steps -----------------------------------------------------
    @property
    def calls(self) -> Calls:
        """Each API call as ``Steps`` (a generator of its requests and waits): to be run
        by ``run``, or several at once by ``run_together``, inside a caller's own
        generator that does its own work between them."""
        return self._calls

    def run(self, steps: Steps[_R]) -> _R:
        """Carry out one operation's steps in the calling thread; what the call returns."""
        return self._run(steps)

    @property
    def runs_together(self) -> bool:
        """Whether ``run_together`` keeps several requests in flight from one thread
        (``http="stdlib"``); otherwise it runs the operations one after another."""
        return isinstance(self._transport, StdlibTransport)

    def run_together(self, operations: Sequence[Steps[_R]], width: int) -> list[_R]:
        """Carry out ``operations`` in the calling thread, up to ``width`` with a request
        in flight at once (on ``http="stdlib"``; see ``taskmanager.in_flight``), each
        result in order; the first error is raised once all ended. On the other HTTP
        libraries they run one after another (use threads and ``run`` for more)."""
        if isinstance(self._transport, StdlibTransport):
            return run_together(
                self._transport, operations, width, clock=self._calls.requester.clock
            )
        results: list[_R] = []
        error: Exception | None = None
        for steps in operations:
            try:
                results.append(self._run(steps))
            except Exception as exc:  # the first is raised once all ended, as in flight
                error = error or exc
        if error is not None:
            raise error
        return results

    # -- health ----------------------------------------------------------------
    def health_check(self) -> bool:
        """True when the API and its database answer healthy. Never raises."""
        return self._run(self._calls.health_check())

    # -- task types --------------------------------------------------------------
    def register_task_type(
        self, name: str, version: str, param_schema: Mapping[str, Any]
    ) -> TaskType:
        """Create or update a type; the schema is checked first and cached for validation."""
        return self._run(self._calls.register_task_type(name, version, param_schema))

    def get_task_type(self, name: str) -> TaskType:
        """The type by name; ``TaskManagerNotFoundError`` when it is not registered."""
        return self._run(self._calls.get_task_type(name))

    def list_task_types(self, active_only: bool = False) -> list[TaskType]:
        """All types. The deployed server's endpoint is broken (500); the error says so."""
        return self._run(self._calls.list_task_types(active_only))

    def task_type_id(self, name: str) -> int:
        """The numeric id the claim endpoint needs, looked up once and cached."""
        return self._run(self._calls.task_type_id(name))

    # -- tasks -------------------------------------------------------------------
    def create_task_detailed(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> CreatedTask:
        """Create (or find, by the server's dedupe key) a task; tells which happened.

        ``priority`` is sent but the deployed server ignores it (every task gets 0).
        Safe to retry: a second identical create deduplicates to the same id.
        """
        return self._run(self._calls.create_task_detailed(task_type, params, priority))

    def create_task(self, task_type: str, params: Mapping[str, Any], priority: int = 0) -> int:
        """Create a task and return its id (see ``create_task_detailed``)."""
        return self.create_task_detailed(task_type, params, priority).id

    def claim_task(
        self,
        task_type: str | None = None,
        worker_id: str | None = None,
        *,
        task_type_id: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> ClaimedTask | None:
        """Claim the next task of a type (by name or id), or ``None`` when there is none.

        The claim is a 300 s lease (server default) that nothing renews.
        """
        return self._run(
            self._calls.claim_task(
                task_type,
                worker_id,
                task_type_id=task_type_id,
                sort_by=sort_by,
                sort_order=sort_order,
            )
        )

    def update_progress(
        self,
        task_id: int,
        progress: int,
        message: str | None = None,
        worker_id: str | None = None,
    ) -> None:
        """Report 0..100 percent. It does not extend the lease (the server has no renewal)."""
        self._run(self._calls.update_progress(task_id, progress, message, worker_id))

    def complete_task(
        self,
        task_id: int,
        result: Mapping[str, Any] | None = None,
        status: str = "completed",
        *,
        worker_id: str | None = None,
        error: str | None = None,
    ) -> CompletionResult:
        """Report success (``status="completed"``) or failure (``"failed"``).

        Without ``worker_id`` the id that claimed the task through this client
        is used, else the config's. When the server answers that the task is no
        longer ours (400/403), the task is read back: if it already shows this
        very outcome (a replay whose first answer was lost), that is success with
        ``settled_by_read=True``; otherwise ``TaskManagerConflictError`` is raised
        with ``current_task`` set.
        """
        return self._run(
            self._calls.complete_task(task_id, result, status, worker_id=worker_id, error=error)
        )

    def fail_task(
        self,
        task_id: int,
        error: str,
        *,
        worker_id: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """Report failure; the server retries it (``pending (retry)``) until 3 attempts."""
        return self.complete_task(task_id, result, "failed", worker_id=worker_id, error=error)

    def get_task(self, task_id: int) -> Task:
        """The task by id; ``TaskManagerNotFoundError`` for an unknown id (server says 200)."""
        return self._run(self._calls.get_task(task_id))

    def get_task_status(self, task_id: int) -> Task:
        """The specification's name for ``get_task``."""
        return self.get_task(task_id)

    def list_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        *,
        page_size: int = 50,
        max_items: int | None = None,
    ) -> Iterator[Task]:
        """Tasks newest first, fetched page by page (``limit``/``offset``) as you iterate.

        ``task_type`` accepts SQL LIKE patterns. Rows carry no params or result.
        Tasks created while iterating shift the pages (offset paging).
        """
        pages = TaskPages(status, task_type, page_size, max_items)
        while not pages.done:
            yield from self._run(self._calls.list_page(pages))
