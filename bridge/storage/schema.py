"""The local queue's tables, as typed SQLAlchemy models.

Created and changed only by the Alembic revisions in ``migrations/`` (installed
as ``bridge.migrations``; ``revisions`` reads which revision is current). The states
and kinds the columns hold are named in ``bridge.models``.
A test keeps these models and the migrations' result equal.
Times are stored as naive UTC and handed out as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    desc,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..models import (
    OUTBOX_KINDS,
    OUTBOX_STATUSES,
    TASK_STATUSES,
)

# Revision 0001's constraint also admits 'cancelled', which nothing writes. Changing a
# CHECK on SQLite means rebuilding ``tasks``, whose drop would null every outbox row's
# task_id (ON DELETE SET NULL): the value goes when a revision rebuilds the table anyway.
STORED_TASK_STATUSES = (*TASK_STATUSES, "cancelled")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, naive UTC in the column.

    One representation on SQLite (text) and PostgreSQL (timestamp) so that
    comparisons in SQL mean the same on both.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, one C call per value each way (the generic path is slower than the
        rest of a dequeue's parameters), writing the dialect's own storage format so that
        values written either way read back the same."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _sqlite_datetime_text

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _sqlite_datetime_value


_COLUMN_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def _sqlite_datetime_text(value: datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC: SQLAlchemy's SQLite DATETIME format.

    Written field by field: ``isoformat`` of an aware datetime formats its offset too (to
    be cut off), and ``replace(tzinfo=...)`` first costs more than the formatting: each
    call a sixth fewer instructions, three calls a worker-loop task
    (``tests/bench/loop_instructions.py``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return _COLUMN_TEXT % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _sqlite_datetime_value(value: str | None) -> datetime | None:
    """The column's UTC text, read as an aware datetime: the offset is parsed with it,
    ten times cheaper than ``replace(tzinfo=...)`` after. Text another tool wrote (a
    date alone, an offset of its own) is read as that instant, in UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value + "+00:00")
    except ValueError:  # it has an offset already
        parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:  # a date alone: the offset was not taken
        return parsed.replace(tzinfo=timezone.utc)
    return parsed if parsed.tzinfo is timezone.utc else parsed.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class TaskRow(Base):
    """One unit of work in the local queue: a claimed remote task, or a local-only one."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", STORED_TASK_STATUSES), name="ck_tasks_status"),
        # Queued tasks only, in dequeue order: the next task is an index seek, and tasks
        # that start or finish leave the index instead of being moved within it (fewer
        # pages written per commit).
        Index(
            "ix_tasks_queued",
            desc("priority"),
            "id",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    remote_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    type: Mapped[str] = mapped_column(String(255))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    remote_attempt: Mapped[int | None] = mapped_column(Integer)
    remote_worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(255))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The handler's traceback of its last failure (bounded, secrets masked): local only.
    error_detail: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxRow(Base):
    """One remote side effect to deliver, with everything needed to replay it alone."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("kind", OUTBOX_KINDS), name="ck_outbox_kind"),
        CheckConstraint(_in("status", OUTBOX_STATUSES), name="ck_outbox_status"),
        # Partial indexes: each row kind touches only the index its queries need.
        Index(
            "ix_outbox_pending",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # Every row of a task: prune's checks and the foreign key's ON DELETE SET NULL.
        Index("ix_outbox_task_id", "task_id"),
        Index(
            "ix_outbox_pending_progress",
            "task_id",
            sqlite_where=text("kind = 'progress' AND status = 'pending'"),
            postgresql_where=text("kind = 'progress' AND status = 'pending'"),
        ),
        Index(
            "ix_outbox_pending_create",
            "dedupe_key",
            sqlite_where=text("kind = 'create_task' AND status = 'pending'"),
            postgresql_where=text("kind = 'create_task' AND status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    remote_id: Mapped[int | None] = mapped_column(Integer)
    remote_attempt: Mapped[int | None] = mapped_column(Integer)
    remote_worker_id: Mapped[str | None] = mapped_column(String(255))
    dedupe_key: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskTypeRow(Base):
    """Cached task type: remote id (for claims) and schema (for offline validation)."""

    __tablename__ = "task_types"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    remote_id: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(64))
    param_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BridgeStateRow(Base):
    """Small facts the bridge keeps across restarts (its remote worker id, last contact)."""

    __tablename__ = "bridge_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRow(Base):
    """A worker process as it records itself: what it runs, since when, its last beat and
    counts. One that stops beating without a word is lost (``models.WorkerInfo``)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # its lock owner, host-pid
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    types: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer)
    pool: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)


# The Core tables, for the store's statements (mypy sees __table__ as a bare FromClause).
tasks = cast(Table, TaskRow.__table__)
outbox = cast(Table, OutboxRow.__table__)
task_types = cast(Table, TaskTypeRow.__table__)
bridge_state = cast(Table, BridgeStateRow.__table__)
workers = cast(Table, WorkerRow.__table__)


def _constant(value: str) -> Any:
    """A string constant written into the SQL, not bound as a parameter.

    SQLite (and a generic PostgreSQL plan) can use a partial index only when the
    query's own text implies the index's WHERE; a bound ``?`` does not.
    """
    return literal_column(f"'{value}'")


# The predicates of the partial indexes above; queries use exactly these.
IS_QUEUED = tasks.c.status == _constant("queued")
IS_PENDING = outbox.c.status == _constant("pending")
IS_PENDING_PROGRESS = and_(outbox.c.kind == _constant("progress"), IS_PENDING)
IS_PENDING_CREATE = and_(outbox.c.kind == _constant("create_task"), IS_PENDING)
