"""Queries of the outbox: appending side effects, reading what is due, settling rows."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    null,
    or_,
    select,
    update,
)

from ..models import (
    FINAL_OUTBOX_STATUSES,
    FinalOutboxStatus,
    LocalTask,
    OutboxEntry,
    OutboxKind,
    OutboxStatus,
)
from .connector import Connector
from .schema import IS_PENDING, IS_PENDING_CREATE, UTCDateTime, outbox
from .state import upsert_task_type
from .statements import ONE, ZERO, Prepared, Statement, constant


def _type_name(rows: Any, sqlite: bool) -> Any:
    """The type a registration or a create is for; NULL for any other row. On SQLite
    the JSON paths are written into the SQL, so that the query can be prepared
    (``Statement`` sends no values of its own)."""

    def field(name: str) -> Any:
        if sqlite:
            return func.json_extract(rows.c.payload, constant(f'$."{name}"'))
        return rows.c.payload[name].as_string()

    return case(
        (rows.c.kind == constant("register_type"), field("name")),
        (rows.c.kind == constant("create_task"), field("type")),
        else_=null(),
    )


def _pending_due(sqlite: bool) -> Any:
    """``pending_outbox``'s query, built once (building it was most of a push tick's
    database time): due pending rows, none behind an earlier row that waits for its
    retry and must go first: a task's earlier row; for a registration or a create, an
    earlier registration or create of the same type, unless both are creates (the server
    deduplicates creates: they need no order, and one that keeps failing must not hold
    up the others). The push keeps the same order within a tick (``push.must_follow``)."""
    now = bindparam("p_now", type_=UTCDateTime())
    earlier = outbox.alias("earlier")
    waits = (
        earlier.c.status == constant("pending"),
        earlier.c.id < outbox.c.id,
        earlier.c.next_attempt_at > now,
    )
    task_row_waits = exists().where(earlier.c.task_id == outbox.c.task_id, *waits)
    create = constant("create_task")
    type_row_waits = and_(
        outbox.c.task_id.is_(None),
        exists().where(
            earlier.c.task_id.is_(None),
            _type_name(earlier, sqlite) == _type_name(outbox, sqlite),
            or_(earlier.c.kind != create, outbox.c.kind != create),
            *waits,
        ),
    )
    query = (
        select(outbox)
        .where(
            IS_PENDING,
            or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
            ~task_row_waits,
            ~type_row_waits,
        )
        .order_by(outbox.c.id)
        .limit(bindparam("p_limit"))
    )
    return query.offset(ZERO) if sqlite else query  # SQLite's LIMIT binds an OFFSET of 0


_PENDING_DUE = _pending_due(sqlite=False)

_SETTLE = (
    update(outbox)
    .where(
        outbox.c.id == bindparam("p_id"),
        IS_PENDING,
        # A progress row rewritten (newer progress) after the push read it stays pending:
        # what was sent is not what it holds now.
        or_(
            cast(bindparam("p_read_at", type_=UTCDateTime()), DateTime).is_(None),
            outbox.c.created_at == bindparam("p_read_at", type_=UTCDateTime()),
        ),
    )
    .values(
        status=bindparam("p_status"),
        last_error=bindparam("p_reason"),
        settled_at=bindparam("p_now"),
        attempts=outbox.c.attempts + ONE,
    )
)
_APPEND_RETURNING_ID = insert(outbox).returning(outbox.c.id)
_BACKLOG = select(func.count(), func.min(outbox.c.created_at)).where(IS_PENDING)

# (row id, final status, reason, the row's created_at as the push read it, or None)
SettledRow = tuple[int, FinalOutboxStatus, str | None, datetime | None]
Verdicts = Sequence[SettledRow]


def outbox_values(
    kind: OutboxKind,
    payload: dict[str, Any] | str,
    now: datetime,
    task: LocalTask | None,
    dedupe_key: str | None,
) -> dict[str, Any]:
    """A full outbox row: the same keys every time, so one compiled INSERT serves all."""
    return {
        "kind": kind,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "dedupe_key": dedupe_key,
        "task_id": task.id if task else None,
        "remote_id": task.remote_id if task else None,
        "remote_attempt": task.remote_attempt if task else None,
        "remote_worker_id": task.remote_worker_id if task else None,
    }


def append_for_task(
    sql: Prepared,
    conn: Any,
    kind: OutboxKind,
    payload: dict[str, Any] | str,
    now: datetime,
    task: LocalTask,
) -> None:
    """A task's side effect, in the caller's transaction (with the task's own change);
    ``payload`` as a dict or as its JSON text."""
    sql.append.run(conn, outbox_values(kind, payload, now, task, None))


def _append_id(
    conn: Connection,
    kind: OutboxKind,
    payload: dict[str, Any],
    now: datetime,
    dedupe_key: str | None = None,
) -> int:
    values = outbox_values(kind, payload, now, None, dedupe_key)
    return int(conn.execute(_APPEND_RETURNING_ID, values).scalar_one())


def _entry(conn: Connection, row_id: int) -> OutboxEntry:
    row = conn.execute(select(outbox).where(outbox.c.id == row_id)).mappings().one()
    return OutboxEntry.from_row(row)


def _dead_rows(row_ids: Sequence[int] | None) -> Any:
    statement = update(outbox).where(outbox.c.status == "dead")
    if row_ids is not None:
        statement = statement.where(outbox.c.id.in_(list(row_ids)))
    return statement


class _PushStatements:
    """The push's own reads and its verdicts, prepared (SQLite): run every few tens of
    milliseconds while results come, they cost 290, 270 and 170 us through pooled
    SQLAlchemy transactions, most of it the framing."""

    def __init__(self, dialect: Any) -> None:
        self.pending_due = Statement(_pending_due(sqlite=True), dialect)
        self.settle = Statement(_SETTLE, dialect)
        self.backlog = Statement(_BACKLOG, dialect)


class OutboxQueries:
    """Reads and writes of the ``outbox`` table not tied to a worker's task."""

    db: Connector
    sql: Prepared

    @functools.cached_property
    def _push_sql(self) -> _PushStatements:
        return _PushStatements(self.sql.dialect)

    def queue_create_task(
        self,
        task_type: str,
        params: dict[str, Any],
        priority: int,
        dedupe_key: str,
        now: datetime,
    ) -> OutboxEntry:
        """Append a remote create; a pending create with the same key is returned instead."""
        with self.db.write() as conn:
            existing = conn.execute(
                select(outbox.c.id).where(IS_PENDING_CREATE, outbox.c.dedupe_key == dedupe_key)
            ).scalar()
            if existing is None:
                payload = {"type": task_type, "params": params, "priority": priority}
                existing = _append_id(conn, "create_task", payload, now, dedupe_key)
            return _entry(conn, existing)

    def queue_register_type(
        self, name: str, version: str, schema: dict[str, Any], now: datetime
    ) -> OutboxEntry:
        """Cache the schema at once (offline validation) and append the remote register."""
        with self.db.write() as conn:
            upsert_task_type(conn, name, None, version, schema, now, keep_remote_id=True)
            payload = {"name": name, "version": version, "param_schema": schema}
            return _entry(conn, _append_id(conn, "register_type", payload, now))

    def pending_outbox(self, now: datetime, limit: int) -> list[OutboxEntry]:
        """Pending rows that are due, oldest first; none behind an earlier row that still
        waits for its retry time and must go first (a task's rows reach the server in
        order, a type's registration before its creates: see ``_pending_due``)."""
        values = {"p_now": now, "p_limit": limit}
        if not self.db.is_postgresql:  # one statement, a snapshot of its own
            statement = self._push_sql.pending_due
            with self.db.peek() as driver:
                rows = statement.run(driver, values).rows
            keys = statement.keys
            return [OutboxEntry.from_row(dict(zip(keys, row, strict=True))) for row in rows]
        with self.db.read() as conn:
            found = conn.execute(_PENDING_DUE, values).mappings()
            return [OutboxEntry.from_row(row) for row in found]

    def outbox_entries(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxEntry]:
        statement = select(outbox).order_by(outbox.c.id).limit(limit)
        if status is not None:
            statement = statement.where(outbox.c.status == status)
        with self.db.read() as conn:
            return [OutboxEntry.from_row(row) for row in conn.execute(statement).mappings()]

    def outbox_entry(self, row_id: int) -> OutboxEntry | None:
        with self.db.read() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == row_id)).mappings().first()
        return OutboxEntry.from_row(row) if row is not None else None

    def settle_outbox(
        self, row_id: int, status: FinalOutboxStatus, reason: str | None, now: datetime
    ) -> None:
        """End a pending row as delivered, superseded or dead, with its reason."""
        self.settle_outbox_many([(row_id, status, reason, None)], now)

    def settle_outbox_many(self, verdicts: Verdicts, now: datetime) -> None:
        """Record many rows' ends in one transaction (the push's batch).

        Recording after sending is safe to lose: a row sent but not recorded is
        sent again, and every kind of row replays idempotently. So on SQLite the
        commit does not wait for the disk (a power loss may undo it, a process crash
        cannot), and the next durable commit carries it there.
        """
        if not verdicts:
            return
        for _, status, _, _ in verdicts:
            if status not in FINAL_OUTBOX_STATUSES:
                raise ValueError(f"not a final outbox status: {status}")
        params = [
            {
                "p_id": row_id,
                "p_status": status,
                "p_reason": reason,
                "p_now": now,
                "p_read_at": read_at,
            }
            for row_id, status, reason, read_at in verdicts
        ]
        if not self.db.is_postgresql:
            with self.db.hot_write(durable=False) as driver:
                self._push_sql.settle.run_many(driver, params)
            return
        with self.db.write() as conn:
            conn.execute(_SETTLE, params)

    def retry_outbox_at(self, row_id: int, when: datetime, error: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row_id, outbox.c.status == "pending")
                .values(next_attempt_at=when, last_error=error, attempts=outbox.c.attempts + 1)
            )

    def requeue_outbox(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """Make dead rows (all, or the given ones) pending again, due now."""
        with self.db.write() as conn:
            return conn.execute(
                _dead_rows(row_ids).values(status="pending", next_attempt_at=now, settled_at=None)
            ).rowcount

    def discard_outbox(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """End dead rows (all, or the given ones) as superseded by the operator's decision.

        The row and its first reason stay, so the record of what was not delivered survives.
        """
        reason = "discarded by the operator; it was dead because: " + func.coalesce(
            outbox.c.last_error, ""
        )
        with self.db.write() as conn:
            return conn.execute(
                _dead_rows(row_ids).values(status="superseded", settled_at=now, last_error=reason)
            ).rowcount

    def outbox_backlog(self) -> tuple[int, datetime | None]:
        """(pending rows, creation time of the oldest)."""
        if not self.db.is_postgresql:
            with self.db.peek() as driver:
                count, oldest = self._push_sql.backlog.run(driver, {}).one()
            return int(count), oldest
        with self.db.read() as conn:
            count, oldest = conn.execute(_BACKLOG).one()
        return int(count), oldest
