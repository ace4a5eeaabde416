"""Queries of the small tables: the task-type cache and the bridge's own state."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, select, text
from sqlalchemy.dialects import postgresql, sqlite

from ..models import CachedTaskType
from .connector import Connector
from .schema import bridge_state, task_types

# The daemon's facts in ``bridge_state``, written by the daemon, read by operators.
WORKER_ID_KEY = "remote_worker_id"
LAST_CONTACT_KEY = "last_contact"
CONTACT_KEY = "contact"  # the daemon's contact state since it started (bridge.contact)
LAST_TICK_KEY = "last_tick"
CLAIM_PLAN_KEY = "claim_plan:"  # + task type: the claim limit, its inputs and reason (JSON)
CLAIM_INTENT_KEY = "claim_intent:"  # + a random id: claims asked for, not yet all recorded
FOREIGN_CLAIMS_KEY = "foreign_claims"  # claims by our worker id that no intent of ours explains
QUEUE_ID_KEY = "queue_id"  # this queue database's own random id (local tasks' idempotency keys)


@dataclass(frozen=True)
class ClaimIntent:
    """Claims of a type this bridge asked for and may not have recorded: written before
    the requests (one per request that can be in flight at once), kept for those whose
    answer may be lost. Only such an intent lets reconcile import a claim made with our
    worker id (another bridge may share it)."""

    key: str
    task_type: str
    opened_at: datetime  # local clock, before the first request: the lease's safe start
    count: int = 1  # how many claims it can still explain


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

    def open_claim_intent(self, task_type: str, now: datetime, count: int = 1) -> str:
        key = CLAIM_INTENT_KEY + uuid.uuid4().hex
        self.set_claim_intent(ClaimIntent(key, task_type, now, count), now)
        return key

    def set_claim_intent(self, intent: ClaimIntent, now: datetime) -> None:
        """Keep the intent with its count, or delete it when it explains nothing more."""
        if intent.count <= 0:
            self.delete_state(intent.key)
            return
        value = {"type": intent.task_type, "opened_at": intent.opened_at.isoformat()}
        self.set_state(intent.key, json.dumps({**value, "count": intent.count}), now)

    def claim_intents(self) -> list[ClaimIntent]:
        """Open intents, oldest first."""
        intents = []
        for suffix, value in self.states_with_prefix(CLAIM_INTENT_KEY).items():
            data = json.loads(value)
            opened = datetime.fromisoformat(data["opened_at"])
            key = CLAIM_INTENT_KEY + suffix
            intents.append(ClaimIntent(key, data["type"], opened, int(data.get("count", 1))))
        return sorted(intents, key=lambda intent: intent.opened_at)

    def states_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every key starting with ``prefix`` (the prefix cut off) and its value."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(bridge_state.c.key, bridge_state.c.value).where(
                    bridge_state.c.key.startswith(prefix, autoescape=True)
                )
            ).all()
        return {key[len(prefix) :]: str(value) for key, value in rows}

    def delete_state(self, key: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(bridge_state).where(bridge_state.c.key == key))

    def queue_identity(self, now: datetime) -> str:
        """This queue database's random id, made on first use and kept for good: what
        tells its local-only task 5 from another queue's task 5."""
        with self.db.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            row = {"key": QUEUE_ID_KEY, "value": uuid.uuid4().hex, "updated_at": now}
            conn.execute(dialect.insert(bridge_state).values(**row).on_conflict_do_nothing())
            value = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == QUEUE_ID_KEY)
            ).scalar_one()
        return str(value)

    def hold_role(
        self, key: str, holder: str, now: datetime, may_take: Callable[[str], bool]
    ) -> str:
        """Who holds the role ``key`` after this call, in one transaction: ``holder`` when
        nobody did, or when ``may_take(current)`` says the current holder is this one or
        gone; else the current holder, unchanged. Two callers at once are serialised
        (SQLite's write lock; on PostgreSQL an advisory lock on the key)."""
        with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            current = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == key)
            ).scalar()
            if current is not None and not may_take(str(current)):
                return str(current)
            row = {"key": key, "value": holder, "updated_at": now}
            _upsert(conn, bridge_state, "key", row, "value", "updated_at")
        return holder

    def release_role(self, key: str, is_mine: Callable[[str], bool]) -> None:
        """Give the role up, if it is still the caller's (another may have taken it)."""
        with self.db.write() as conn:
            current = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == key)
            ).scalar()
            if current is not None and is_mine(str(current)):
                conn.execute(delete(bridge_state).where(bridge_state.c.key == key))

    def keep_first_state(self, key: str, value: str, now: datetime) -> str:
        """``value`` under ``key`` unless a value is there already; the value kept."""
        with self.db.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            row = {"key": key, "value": value, "updated_at": now}
            conn.execute(dialect.insert(bridge_state).values(**row).on_conflict_do_nothing())
            kept = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == key)
            ).scalar_one()
        return str(kept)

    def set_state(self, key: str, value: str, now: datetime) -> None:
        with self.db.write() as conn:
            row = {"key": key, "value": value, "updated_at": now}
            _upsert(conn, bridge_state, "key", row, "value", "updated_at")


class ThrottledState:
    """Writes a key at most every ``every`` (unless forced): the jobs note their state on
    every tick, and the database need not see each one."""

    def __init__(self, store: StateQueries, every: timedelta = timedelta(seconds=5)) -> None:
        self.store = store
        self.every = every
        self._written: dict[str, datetime] = {}

    def write(self, key: str, value: str, now: datetime, *, force: bool = False) -> None:
        last = self._written.get(key)
        if force or last is None or now - last >= self.every:
            self.store.set_state(key, value, now)
            self._written[key] = now
