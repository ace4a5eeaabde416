"""Every API operation as steps, with the server's quirks absorbed: the clients' one core.

Callers get ``int`` ids, models instead of envelopes, ``None`` for an empty
claim queue (whether the server says 404 or its buggy 500), typed errors, and
completions that settle themselves when a replay meets "not in claimed state".
Each operation is a generator of ``exchange`` steps, so the blocking
``TaskManagerClient`` and the ``AsyncTaskManagerClient`` run the very same code
and differ only in who carries the steps out (and in how they are spelled).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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
from .exchange import Requester, RequestObserver, Steps
from .models import ClaimedTask, CompletionResult, CreatedTask, Task, TaskType, as_object
from .validation import (
    check_params_shape,
    check_schema,
    check_stored_size,
    check_type_name,
    compile_schema,
    fit_error_text,
    type_name_segment,
    validate_params,
)

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


def _single_item(data: Any, what: str) -> Any:
    """The row of a ``{"items": [row], "count": 1}`` answer; empty items mean not found."""
    items = _items(data, what)
    if not items:
        raise TaskManagerNotFoundError(
            404, f"{what} not found (the server answered 200 with no items)", data
        )
    return items[0]


def _error_from_result(result: Mapping[str, Any] | None) -> str:
    if result and isinstance(result.get("error"), str) and result["error"]:
        return str(result["error"])
    return php_json(dict(result)) if result else "failed"


class TaskPages:
    """Where ``list_tasks`` is in its paging (``limit``/``offset``), without I/O.

    Newest first; stops at a short page or at ``max_items`` without asking for
    a page it would not use.
    """

    def __init__(
        self, status: str | None, task_type: str | None, page_size: int, max_items: int | None
    ) -> None:
        self.status, self.task_type = status, task_type
        self.page_size, self.max_items = page_size, max_items
        self.offset, self.seen = 0, 0
        self.done = max_items is not None and max_items <= 0

    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = {"limit": self.page_size, "offset": self.offset}
        if self.status:
            query["status"] = self.status
        if self.task_type:
            query["type"] = self.task_type
        return query

    def take(self, data: Any) -> list[Task]:
        """The page's tasks that were asked for; marks the paging done when it is."""
        items = _items(data, "task list")
        room = len(items) if self.max_items is None else max(0, self.max_items - self.seen)
        tasks = [Task.from_json(item) for item in items[:room]]
        self.seen += len(tasks)
        self.offset += len(items)
        limit_reached = self.max_items is not None and self.seen >= self.max_items
        self.done = len(items) < self.page_size or limit_reached
        return tasks


class Calls:
    """The operations of one client and what they remember (type ids and schemas,
    recent claims), thread-safe; each public method returns the steps of one call."""

    def __init__(
        self,
        config: TaskManagerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        observer: RequestObserver | None = None,
    ) -> None:
        self.config = config
        self.requester = Requester(config, clock=clock, rng=rng, observer=observer)
        self._now = now
        self._lock = threading.Lock()
        self._types: dict[str, _KnownType] = {}
        self._claims: OrderedDict[int, ClaimedTask] = OrderedDict()

    def _request(self, method: str, path: str, **kwargs: Any) -> Steps[Any]:
        return self.requester.exchange(method, path, **kwargs)

    # -- health ----------------------------------------------------------------
    def health_check(self) -> Steps[bool]:
        try:
            data = yield from self._request("GET", "/health", auth=False, retries=0)
        except Exception as exc:  # a probe answers yes or no, whatever broke
            logger.debug("health check failed: %s", exc)
            return False
        return isinstance(data, Mapping) and data.get("status") == "healthy"

    # -- task types --------------------------------------------------------------
    def register_task_type(
        self, name: str, version: str, param_schema: Mapping[str, Any]
    ) -> Steps[TaskType]:
        check_type_name(name)
        schema = check_schema(param_schema)
        data = yield from self._request(
            "POST",
            "/task-types/register",
            body={"name": name, "version": version, "param_schema": schema},
        )
        answer = as_object(data, "register")
        registered = TaskType.from_json({**answer, "param_schema": schema, "is_active": 1})
        self._remember_type(registered.name, registered.id, schema)
        return registered

    def get_task_type(self, name: str) -> Steps[TaskType]:
        data = yield from self._request("GET", f"/task-types/{type_name_segment(name)}")
        task_type = TaskType.from_json(_single_item(data, f"task type {name!r}"))
        self._remember_type(task_type.name, task_type.id, task_type.param_schema)
        return task_type

    def list_task_types(self, active_only: bool = False) -> Steps[list[TaskType]]:
        query = {"active_only": "true"} if active_only else None
        try:
            data = yield from self._request("GET", "/task-types", query=query)
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
        items = data if isinstance(data, list) else _items(data, "task type list")
        return [TaskType.from_json(item) for item in items]

    def task_type_id(self, name: str) -> Steps[int]:
        with self._lock:
            known = self._types.get(name)
        if known is not None:
            return known.id
        task_type = yield from self.get_task_type(name)
        return task_type.id

    def _remember_type(self, name: str, type_id: int, schema: dict[str, Any]) -> None:
        validator = compile_schema(schema) if schema else None
        with self._lock:
            self._types[name] = _KnownType(type_id, schema, validator)

    # -- tasks -------------------------------------------------------------------
    def validate_params(self, task_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check params locally: non-empty object, and the type's schema if it is known."""
        checked = check_params_shape(params)
        with self._lock:
            known = self._types.get(task_type)
        if known is not None and known.validator is not None:
            validate_params(known.validator, task_type, checked)
        return checked

    def dedupe_key(self, task_type: str, params: Mapping[str, Any]) -> str:
        return dedupe_key(task_type, dict(params))

    def create_task_detailed(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> Steps[CreatedTask]:
        if self.config.validate_params:
            checked = self.validate_params(task_type, params)
        else:
            checked = check_params_shape(params)
        sent = canonical_params(checked)
        check_stored_size(sent, "params", "params_json")
        body = {"type": task_type, "params": sent, "priority": priority}
        data = yield from self._request("POST", "/tasks", body=body)
        return CreatedTask.from_json(data)

    def claim_task(
        self,
        task_type: str | None = None,
        worker_id: str | None = None,
        *,
        task_type_id: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> Steps[ClaimedTask | None]:
        if task_type_id is None:
            if not task_type:
                raise TaskManagerValidationError(
                    None,
                    "claim_task needs task_type (a name) or task_type_id: "
                    "the server claims one type at a time",
                )
            task_type_id = yield from self.task_type_id(task_type)
        if sort_by is not None and sort_by not in SORT_FIELDS:
            raise TaskManagerValidationError(None, f"sort_by must be one of {SORT_FIELDS}")
        if sort_order is not None and sort_order.upper() not in ("ASC", "DESC"):
            raise TaskManagerValidationError(None, "sort_order must be ASC or DESC")
        worker = worker_id or self.config.worker_id
        body: dict[str, Any] = {"worker_id": worker, "task_type_id": int(task_type_id)}
        if sort_by:
            body["sort_by"] = sort_by
        if sort_order:
            body["sort_order"] = sort_order.upper()
        claimed_at = self._now()
        data = yield from self._request(
            "POST", "/tasks/claim", body=body, nothing_when=_claim_queue_empty
        )
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
    ) -> Steps[None]:
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
        yield from self._request("POST", f"/tasks/{int(task_id)}/progress", body=body)

    def complete_task(
        self,
        task_id: int,
        result: Mapping[str, Any] | None = None,
        status: str = "completed",
        *,
        worker_id: str | None = None,
        error: str | None = None,
    ) -> Steps[CompletionResult]:
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
        check_stored_size(body["result"], "result", "result_json")
        error_text: str | None = None
        if not success:  # cut to fit, never refused: a failure must reach the server
            error_text = fit_error_text(error or _error_from_result(result))
            body["error"] = error_text
        try:
            data = yield from self._request("POST", f"/tasks/{int(task_id)}/complete", body=body)
        except TaskManagerConflictError as conflict:
            settled = yield from self._settle_conflict(
                task_id, worker, success, result, error_text, conflict
            )
            if settled is None:
                raise
            completion = settled
        else:
            completion = CompletionResult.from_json(data)
        with self._lock:
            self._claims.pop(int(task_id), None)
        return completion

    def get_task(self, task_id: int) -> Steps[Task]:
        data = yield from self._request("GET", f"/tasks/{int(task_id)}")
        return Task.from_json(_single_item(data, f"task {task_id}"))

    def list_page(self, pages: TaskPages) -> Steps[list[Task]]:
        """The next page of a ``list_tasks`` paging."""
        data = yield from self._request("GET", "/tasks", query=pages.query())
        return pages.take(data)

    # -- helpers -----------------------------------------------------------------
    def _worker_for(self, task_id: int, worker_id: str | None) -> str:
        if worker_id:
            return worker_id
        with self._lock:
            claim = self._claims.get(int(task_id))
        return claim.worker_id if claim else self.config.worker_id

    def _settle_conflict(
        self,
        task_id: int,
        worker: str,
        success: bool,
        result: Mapping[str, Any] | None,
        error_text: str | None,
        conflict: TaskManagerConflictError,
    ) -> Steps[CompletionResult | None]:
        """Read the task to tell "our outcome already landed" from "not ours any more"."""
        try:
            task = yield from self.get_task(task_id)
        except TaskManagerError as exc:
            conflict.read_error = exc
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
