"""The queue's hot-path statements, compiled once and run straight on the driver.

Profiling the worker loop showed SQLAlchemy's per-execution machinery
(execution context, result objects, events) costing several times the SQL
itself, with fsync cheap. These few statements are still written with
SQLAlchemy Core and compiled by the engine's own dialect; ``Statement.run``
then hands the compiled SQL to the DBAPI cursor of the connection the
surrounding SQLAlchemy transaction holds, converting values with SQLAlchemy's
own type processors (JSON, UTC datetimes). One executor, both databases; every
other query of the store goes through plain SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Dialect

from .schema import IS_PENDING_PROGRESS, IS_QUEUED, outbox, tasks

TASK_COLUMNS = list(tasks.columns)
Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class Result:
    rows: list[dict[str, Any]]
    rowcount: int

    def first(self) -> dict[str, Any] | None:
        return self.rows[0] if self.rows else None

    def one(self) -> dict[str, Any]:
        if len(self.rows) != 1:
            raise RuntimeError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar(self) -> Any:
        return next(iter(self.rows[0].values())) if self.rows else None


class Statement:
    """One Core statement, compiled for a dialect, run on the DBAPI cursor."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # Per parameter, once: its name, the literal value the statement itself carries,
        # whether the caller must give it (our p_* parameters), and the type's processor.
        names = (
            list(compiled.positiontup)
            if compiled.positional
            else list(compiled.bind_names.values())
        )
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        self._plan: list[tuple[str, Any, bool, Processor | None]] = [
            (
                name,
                by_name[name].value,
                by_name[name].required,
                by_name[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in names
        ]
        self._positional = compiled.positional
        returning = getattr(statement, "_returning", ()) or ()
        self._columns = [
            (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in returning
        ]

    def _parameters(self, values: Mapping[str, Any]) -> Any:
        converted = []
        for name, literal, required, process in self._plan:
            if required and name not in values:
                raise KeyError(f"statement parameter {name!r} was not given")
            value = values.get(name, literal)
            converted.append(process(value) if process is not None and value is not None else value)
        if self._positional:
            return converted
        return {plan[0]: value for plan, value in zip(self._plan, converted, strict=True)}

    def run(self, conn: Connection, values: Mapping[str, Any]) -> Result:
        """Execute inside ``conn``'s current transaction."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, self._parameters(values))
            rows: list[dict[str, Any]] = []
            if self._columns:
                for raw in cursor.fetchall():
                    rows.append(
                        {
                            name: (
                                process(value)
                                if process is not None and value is not None
                                else value
                            )
                            for (name, process), value in zip(self._columns, raw, strict=True)
                        }
                    )
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
        self.requeue_held = prepare(
            update(tasks).where(held).values(status="queued", error=p("p_error"), **released)
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
        self.supersede_progress = prepare(
            update(outbox)
            .where(pending_progress)
            .values(status="superseded", settled_at=p("p_now"), last_error=p("p_reason"))
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

    def dequeue(self, type_count: int) -> Statement:
        """Lock the best queued task (of ``type_count`` named types, 0 = any): one statement."""
        statement = self._dequeue.get(type_count)
        if statement is None:
            conditions = [IS_QUEUED, self._lease_ok]
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
