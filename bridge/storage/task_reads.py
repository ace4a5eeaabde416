"""Reads of the ``tasks`` table: one task, the counts, and what the daemon's pull and
reap decisions look at. No write lock is taken here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from ..models import LocalTask, QueueCounts
from .connector import Connector
from .schema import IS_PENDING, IS_QUEUED, outbox, tasks
from .statements import TASK_COLUMNS, Prepared, seconds


def read_task(sql: Prepared, conn: Any, task_id: int) -> LocalTask | None:
    row = sql.task_by_id.run(conn, {"p_id": task_id}).first()
    return LocalTask.from_values(row) if row is not None else None


def read_by_remote_id(conn: Connection, remote_id: int) -> LocalTask | None:
    row = conn.execute(select(*TASK_COLUMNS).where(tasks.c.remote_id == remote_id)).first()
    return LocalTask.from_values(row) if row is not None else None


class TaskReads:
    """Reads of ``tasks``."""

    db: Connector
    sql: Prepared

    def get_task(self, task_id: int) -> LocalTask | None:
        with self.db.read() as conn:
            return read_task(self.sql, conn, task_id)

    def get_task_by_remote_id(self, remote_id: int) -> LocalTask | None:
        with self.db.read() as conn:
            return read_by_remote_id(conn, remote_id)

    def counts(self) -> QueueCounts:
        with self.db.read() as conn:
            task_rows = conn.execute(
                select(tasks.c.type, tasks.c.status, func.count()).group_by(
                    tasks.c.type, tasks.c.status
                )
            ).all()
            outbox_rows = conn.execute(
                select(outbox.c.status, func.count()).group_by(outbox.c.status)
            ).all()
            oldest = conn.execute(select(func.min(outbox.c.created_at)).where(IS_PENDING)).scalar()
        return QueueCounts(
            tasks={(t, s): n for t, s, n in task_rows},
            outbox={s: n for s, n in outbox_rows},
            oldest_pending_outbox=oldest,  # func.min keeps the column's UTC type
        )

    # -- what the daemon's pull and reap decisions read -----------------------------------
    def any_queued(self, types: Sequence[str] | None) -> bool:
        """Whether a task (of these types) may be waiting, read without the write lock:
        a worker slot woken by another process's commit (most of which queue nothing)
        asks this before taking the lock to dequeue. PostgreSQL: always True (its
        dequeue skips locked rows without waiting)."""
        if self.db.is_postgresql:
            return True
        values = {f"p_type_{i}": name for i, name in enumerate(types or ())}
        with self.db.peek() as driver:
            return self.sql.any_queued(len(types or ())).run(driver, values).first() is not None

    def queued_count(self, task_type: str) -> int:
        """Tasks of a type waiting for a worker (answered from the queued-tasks index).

        SQLite: one prepared statement outside any transaction (a burst's top-up asks
        before every few claims; the ordinary read cost four times as much)."""
        if not self.db.is_postgresql:
            with self.db.peek() as driver:
                return int(self.sql.queued_count.run(driver, {"p_type": task_type}).scalar())
        with self.db.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(IS_QUEUED, tasks.c.type == task_type)
                ).scalar_one()
            )

    def running_count(self) -> int:
        """Tasks of any type a worker holds now."""
        with self.db.read() as conn:
            return int(
                conn.execute(select(func.count()).where(tasks.c.status == "running")).scalar_one()
            )

    def recent_duration(self, task_type: str, sample: int = 50) -> float | None:
        """Mean seconds from start to finish of the latest finished tasks of a type."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(tasks.c.started_at, tasks.c.finished_at)
                .where(
                    tasks.c.type == task_type,
                    tasks.c.status.in_(("done", "failed")),
                    tasks.c.started_at.is_not(None),
                    tasks.c.finished_at.is_not(None),
                )
                .order_by(tasks.c.id.desc())
                .limit(sample)
            ).all()
        spans = [(end - start).total_seconds() for start, end in rows]
        return sum(spans) / len(spans) if spans else None

    def leases_at_risk(self, lease_margin_seconds: float, now: datetime) -> list[LocalTask]:
        """Running remote tasks whose lease ends within the margin (their result may be late)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(*TASK_COLUMNS).where(
                    tasks.c.status == "running",
                    tasks.c.lease_expires_at.is_not(None),
                    tasks.c.lease_expires_at <= now + seconds(lease_margin_seconds),
                )
            ).all()
        return [LocalTask.from_values(row) for row in rows]
