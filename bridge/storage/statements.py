"""The worker's hot-path statements, compiled once and run straight on the driver.

Written with SQLAlchemy Core and compiled by the engine's own dialect, then run
on the DBAPI cursor of the connection the surrounding transaction holds, with
values converted by SQLAlchemy's own type processors (JSON, UTC datetimes):
SQLAlchemy's per-execution machinery would cost more than the SQL itself
(figures in docs/BENCHMARKS.md). One executor for both databases; every other
query goes through plain SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Dialect

from ..models import LocalTask
from ..schema import IS_PENDING_PROGRESS, IS_QUEUED, outbox, tasks

# In LocalTask's field order, so a returned row builds a task positionally.
TASK_COLUMNS = [tasks.c[name] for name in LocalTask.__dataclass_fields__]
Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class Result:
    rows: list[list[Any]]
    rowcount: int

    def first(self) -> list[Any] | None:
        return self.rows[0] if self.rows else None

    def one(self) -> list[Any]:
        if len(self.rows) != 1:
            raise RuntimeError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class Statement:
    """One Core statement, compiled for a dialect, run on the DBAPI connection."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        names = (
            list(compiled.positiontup)
            if compiled.positional
            else list(compiled.bind_names.values())
        )
        by_name = {name: bind for bind, name in compiled.bind_names.items()}

        def processor(name: str) -> Processor | None:
            return by_name[name].type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[no-any-return]

        # Per parameter, once: either the caller's value to convert (our bindparams) or
        # a literal the statement itself carries, converted here and never again.
        self._plan: list[tuple[str, Processor | None, Any]] = []
        for name in names:
            bind, process = by_name[name], processor(name)
            if bind.required:
                self._plan.append((name, process, None))
            else:
                value = bind.value
                literal = process(value) if process is not None and value is not None else value
                self._plan.append(("", None, literal))
        self._names = names
        self._positional = compiled.positional
        columns = statement.selected_columns if statement.is_select else statement._returning
        self._returns = bool(columns)
        # Only the columns whose values need converting (JSON, datetimes), by position.
        self._converters = [
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
        ]

    def _parameters(self, values: Mapping[str, Any]) -> Any:
        converted = []
        for name, process, literal in self._plan:
            if not name:
                converted.append(literal)
                continue
            try:
                value = values[name]
            except KeyError:
                raise KeyError(f"statement parameter {name!r} was not given") from None
            converted.append(process(value) if process is not None and value is not None else value)
        if self._positional:
            return converted
        return dict(zip(self._names, converted, strict=True))

    def run(self, conn: Connection, values: Mapping[str, Any]) -> Result:
        """Execute inside ``conn``'s current transaction (SQLAlchemy's, or the store's
        own on SQLite's hot path)."""
        driver = conn.connection.driver_connection
        cursor = driver.execute(self.sql, self._parameters(values))  # type: ignore[union-attr]
        try:
            rows: list[list[Any]] = []
            if self._returns:
                for raw in cursor.fetchall():
                    row = list(raw)
                    for index, process in self._converters:
                        if row[index] is not None:
                            row[index] = process(row[index])
                    rows.append(row)
            return Result(rows, cursor.rowcount)
        finally:
            cursor.close()


class Prepared:
    """The hot path's statements for one dialect, built once per store."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.postgresql = dialect.name == "postgresql"
        p = bindparam
        self._lease_ok = or_(
            tasks.c.lease_expires_at.is_(None), tasks.c.lease_expires_at > p("p_lease_floor")
        )
        self._dequeue: dict[int, Statement] = {}
        # The claim token: still running, same holder, same local attempt.
        held = and_(
            tasks.c.id == p("p_id"),
            tasks.c.status == "running",
            tasks.c.locked_by == p("p_holder"),
            tasks.c.attempts == p("p_attempts"),
        )
        released = {"locked_by": None, "locked_until": None}

        def prepare(statement: Any) -> Statement:
            return Statement(statement, dialect)

        self.heartbeat = prepare(update(tasks).where(held).values(locked_until=p("p_until")))
        self.progress = prepare(
            update(tasks).where(held).values(progress=p("p_progress"), locked_until=p("p_until"))
        )
        # RETURNING progress: a pending progress row needs superseding only if there was one.
        self.finish_done = prepare(
            update(tasks)
            .where(held)
            .values(
                status="done", finished_at=p("p_now"), result=p("p_result"), error=None, **released
            )
            .returning(tasks.c.progress)
        )
        self.finish_failed = prepare(
            update(tasks)
            .where(held)
            .values(status="failed", finished_at=p("p_now"), error=p("p_error"), **released)
            .returning(tasks.c.progress)
        )
        # Back to the queue; a queued row's locked_until, when set, is the time before which
        # it is not handed out (a delayed retry), with no holder (locked_by stays NULL).
        self.requeue_held = prepare(
            update(tasks)
            .where(held)
            .values(
                status="queued", error=p("p_error"), locked_by=None, locked_until=p("p_not_before")
            )
        )
        pending_progress = and_(outbox.c.task_id == p("p_task_id"), IS_PENDING_PROGRESS)
        self.replace_progress = prepare(
            update(outbox)
            .where(pending_progress)
            .values(
                payload=p("p_payload"),
                remote_attempt=p("p_remote_attempt"),
                remote_worker_id=p("p_remote_worker"),
                created_at=p("p_now"),
            )
        )
        self.obsolete_progress = prepare(
            update(outbox)
            .where(pending_progress)
            .values(status="obsolete", settled_at=p("p_now"), last_error=p("p_reason"))
        )
        outbox_row: dict[str, Any] = {
            name: p(name)
            for name in (
                "kind",
                "payload",
                "status",
                "attempts",
                "created_at",
                "dedupe_key",
                "task_id",
                "remote_id",
                "remote_attempt",
                "remote_worker_id",
            )
        }
        self.append = prepare(insert(outbox).values(**outbox_row))
        task_row: dict[str, Any] = {
            name: p(f"v_{name}")
            for name in (
                "type",
                "params",
                "priority",
                "status",
                "attempts",
                "progress",
                "created_at",
                "metadata",
            )
        }
        self.enqueue = prepare(insert(tasks).values(**task_row).returning(*TASK_COLUMNS))
        self.task_by_id = prepare(select(*TASK_COLUMNS).where(tasks.c.id == p("p_id")))

    def dequeue(self, type_count: int) -> Statement:
        """Lock the best queued task (of ``type_count`` named types, 0 = any): one statement."""
        statement = self._dequeue.get(type_count)
        if statement is None:
            due = or_(tasks.c.locked_until.is_(None), tasks.c.locked_until <= bindparam("p_now"))
            conditions = [IS_QUEUED, self._lease_ok, due]
            if type_count:
                conditions.append(
                    tasks.c.type.in_([bindparam(f"p_type_{i}") for i in range(type_count)])
                )
            candidate = (
                select(tasks.c.id)
                .where(*conditions)
                .order_by(tasks.c.priority.desc(), tasks.c.id)
                .limit(1)
            )
            if self.postgresql:
                candidate = candidate.with_for_update(skip_locked=True)
            statement = Statement(
                update(tasks)
                .where(tasks.c.id == candidate.scalar_subquery())
                .values(
                    status="running",
                    locked_by=bindparam("p_worker"),
                    locked_until=bindparam("p_until"),
                    attempts=tasks.c.attempts + 1,
                    started_at=bindparam("p_now"),
                )
                .returning(*TASK_COLUMNS),
                self.dialect,
            )
            self._dequeue[type_count] = statement
        return statement
