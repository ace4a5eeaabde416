"""Queries of the small tables: the task-type cache and the bridge's own state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from ..models import CachedTaskType
from ..schema import bridge_state, task_types
from .connector import Connector

# The daemon's facts in ``bridge_state``, written by the daemon, read by operators.
WORKER_ID_KEY = "remote_worker_id"
LAST_CONTACT_KEY = "last_contact"
OUTAGE_SINCE_KEY = "outage_since"
LAST_TICK_KEY = "last_tick"


def _upsert(conn: Connection, table: Table, key: str, values: dict[str, Any], *update: str) -> None:
    """INSERT, or UPDATE ``update`` columns of the row with the same ``key`` (one statement)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c[key]], set_={name: statement.excluded[name] for name in update}
    )
    conn.execute(statement)


def upsert_task_type(
    conn: Connection,
    name: str,
    remote_id: int | None,
    version: str | None,
    schema: dict[str, Any] | None,
    now: datetime,
    *,
    keep_remote_id: bool = False,
) -> None:
    """Cache a type's version and schema; ``keep_remote_id`` leaves a known id alone (a
    registration queued offline knows no id yet, and must not erase the one we have)."""
    changed = ["version", "param_schema", "updated_at"]
    if not keep_remote_id:
        changed.append("remote_id")
    values = {
        "name": name,
        "remote_id": remote_id,
        "version": version,
        "param_schema": schema,
        "updated_at": now,
    }
    _upsert(conn, task_types, "name", values, *changed)


class StateQueries:
    """Reads and writes of ``task_types`` and ``bridge_state``."""

    db: Connector

    def cache_task_type(
        self,
        name: str,
        remote_id: int | None,
        version: str | None,
        schema: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        with self.db.write() as conn:
            upsert_task_type(conn, name, remote_id, version, schema, now)

    def cached_task_type(self, name: str) -> CachedTaskType | None:
        with self.db.read() as conn:
            row = (
                conn.execute(select(task_types).where(task_types.c.name == name)).mappings().first()
            )
        if row is None:
            return None
        return CachedTaskType(row["name"], row["remote_id"], row["version"], row["param_schema"])

    def get_state(self, key: str) -> str | None:
        with self.db.read() as conn:
            value = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == key)
            ).scalar()
        return str(value) if value is not None else None

    def set_state(self, key: str, value: str, now: datetime) -> None:
        with self.db.write() as conn:
            row = {"key": key, "value": value, "updated_at": now}
            _upsert(conn, bridge_state, "key", row, "value", "updated_at")
