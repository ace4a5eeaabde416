"""``TaskManagerClient``: every API operation, with the server's quirks absorbed.

Callers get ``int`` ids, models instead of envelopes, ``None`` for an empty
claim queue (whether the server says 404 or its buggy 500), typed errors, and
completions that settle themselves when a replay meets "not in claimed state".
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from .config import TaskManagerConfig
from .dedupe import canonical_params, dedupe_key, php_json
from .exceptions import (
    TaskManagerConflictError,
    TaskManagerError,
    TaskManagerNotFoundError,
    TaskManagerProtocolError,
    TaskManagerServerError,
    TaskManagerValidationError,
)
from .models import ClaimedTask, CompletionResult, CreatedTask, Task, TaskType, as_object
from .transport import RateLimitInfo, RequestObserver, Transport
from .validation import check_params_shape, check_schema, compile_schema, validate_params

logger = logging.getLogger("taskmanager.client")

# Claims remembered so complete_task() knows which worker id and attempt to use;
# bounded so a client that claims forever and finishes elsewhere cannot grow.
_REMEMBERED_CLAIMS = 10_000

COMPLETION_STATUSES = ("completed", "failed")
SORT_FIELDS = ("created_at", "priority", "id", "attempts")


def _claim_queue_empty(status: int, message: str) -> bool:
    """The two answers that mean "no task": the intended 404 and the deployed server's 500."""
    text = message.lower()
    return (status == 404 and "no available tasks" in text) or (
        status == 500 and "no active transaction" in text
    )


def _same_json(left: Any, right: Any) -> bool:
    """Equal as the server would store them (PHP re-encoding, key order ignored)."""
    return php_json(canonical_params(left or {})) == php_json(canonical_params(right or {}))


@dataclass(frozen=True)
class _KnownType:
    id: int
    schema: dict[str, Any]
    validator: Any


class TaskManagerClient:
    """Thread-safe client for one TaskManager API; one keep-alive session per client.

    ``sleep``, ``clock`` and ``rng`` drive retries and back-off; ``now`` stamps
    claims. Tests pass their own to run without waiting. ``observer`` is called
    after every HTTP attempt with (method, path template, status, seconds): the
    bridge's request-latency metric hangs on it.
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
    ) -> None:
        self.config = config if config is not None else TaskManagerConfig()
        self._transport = Transport(
            self.config, session, sleep=sleep, clock=clock, rng=rng, observer=observer
        )
        self._now = now
        self._lock = threading.Lock()
        self._types: dict[str, _KnownType] = {}
        self._claims: OrderedDict[int, ClaimedTask] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> TaskManagerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TaskManagerClient(api_url={self.config.api_url!r}, worker_id={self.worker_id!r})"

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """The latest ``X-RateLimit-*`` figures, to slow down before being refused."""
        return self._transport.last_rate_limit

    def rate_limit_for(self, path: str) -> RateLimitInfo | None:
        """The ``X-RateLimit-*`` figures of ``path``'s latest answer (``"/tasks/claim"``):
        the server counts one window per client and path."""
        return self._transport.rate_limits.get(path)

    def unanswered(self, path: str) -> int:
        """Attempts on ``path`` (``"/tasks/claim"``) that got no answer so far, retried or
        not: the server may have applied each. A claim among them may be an orphan held
        by this worker id (the bridge's reconcile imports such claims)."""
        return self._transport.unanswered[path]

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._transport.request(method, path, **kwargs)

    # -- health ----------------------------------------------------------------
    def health_check(self) -> bool:
        """True when the API and its database answer healthy. Never raises."""
        try:
            data = self._request("GET", "/health", auth=False, retries=0)
        except Exception as exc:  # a probe answers yes or no, whatever broke
            logger.debug("health check failed: %s", exc)
            return False
        return isinstance(data, Mapping) and data.get("status") == "healthy"

    # -- task types --------------------------------------------------------------
    def register_task_type(
        self, name: str, version: str, param_schema: Mapping[str, Any]
    ) -> TaskType:
        """Create or update a type; the schema is checked first and cached for validation."""
        schema = check_schema(param_schema)
        data = self._request(
            "POST",
            "/task-types/register",
            body={"name": name, "version": version, "param_schema": schema},
        )
        answer = as_object(data, "register")
        registered = TaskType.from_json({**answer, "param_schema": schema, "is_active": 1})
        self._remember_type(registered.name, registered.id, schema)
        return registered

    def get_task_type(self, name: str) -> TaskType:
        """The type by name; ``TaskManagerNotFoundError`` when it is not registered."""
        data = self._request("GET", f"/task-types/{quote(name, safe='')}")
        task_type = TaskType.from_json(self._single_item(data, f"task type {name!r}"))
        self._remember_type(task_type.name, task_type.id, task_type.param_schema)
        return task_type

    def list_task_types(self, active_only: bool = False) -> list[TaskType]:
        """All types. The deployed server's endpoint is broken (500); the error says so."""
        query = {"active_only": "true"} if active_only else None
        try:
            data = self._request("GET", "/task-types", query=query)
        except TaskManagerServerError as exc:
            raise TaskManagerServerError(
                exc.status_code,
                f"GET /task-types is broken on the deployed TaskManager server ({exc.message}); "
                "look types up one by one with get_task_type(name)",
                exc.response_data,
                method=exc.method,
                url=exc.url,
                raw_text=exc.raw_text,
            ) from exc
        items = data if isinstance(data, list) else self._items(data, "task type list")
        return [TaskType.from_json(item) for item in items]

    def task_type_id(self, name: str) -> int:
        """The numeric id the claim endpoint needs, looked up once and cached."""
        with self._lock:
            known = self._types.get(name)
        return known.id if known else self.get_task_type(name).id

    def _remember_type(self, name: str, type_id: int, schema: dict[str, Any]) -> None:
        validator = compile_schema(schema) if schema else None
        with self._lock:
            self._types[name] = _KnownType(type_id, schema, validator)

    # -- tasks -------------------------------------------------------------------
    def dedupe_key(self, task_type: str, params: Mapping[str, Any]) -> str:
        """The key the server will store for these params sent through this client."""
        return dedupe_key(task_type, dict(params))

    def validate_params(self, task_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check params locally: non-empty object, and the type's schema if it is known."""
        checked = check_params_shape(params)
        with self._lock:
            known = self._types.get(task_type)
        if known is not None and known.validator is not None:
            validate_params(known.validator, task_type, checked)
        return checked

    def create_task_detailed(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> CreatedTask:
        """Create (or find, by the server's dedupe key) a task; tells which happened.

        ``priority`` is sent but the deployed server ignores it (every task gets 0).
        Safe to retry: a second identical create deduplicates to the same id.
        """
        if self.config.validate_params:
            checked = self.validate_params(task_type, params)
        else:
            checked = check_params_shape(params)
        body = {"type": task_type, "params": canonical_params(checked), "priority": priority}
        return CreatedTask.from_json(self._request("POST", "/tasks", body=body))

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
        if task_type_id is None:
            if not task_type:
                raise TaskManagerValidationError(
                    None,
                    "claim_task needs task_type (a name) or task_type_id: "
                    "the server claims one type at a time",
                )
            task_type_id = self.task_type_id(task_type)
        if sort_by is not None and sort_by not in SORT_FIELDS:
            raise TaskManagerValidationError(None, f"sort_by must be one of {SORT_FIELDS}")
        if sort_order is not None and sort_order.upper() not in ("ASC", "DESC"):
            raise TaskManagerValidationError(None, "sort_order must be ASC or DESC")
        worker = worker_id or self.worker_id
        body: dict[str, Any] = {"worker_id": worker, "task_type_id": int(task_type_id)}
        if sort_by:
            body["sort_by"] = sort_by
        if sort_order:
            body["sort_order"] = sort_order.upper()
        claimed_at = self._now()
        data = self._request("POST", "/tasks/claim", body=body, nothing_when=_claim_queue_empty)
        if data is None:
            return None
        claimed = ClaimedTask.from_json(data, worker_id=worker, claimed_at=claimed_at)
        with self._lock:
            self._claims[claimed.id] = claimed
            while len(self._claims) > _REMEMBERED_CLAIMS:
                self._claims.popitem(last=False)
        return claimed

    def update_progress(
        self,
        task_id: int,
        progress: int,
        message: str | None = None,
        worker_id: str | None = None,
    ) -> None:
        """Report 0..100 percent. It does not extend the lease (the server has no renewal)."""
        if isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= 100:
            raise TaskManagerValidationError(
                None, f"progress must be an int 0..100, got {progress!r}"
            )
        body: dict[str, Any] = {
            "worker_id": self._worker_for(task_id, worker_id),
            "progress": progress,
        }
        if message is not None:
            body["message"] = message
        self._request("POST", f"/tasks/{int(task_id)}/progress", body=body)

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
        if status not in COMPLETION_STATUSES:
            raise TaskManagerValidationError(
                None, f"status must be one of {COMPLETION_STATUSES}, got {status!r}"
            )
        success = status == "completed"
        worker = self._worker_for(task_id, worker_id)
        body: dict[str, Any] = {
            "worker_id": worker,
            "success": success,
            "result": dict(result or {}),
        }
        error_text: str | None = None
        if not success:
            error_text = error or self._error_from_result(result)
            body["error"] = error_text
        try:
            data = self._request("POST", f"/tasks/{int(task_id)}/complete", body=body)
        except TaskManagerConflictError as conflict:
            settled = self._settle_conflict(task_id, worker, success, result, error_text, conflict)
            if settled is None:
                raise
            completion = settled
        else:
            completion = CompletionResult.from_json(data)
        with self._lock:
            self._claims.pop(int(task_id), None)
        return completion

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
        data = self._request("GET", f"/tasks/{int(task_id)}")
        return Task.from_json(self._single_item(data, f"task {task_id}"))

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
        offset, seen = 0, 0
        while True:
            query: dict[str, Any] = {"limit": page_size, "offset": offset}
            if status:
                query["status"] = status
            if task_type:
                query["type"] = task_type
            data = self._request("GET", "/tasks", query=query)
            items = self._items(data, "task list")
            for item in items:
                if max_items is not None and seen >= max_items:
                    return
                seen += 1
                yield Task.from_json(item)
            if len(items) < page_size or (max_items is not None and seen >= max_items):
                return  # the last page, or all that was asked for: no request for nothing
            offset += len(items)

    # -- helpers -----------------------------------------------------------------
    def _worker_for(self, task_id: int, worker_id: str | None) -> str:
        if worker_id:
            return worker_id
        with self._lock:
            claim = self._claims.get(int(task_id))
        return claim.worker_id if claim else self.worker_id

    @staticmethod
    def _error_from_result(result: Mapping[str, Any] | None) -> str:
        if result and isinstance(result.get("error"), str) and result["error"]:
            return str(result["error"])
        return php_json(dict(result)) if result else "failed"

    @staticmethod
    def _items(data: Any, what: str) -> list[Any]:
        """The ``items`` list of a ``{"items": [...], "count": n}`` answer."""
        items = as_object(data, what).get("items")
        if not isinstance(items, list):
            raise TaskManagerProtocolError(
                200,
                f"{what} answer has no 'items' list: {data!r:.120}",
                data if isinstance(data, Mapping) else None,
            )
        return items

    def _single_item(self, data: Any, what: str) -> Any:
        """The row of a ``{"items": [row], "count": 1}`` answer; empty items mean not found."""
        items = self._items(data, what)
        if not items:
            raise TaskManagerNotFoundError(
                404, f"{what} not found (the server answered 200 with no items)", data
            )
        return items[0]

    def _settle_conflict(
        self,
        task_id: int,
        worker: str,
        success: bool,
        result: Mapping[str, Any] | None,
        error_text: str | None,
        conflict: TaskManagerConflictError,
    ) -> CompletionResult | None:
        """Read the task to tell "our outcome already landed" from "not ours any more"."""
        try:
            task = self.get_task(task_id)
        except TaskManagerError:
            return None
        conflict.current_task = task
        with self._lock:
            claim = self._claims.get(int(task_id))
        if success:
            landed = (
                task.status == "completed"
                and task.claimed_by == worker
                and _same_json(task.result, result)
            )
        else:
            moved_on = claim is not None and task.attempts > claim.attempts
            landed = task.error_message == error_text and (
                task.status in ("failed", "pending") or moved_on
            )
        if not landed:
            return None
        status = task.status if task.status in COMPLETION_STATUSES else "pending (retry)"
        return CompletionResult(id=task.id, status=status, settled_by_read=True)
