"""Quirk-free models of what the server returns.

The server sends ids as ``"1"`` or ``1``, ``is_active`` as ``1``/``0``, naive
timestamps in its own clock (UTC on the reference deployment), empty params as
``[]`` and, on some rows, JSON columns as strings. ``from_json`` turns all of
that into one shape: ``int`` ids, ``bool`` flags, aware UTC datetimes, dicts.

Models also answer ``model["field"]`` because the original specification's
examples use ``task["id"]``, ``task["params"]``, ``result["id"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from .exceptions import TaskManagerProtocolError


def _protocol_error(message: str, data: Any) -> TaskManagerProtocolError:
    return TaskManagerProtocolError(
        200, message, data if isinstance(data, Mapping) else None, raw_text=repr(data)[:200]
    )


def to_int(value: Any, what: str = "id") -> int:
    """The server's ids and counters as ``int``, whether sent as number or string."""
    if isinstance(value, bool):
        raise _protocol_error(f"{what} is a boolean: {value!r}", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _protocol_error(f"{what} is not an integer: {value!r}", value)


def to_optional_int(value: Any, what: str) -> int | None:
    return None if value is None else to_int(value, what)


def to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def to_datetime(value: Any) -> datetime | None:
    """``"2026-11-28 12:32:26"`` (server clock, UTC) or Unix seconds -> aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _protocol_error(f"unreadable timestamp {value!r}", value) from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def to_object(value: Any, what: str = "params") -> dict[str, Any]:
    """A JSON object column: dict, JSON text, or PHP's ``[]`` for an empty one."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise _protocol_error(f"{what} is not JSON: {value[:80]!r}", value) from None
    if value is None or value == []:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, list):  # PHP encodes {"0": a, "1": b} as [a, b]
        return {str(index): item for index, item in enumerate(value)}
    raise _protocol_error(f"{what} is not an object: {value!r}", value)


def to_optional_object(value: Any, what: str) -> dict[str, Any] | None:
    return None if value is None else to_object(value, what)


def as_object(data: Any, model: str) -> Mapping[str, Any]:
    """The answer must be a JSON object; anything else is a protocol error."""
    if not isinstance(data, Mapping):
        raise _protocol_error(f"{model} answer is not an object: {data!r:.80}", data)
    return data


def require(data: Mapping[str, Any], key: str, model: str) -> Any:
    if key not in data:
        raise _protocol_error(f"{model} answer has no {key!r}", data)
    return data[key]


def to_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _protocol_error(f"{what} is not text: {value!r:.80}", value)
    return value


def to_optional_text(value: Any, what: str) -> str | None:
    return None if value is None else to_text(value, what)


class _ItemAccess:
    """``model["field"]`` for the specification's dict-style examples; nothing more."""

    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True)
class TaskType(_ItemAccess):
    """A registered task type. ``created`` is set only on a register answer."""

    id: int
    name: str
    version: str
    param_schema: dict[str, Any]
    is_active: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created: bool | None = None

    @classmethod
    def from_json(cls, data: Any) -> TaskType:
        data = as_object(data, "task type")
        return cls(
            id=to_int(require(data, "id", "task type"), "task type id"),
            name=to_text(require(data, "name", "task type"), "task type name"),
            version=str(data.get("version", "")),
            param_schema=to_object(data.get("param_schema"), "param_schema"),
            is_active=to_bool(data.get("is_active", True)),
            created_at=to_datetime(data.get("created_at")),
            updated_at=to_datetime(data.get("updated_at")),
            created=bool(data["created"]) if "created" in data else None,
        )


@dataclass(frozen=True)
class Task(_ItemAccess):
    """A task as ``GET /tasks/{id}`` shows it.

    Rows from ``GET /tasks`` (list) carry no params, result or error: those
    fields are ``None`` there.
    """

    id: int
    type: str
    status: str
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    priority: int = 0
    progress: int = 0
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    completed_at: datetime | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Any) -> Task:
        data = as_object(data, "task")
        return cls(
            id=to_int(require(data, "id", "task"), "task id"),
            type=to_text(require(data, "type", "task"), "task type"),
            status=to_text(require(data, "status", "task"), "task status"),
            params=to_optional_object(data.get("params"), "params"),
            result=to_optional_object(data.get("result"), "result"),
            error_message=to_optional_text(data.get("error_message"), "error_message"),
            priority=to_optional_int(data.get("priority"), "priority") or 0,
            progress=to_optional_int(data.get("progress"), "progress") or 0,
            attempts=to_optional_int(data.get("attempts"), "attempts") or 0,
            claimed_by=to_optional_text(data.get("claimed_by"), "claimed_by"),
            claimed_at=to_datetime(data.get("claimed_at")),
            completed_at=to_datetime(data.get("completed_at")),
            created_at=to_datetime(data.get("created_at")),
        )


@dataclass(frozen=True)
class ClaimedTask(_ItemAccess):
    """A task this client just claimed.

    ``worker_id`` is the id that holds the claim; ``claimed_at`` is the local
    clock when the answer arrived, the start of the server's lease (the claim
    answer carries no timestamp, and our clock is the safe side to count from).
    """

    id: int
    type: str
    params: dict[str, Any]
    attempts: int
    priority: int
    worker_id: str
    claimed_at: datetime

    @classmethod
    def from_json(cls, data: Any, *, worker_id: str, claimed_at: datetime) -> ClaimedTask:
        data = as_object(data, "claim")
        return cls(
            id=to_int(require(data, "id", "claim"), "task id"),
            type=to_text(require(data, "type", "claim"), "task type"),
            params=to_object(data.get("params"), "params"),
            attempts=to_optional_int(data.get("attempts"), "attempts") or 1,
            priority=to_optional_int(data.get("priority"), "priority") or 0,
            worker_id=worker_id,
            claimed_at=claimed_at,
        )


@dataclass(frozen=True)
class CreatedTask(_ItemAccess):
    """The answer to ``POST /tasks``: a new task, or the existing one it deduplicated to."""

    id: int
    status: str
    deduplicated: bool
    dedupe_key: str | None = None
    type: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> CreatedTask:
        data = as_object(data, "create")
        return cls(
            id=to_int(require(data, "id", "create"), "task id"),
            status=to_text(data.get("status", ""), "task status"),
            deduplicated=to_bool(data.get("deduplicated", False)),
            dedupe_key=to_optional_text(data.get("dedupe_key"), "dedupe_key"),
            type=to_optional_text(data.get("type"), "task type"),
        )


@dataclass(frozen=True)
class CompletionResult(_ItemAccess):
    """The outcome of ``complete``/``fail``.

    ``status`` is ``completed``, ``failed`` or ``pending (retry)`` (a failure
    the server will hand out again). ``settled_by_read`` is True when the
    server answered 400/403 and a read of the task showed that this very
    outcome had already been applied (a replay after a lost answer).
    """

    id: int
    status: str
    settled_by_read: bool = False

    @property
    def will_retry(self) -> bool:
        return self.status.startswith("pending")

    @classmethod
    def from_json(cls, data: Any) -> CompletionResult:
        data = as_object(data, "complete")
        return cls(
            id=to_int(require(data, "id", "complete"), "task id"),
            status=to_text(require(data, "status", "complete"), "task status"),
        )
