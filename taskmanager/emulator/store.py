"""The emulator's state: task types and tasks in SQLite, each operation atomic.

One connection behind one lock: every operation, a claim included, runs alone,
which is what the real server's row lock guarantees (two claimers never get the
same task). Errors are ``ApiError`` carrying the status and text the real
server sends; ``app`` wraps them in its envelope.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..dedupe import php_json
from ..validation import STORED_MAX_BYTES
from .validator import validate

SORT_FIELDS = ("created_at", "priority", "id", "attempts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_types (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    version TEXT NOT NULL,
    param_schema TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type_id INTEGER NOT NULL REFERENCES task_types(id),
    status TEXT NOT NULL DEFAULT 'pending',
    params TEXT NOT NULL,
    dedupe_key TEXT NOT NULL UNIQUE,
    result TEXT,
    error_message TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_at REAL,
    completed_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_claimable ON tasks(type_id, status, created_at, id);
"""


class ApiError(Exception):
    """An error answer: HTTP status, the server's ``error`` text, optional ``details``."""

    def __init__(self, status: int, error: str, details: list[str] | None = None) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.details = details


def data_too_long(column: str) -> str:
    """The server's 500 text when MariaDB refuses a value longer than its TEXT column."""
    return (
        "SQLSTATE[22001]: String data, right truncated: 1406 Data too long for column "
        f"'{column}' at row 1"
    )


def _stored(text: str, column: str) -> str:
    """``text`` if the server's column can hold it (65,535 bytes of UTF-8), else its 500."""
    if len(text.encode("utf-8", "surrogatepass")) > STORED_MAX_BYTES:
        raise ApiError(500, data_too_long(column))
    return text


def server_time(epoch: float | None) -> str | None:
    """The server's naive ``YYYY-MM-DD HH:MM:SS`` in its clock (UTC)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def whole_seconds(epoch: float) -> int:
    """A time as the server's DATETIME column keeps it: to the second, fraction dropped.

    So tasks created within one second tie on ``created_at``, as on the server.
    """
    return math.floor(epoch)


def _is_php_list(value: Any) -> bool:
    """True when PHP's json_decode(assoc) would make a list of it (so 'not an object')."""
    if isinstance(value, list):
        return True
    return isinstance(value, dict) and all(k == str(i) for i, k in enumerate(value))


class EmulatorStore:
    """All task-type and task operations of the API, against one SQLite database."""

    def __init__(
        self,
        path: str = ":memory:",
        *,
        claim_timeout: float = 300.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.claim_timeout = claim_timeout
        self.max_attempts = max_attempts
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
        return row

    # -- task types ----------------------------------------------------------------
    def register_type(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("name", "version", "param_schema"):
            if body.get(name) in (None, ""):
                raise ApiError(400, f"Missing required field: {name}")
        schema = body["param_schema"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError:
                raise ApiError(400, "Invalid JSON in param_schema") from None
        if not isinstance(schema, dict) or "type" not in schema:
            raise ApiError(400, "Invalid param_schema: must be an object with a 'type' field")
        name, version, now = str(body["name"]), str(body["version"]), self.clock()
        with self._lock:
            existing = self._one("SELECT id FROM task_types WHERE name = ?", name)
            if existing is not None:
                self._db.execute(
                    "UPDATE task_types SET version = ?, param_schema = ?, is_active = 1, "
                    "updated_at = ? WHERE id = ?",
                    (version, php_json(schema), now, existing["id"]),
                )
                return {"id": existing["id"], "name": name, "version": version, "updated": True}
            cursor = self._db.execute(
                "INSERT INTO task_types (name, version, param_schema, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, version, php_json(schema), now, now),
            )
            return {"id": str(cursor.lastrowid), "name": name, "version": version, "created": True}

    def _type_row(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "version": row["version"],
            "param_schema": json.loads(row["param_schema"]),
            "is_active": row["is_active"],
            "created_at": server_time(row["created_at"]),
            "updated_at": server_time(row["updated_at"]),
        }

    def get_type(self, name: str) -> dict[str, Any]:
        with self._lock:
            row = self._one("SELECT * FROM task_types WHERE name = ?", name)
        items = [self._type_row(row)] if row is not None else []
        return {"items": items, "count": len(items)}

    def list_types(self, active_only: bool) -> dict[str, Any]:
        sql = "SELECT * FROM task_types" + (" WHERE is_active = 1" if active_only else "")
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY name").fetchall()
        items = [self._type_row(row) for row in rows]
        return {"items": items, "count": len(items)}

    def set_type_active(self, name: str, active: bool) -> None:
        """Not an API operation: lets tests reach the 'inactive type' answer."""
        with self._lock:
            self._db.execute(
                "UPDATE task_types SET is_active = ? WHERE name = ?", (int(active), name)
            )

    # -- tasks -------------------------------------------------------------------------
    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("type") in (None, ""):
            raise ApiError(400, "Missing required field: type")
        if "params" not in body:
            raise ApiError(400, "Missing required field: params")
        params = body["params"]
        if not isinstance(params, dict) or not params or _is_php_list(params):
            raise ApiError(400, "Validation failed", ["Field 'params' must be of type object"])
        type_name = str(body["type"])
        with self._lock:
            task_type = self._one("SELECT * FROM task_types WHERE name = ?", type_name)
            if task_type is None:
                raise ApiError(404, "Task type not found")
            if not task_type["is_active"]:
                raise ApiError(400, "Task type is not active")
            errors = validate(params, json.loads(task_type["param_schema"]))
            if errors:
                raise ApiError(400, "Parameter validation failed: " + ", ".join(errors))
            encoded = _stored(php_json(params), "params_json")
            key = hashlib.sha256((type_name + "\0" + encoded).encode("utf-8")).hexdigest()
            existing = self._one("SELECT id, status FROM tasks WHERE dedupe_key = ?", key)
            if existing is not None:
                return {
                    "id": existing["id"],
                    "status": existing["status"],
                    "deduplicated": True,
                    "message": "Task already exists (deduplicated)",
                }
            cursor = self._db.execute(
                "INSERT INTO tasks (type_id, params, dedupe_key, priority, created_at) "
                "VALUES (?, ?, ?, 0, ?)",
                (task_type["id"], encoded, key, whole_seconds(self.clock())),
            )
        return {
            "id": str(cursor.lastrowid),
            "type": type_name,
            "status": "pending",
            "dedupe_key": key,
            "message": "Task created successfully",
        }

    def claim(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The claimed task, or ``None`` when nothing is claimable."""
        if body.get("worker_id") in (None, ""):
            raise ApiError(400, "Missing required field: worker_id")
        if body.get("task_type_id") in (None, ""):
            raise ApiError(400, "Missing required field: task_type_id")
        type_id = body["task_type_id"]
        if isinstance(type_id, str) and type_id.isdigit():
            type_id = int(type_id)
        if isinstance(type_id, bool) or not isinstance(type_id, int) or type_id <= 0:
            raise ApiError(400, "task_type_id must be a positive integer")
        sort_by = body.get("sort_by") or "created_at"
        sort_order = str(body.get("sort_order") or "ASC").upper()
        if sort_by not in SORT_FIELDS:
            raise ApiError(400, f"Invalid sort_by field. Allowed: {', '.join(SORT_FIELDS)}")
        if sort_order not in ("ASC", "DESC"):
            raise ApiError(400, "Invalid sort_order. Allowed: ASC, DESC")
        pattern = body.get("type_pattern")
        with self._lock:
            now = self.clock()
            # Two candidates, each an index seek (an OR of both made every claim scan and
            # sort the whole table): the first pending task and the first expired claim.
            base = (
                f"SELECT t.id, tt.name AS type, t.{sort_by} AS sort_key FROM tasks t "
                "JOIN task_types tt ON tt.id = t.type_id WHERE t.type_id = ? AND "
            )
            tail = " AND tt.name LIKE ?" if pattern else ""
            tail += f" ORDER BY t.{sort_by} {sort_order}, t.id {sort_order} LIMIT 1"
            extra = [str(pattern)] if pattern else []
            candidates = [
                self._one(base + "t.status = 'pending'" + tail, type_id, *extra),
                self._one(
                    base + "t.status = 'claimed' AND t.claimed_at < ?" + tail,
                    type_id,
                    now - self.claim_timeout,
                    *extra,
                ),
            ]
            found = [c for c in candidates if c is not None]
            row = (min if sort_order == "ASC" else max)(
                found, key=lambda c: (c["sort_key"], c["id"]), default=None
            )
            if row is None:
                return None
            self._db.execute(
                "UPDATE tasks SET status = 'claimed', claimed_by = ?, claimed_at = ?, "
                "attempts = attempts + 1 WHERE id = ?",
                (str(body["worker_id"]), now, row["id"]),
            )
            task = self._one("SELECT * FROM tasks WHERE id = ?", row["id"])
        assert task is not None
        return {
            "id": task["id"],
            "type": row["type"],
            "params": json.loads(task["params"]),
            "attempts": task["attempts"],
            "priority": task["priority"],
            "message": "Task claimed successfully",
        }

    def _held_task(self, task_id: int, worker_id: Any) -> sqlite3.Row:
        """The task if it is claimed by ``worker_id``; the server's 404/400/403 otherwise."""
        task = self._one("SELECT * FROM tasks WHERE id = ?", task_id)
        if task is None:
            raise ApiError(404, "Task not found")
        if task["status"] != "claimed":
            raise ApiError(400, "Task is not in claimed state")
        if task["claimed_by"] != worker_id:
            raise ApiError(403, "Task is claimed by another worker")
        return task

    def progress(self, task_id: int, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("worker_id", "progress"):
            if body.get(name) in (None, ""):
                raise ApiError(400, f"Missing required field: {name}")
        value = body["progress"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ApiError(400, "Progress must be an integer between 0 and 100")
        with self._lock:
            self._held_task(task_id, body["worker_id"])
            self._db.execute("UPDATE tasks SET progress = ? WHERE id = ?", (value, task_id))
        return {
            "id": str(task_id),
            "progress": value,
            "message": "Task progress updated successfully",
        }

    def complete(self, task_id: int, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("worker_id") in (None, ""):
            raise ApiError(400, "Missing required field: worker_id")
        if not isinstance(body.get("success"), bool):
            raise ApiError(400, "Missing required field: success")
        with self._lock:
            task = self._held_task(task_id, body["worker_id"])
            now = self.clock()
            if body["success"]:
                result = body.get("result")
                stored = _stored(php_json(result), "result_json") if result is not None else None
                self._db.execute(
                    "UPDATE tasks SET status = 'completed', result = ?, completed_at = ? "
                    "WHERE id = ?",
                    (stored, now, task_id),
                )
                status = "completed"
            else:
                error = _stored(str(body.get("error") or "Task failed"), "error_message")
                if task["attempts"] < self.max_attempts:
                    self._db.execute(
                        "UPDATE tasks SET status = 'pending', claimed_by = NULL, "
                        "error_message = ? WHERE id = ?",
                        (error, task_id),
                    )
                    status = "pending (retry)"
                else:
                    self._db.execute(
                        "UPDATE tasks SET status = 'failed', error_message = ?, completed_at = ? "
                        "WHERE id = ?",
                        (error, now, task_id),
                    )
                    status = "failed"
        return {"id": str(task_id), "status": status, "message": "Task completed"}

    def get_task(self, task_id: int) -> dict[str, Any]:
        with self._lock:
            row = self._one(
                "SELECT t.*, tt.name AS type FROM tasks t JOIN task_types tt ON tt.id = t.type_id "
                "WHERE t.id = ?",
                task_id,
            )
        if row is None:
            return {"items": [], "count": 0}
        item = {
            "id": row["id"],
            "type": row["type"],
            "status": row["status"],
            "params": json.loads(row["params"]),
            "result": json.loads(row["result"]) if row["result"] is not None else None,
            "error_message": row["error_message"],
            "priority": row["priority"],
            "progress": row["progress"],
            "attempts": row["attempts"],
            "claimed_by": row["claimed_by"],
            "claimed_at": server_time(row["claimed_at"]),
            "completed_at": server_time(row["completed_at"]),
            "created_at": server_time(row["created_at"]),
        }
        return {"items": [item], "count": 1}

    def count_tasks(self, status: str | None = None) -> int:
        """Not an API operation: how many tasks (with that status) exist, for tests and demos."""
        sql, args = "SELECT COUNT(*) FROM tasks", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def list_tasks(
        self, status: str | None, type_pattern: str | None, limit: int, offset: int
    ) -> dict[str, Any]:
        sql = (
            "SELECT t.id, tt.name AS type, t.status, t.priority, t.progress, t.attempts, "
            "t.claimed_by, t.created_at, t.completed_at "
            "FROM tasks t JOIN task_types tt ON tt.id = t.type_id WHERE 1 = 1"
        )
        args: list[Any] = []
        if status:
            sql += " AND t.status = ?"
            args.append(status)
        if type_pattern:
            sql += " AND tt.name LIKE ?"
            args.append(type_pattern)
        # The server orders by created_at DESC only; within one second the measured
        # order is ascending ids, which is what is reproduced here (not a guarantee).
        sql += " ORDER BY t.created_at DESC, t.id ASC LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        items = [
            {
                **{
                    k: row[k]
                    for k in (
                        "id",
                        "type",
                        "status",
                        "priority",
                        "progress",
                        "attempts",
                        "claimed_by",
                    )
                },
                "created_at": server_time(row["created_at"]),
                "completed_at": server_time(row["completed_at"]),
            }
            for row in rows
        ]
        return {"items": items, "count": len(items)}
