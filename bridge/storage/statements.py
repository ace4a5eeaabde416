"""The worker's hot-path statements: SQL compiled once, run straight on the driver.

Written with SQLAlchemy Core and compiled once per store with named parameters (on
SQLite a batch's INSERT also with positional ones, ``Statement.positional``); what is
kept is only public API: the compiled ``string``, ``params`` and ``positiontup``, the
statement's ``selected_columns`` / ``exported_columns`` (RETURNING), and each
type's ``bind_processor`` / ``result_processor``. A statement carries no bound
values of its own (constants are written into the SQL, which also lets SQLite
match partial indexes): every parameter is the caller's, and a missing one is the
driver's error, never a silent NULL. Values are converted by their Python type
(``dict``/``list`` -> the JSON column format, ``datetime`` -> the UTC column
format) with SQLAlchemy's own processors for the dialect, so a row written here
reads back through SQLAlchemy unchanged (tests/integration/test_stored_times.py).
SQLAlchemy's per-execution machinery would cost more than the SQL itself
(figures in docs/BENCHMARKS.md). One executor for both databases; every other
query goes through plain SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Select,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from taskmanager.encoding import json_writer

from ..models import LocalTask
from .schema import IS_PENDING_PROGRESS, IS_QUEUED, UTCDateTime, outbox, tasks

# In LocalTask's field order, so a returned row builds a task positionally.
TASK_COLUMNS = [tasks.c[name] for name in LocalTask.__dataclass_fields__]
Processor = Callable[[Any], Any]


def constant(value: str) -> Any:
    """A constant written into the SQL text (a bound value would be a parameter)."""
    return literal_column(f"'{value}'")


ONE: Any = literal_column("1")
ZERO: Any = literal_column("0")


def named_dialect(dialect: Dialect) -> Dialect:
    """The dialect, compiling with named parameters (``:name`` for sqlite3; psycopg's
    ``%(name)s`` already is): one dict of values serves every statement."""
    if dialect.paramstyle in ("named", "pyformat"):
        return dialect
    named: Dialect = type(dialect)(paramstyle="named")  # type: ignore[call-arg]
    return named


class Result:
    """Rows (converted) and the row count of one execution."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[list[Any]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> list[Any] | None:
        return self.rows[0] if self.rows else None

    def one(self) -> list[Any]:
        if len(self.rows) != 1:
            raise RuntimeError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


def _recent(process: Processor, size: int = 3) -> Processor:
    """``process`` remembering its last ``size`` values by identity: a task's statements
    (its finish, its outbox row, the next take) convert the same ``now``, lock and lease
    times once between them. Each pair is one tuple, so a thread that sees another's
    pair still sees a right one; a value is kept alive while remembered, so its
    identity cannot be taken by another."""
    recent: list[tuple[Any, Any]] = [(None, None)] * size

    def convert(value: Any) -> Any:
        for seen, converted in recent:
            if value is seen:
                return converted
        converted = process(value)
        recent.insert(0, (value, converted))
        del recent[size:]
        return converted

    return convert


def time_converter(dialect: Dialect) -> Processor | None:
    """How a UTC datetime is bound on ``dialect``, remembering its latest values; None
    where the driver takes datetimes as they are."""
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    return None if process is None else _recent(process)


# JSON text as SQLAlchemy's JSON type writes it (``json.dumps``' defaults); a ``str``
# parameter is bound as is, so text encoded once can serve several parameters (a
# result and its outbox row, a batch's shared metadata).
json_text = json_writer()


def driver_of(conn: Any) -> Any:
    """The DBAPI connection under a SQLAlchemy ``Connection`` (or the DBAPI one itself)."""
    return conn.connection.driver_connection if isinstance(conn, Connection) else conn


class Statement:
    """One Core statement, compiled for a dialect, run on the DBAPI connection."""

    def __init__(self, statement: Any, dialect: Dialect, times: Processor | None = None) -> None:
        """``times``: a ``time_converter`` shared with the statements run beside this one."""
        compiled = statement.compile(dialect=named_dialect(dialect))
        carried = {name: value for name, value in compiled.params.items() if value is not None}
        if carried:
            raise ValueError(
                f"hot statement binds values of its own {carried}: write them as constants"
            )
        self.sql: str = compiled.string
        self.names = tuple(compiled.params)
        self._statement, self._dialect = statement, dialect
        self._positional: dict[tuple[str, ...], str] = {}
        json_in = JSON().dialect_impl(dialect).bind_processor(dialect)
        time_in = times or time_converter(dialect)
        self._to_db: dict[type, Processor] = {}
        if json_in is not None:
            self._to_db.update({dict: json_in, list: json_in})
        if time_in is not None:
            self._to_db[datetime] = time_in
        columns = list(
            statement.selected_columns
            if isinstance(statement, Select)
            else statement.exported_columns
        )
        self._returns = bool(columns)
        self.keys = [column.key for column in columns]
        # Only the columns whose values need converting (JSON, datetimes), by position.
        self._converters = [
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
        ]

    def parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` converted in place for the driver (the caller's own, fresh dict)."""
        to_db = self._to_db
        for name, value in values.items():
            process = to_db.get(type(value))
            if process is not None:
                values[name] = process(value)
        return values

    def converted(self, value: Any) -> Any:
        """One value as ``parameters`` would bind it: a batch converts what its rows
        share once, and its rows then need no converting (``run_many(..., ready=True)``)."""
        process = self._to_db.get(type(value))
        return value if process is None else process(value)

    def run(self, conn: Any, values: dict[str, Any], *, ready: bool = False) -> Result:
        """Execute inside ``conn``'s current transaction (a SQLAlchemy ``Connection``, or
        the DBAPI connection of the store's own hot transaction); ``ready`` as in
        ``run_many``."""
        cursor = driver_of(conn).execute(self.sql, values if ready else self.parameters(values))
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

    def positional(self, order: tuple[str, ...]) -> str:
        """SQLite: the SQL taking its values as a tuple in ``order`` (which must be the
        order its parameters appear in). sqlite3 binds a dict name by name and a tuple
        by index: a batch of rows as tuples costs 0.6 us a row less (docs/BENCHMARKS.md,
        "Rows bound by position")."""
        sql = self._positional.get(order)
        if sql is None:
            if self._dialect.name != "sqlite":
                raise ValueError(f"rows bound by position are for SQLite, not {self._dialect.name}")
            dialect = type(self._dialect)(paramstyle="qmark")  # type: ignore[call-arg]
            compiled = self._statement.compile(dialect=dialect)
            if tuple(compiled.positiontup or ()) != order:
                raise ValueError(f"parameters in order {compiled.positiontup}, not {order}")
            sql = self._positional[order] = compiled.string
        return sql

    def insert(self, conn: Any, order: tuple[str, ...], row: tuple[Any, ...]) -> int:
        """SQLite: run an ``INSERT`` of one row given as a tuple in ``order``, every value
        ready (``converted``); the new row's id (``lastrowid``: no ``RETURNING`` to fetch)."""
        cursor = driver_of(conn).execute(self.positional(order), row)
        try:
            return int(cursor.lastrowid)
        finally:
            cursor.close()

    def insert_rows(self, conn: Any, order: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """``insert`` for many rows with one ``executemany``."""
        cursor = driver_of(conn).cursor()
        try:
            cursor.executemany(self.positional(order), rows)
        finally:
            cursor.close()

    def run_many(self, conn: Any, many: list[dict[str, Any]], *, ready: bool = False) -> int:
        """One statement over many rows (``executemany``); no rows returned. ``ready``:
        every value is already in the driver's form (``converted``), none is looked at."""
        cursor = driver_of(conn).cursor()
        try:
            cursor.executemany(self.sql, many if ready else [self.parameters(v) for v in many])
            return int(cursor.rowcount)
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
        self._dequeue: dict[tuple[int, bool], Statement] = {}
        self._any_queued: dict[int, Statement] = {}
        # The claim token: still running, same holder, same local attempt.
        held = and_(
            tasks.c.id == p("p_id"),
            tasks.c.status == constant("running"),
            tasks.c.locked_by == p("p_holder"),
            tasks.c.attempts == p("p_attempts"),
        )
        released = {"locked_by": null(), "locked_until": null()}

        self.times = time_converter(dialect)

        def prepare(statement: Any) -> Statement:
            return Statement(statement, dialect, self.times)

        self.heartbeat = prepare(update(tasks).where(held).values(locked_until=p("p_until")))
        self.progress = prepare(
            update(tasks).where(held).values(progress=p("p_progress"), locked_until=p("p_until"))
        )
        # RETURNING progress: a pending progress row needs making obsolete only if there was one.
        self.finish_done = prepare(
            update(tasks)
            .where(held)
            .values(
                status=constant("done"),
                finished_at=p("p_now"),
                result=p("p_result"),
                error=null(),
                error_detail=null(),
                **released,
            )
            .returning(tasks.c.progress)
        )
        self.finish_failed = prepare(
            update(tasks)
            .where(held)
            .values(
                status=constant("failed"),
                finished_at=p("p_now"),
                error=p("p_error"),
                error_detail=p("p_detail"),
                **released,
            )
            .returning(tasks.c.progress)
        )
        # Back to the queue; a queued row's locked_until, when set, is the time before which
        # it is not handed out (a delayed retry), with no holder (locked_by stays NULL).
        self.requeue_held = prepare(
            update(tasks)
            .where(held)
            .values(
                status=constant("queued"),
                error=p("p_error"),
                error_detail=p("p_detail"),
                locked_by=null(),
                locked_until=p("p_not_before"),
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
            .values(status=constant("obsolete"), settled_at=p("p_now"), last_error=p("p_reason"))
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
            **{name: p(f"v_{name}") for name in ("type", "params", "priority", "created_at")},
            "metadata": p("v_metadata"),
            "status": constant("queued"),
            "attempts": ZERO,
            "progress": ZERO,
        }
        # Only the id comes back: the rest of the new task is what the caller gave.
        self.enqueue = prepare(insert(tasks).values(**task_row).returning(tasks.c.id))
        self.enqueue_rows = prepare(insert(tasks).values(**task_row))  # executemany, SQLite
        # A claim of a remote task not seen before (the daemon's usual case): its id, or
        # none when the remote id is known (then the careful path reads and decides).
        claim_row: dict[str, Any] = {
            name: p(f"c_{name}")
            for name in (
                "remote_id",
                "type",
                "params",
                "priority",
                "created_at",
                "remote_attempt",
                "remote_worker_id",
                "lease_expires_at",
            )
        }
        claim_row.update(status=constant("queued"), attempts=ZERO, progress=ZERO)
        upsert = postgresql.insert if self.postgresql else sqlite.insert
        self.claim_new = prepare(
            upsert(tasks)
            .values(**claim_row)
            .on_conflict_do_nothing(index_elements=[tasks.c.remote_id])
            .returning(tasks.c.id)
        )
        self.task_by_id = prepare(select(*TASK_COLUMNS).where(tasks.c.id == p("p_id")))
        # The daemon's claim bursts read this before each top-up: from the index, prepared.
        self.queued_count = prepare(
            select(func.count()).where(IS_QUEUED, tasks.c.type == p("p_type"))
        )

    def any_queued(self, type_count: int) -> Statement:
        """The id of one queued task (of ``type_count`` named types, 0 = any), read from
        the queued-tasks index; leases and locks are dequeue's to judge."""
        statement = self._any_queued.get(type_count)
        if statement is None:
            conditions = [IS_QUEUED]
            if type_count:
                conditions.append(
                    tasks.c.type.in_([bindparam(f"p_type_{i}") for i in range(type_count)])
                )
            query = select(tasks.c.id).where(*conditions).limit(ONE)
            if not self.postgresql:
                query = query.offset(ZERO)
            statement = self._any_queued[type_count] = Statement(query, self.dialect, self.times)
        return statement

    def dequeue(self, type_count: int, many: bool = False) -> Statement:
        """Lock the best queued task (of ``type_count`` named types, 0 = any): one
        statement; ``many``: up to ``p_limit`` of them (rows come back in no set order)."""
        statement = self._dequeue.get((type_count, many))
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
                .limit(bindparam("p_limit") if many else ONE)
            )
            if self.postgresql:
                candidate = candidate.with_for_update(skip_locked=True)
            else:  # SQLite's LIMIT by expression brings an OFFSET, bound unless given
                candidate = candidate.offset(ZERO)
            chosen = (
                tasks.c.id.in_(candidate.scalar_subquery())
                if many
                else tasks.c.id == candidate.scalar_subquery()
            )
            statement = Statement(
                update(tasks)
                .where(chosen)
                .values(
                    status=constant("running"),
                    locked_by=bindparam("p_worker"),
                    locked_until=bindparam("p_until"),
                    attempts=tasks.c.attempts + ONE,
                    started_at=bindparam("p_now"),
                )
                .returning(*TASK_COLUMNS),
                self.dialect,
                self.times,
            )
            self._dequeue[(type_count, many)] = statement
        return statement


RELEASED = {"locked_by": None, "locked_until": None}  # a task no worker holds


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
