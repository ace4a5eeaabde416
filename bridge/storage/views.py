"""Read-only queries for the operator's views (``tasks``, the dashboard): tasks by
filter, one task whole, what is running, what finished lately, the latest dead rows.
Nothing here writes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, String, cast, func, or_, select

from ..models import LocalTask, OutboxEntry, TaskDetail
from .connector import Connector
from .schema import outbox, tasks
from .statements import TASK_COLUMNS


class ViewQueries:
    """Bounded reads for dashboards: each takes a limit, so a page never reads a table."""

    db: Connector

    def running_tasks(self, limit: int) -> list[LocalTask]:
        """Tasks a worker holds now, longest running first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(*TASK_COLUMNS)
                .where(tasks.c.status == "running")
                .order_by(tasks.c.started_at, tasks.c.id)
                .limit(limit)
            ).all()
        return [LocalTask.from_values(row) for row in rows]

    def finished_since(self, since: datetime, limit: int) -> list[tuple[datetime, str]]:
        """(finished_at, status) of tasks finished at or after ``since``, newest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(tasks.c.finished_at, tasks.c.status)
                .where(tasks.c.finished_at >= since)
                .order_by(tasks.c.id.desc())
                .limit(limit)
            ).all()
        return [(finished, status) for finished, status in rows]

    def latest_dead(self, limit: int) -> list[OutboxEntry]:
        """Dead outbox rows, newest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(outbox)
                .where(outbox.c.status == "dead")
                .order_by(outbox.c.id.desc())
                .limit(limit)
            ).mappings()
            return [OutboxEntry.from_row(row) for row in rows]

    def task_list(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        since: datetime | None = None,
        search: str | None = None,
        limit: int = 50,
    ) -> list[LocalTask]:
        """Tasks newest first, by status, type, creation time and a search that matches a
        local or remote id exactly, or a substring of the type, the error or the params."""
        statement = select(*TASK_COLUMNS).order_by(tasks.c.id.desc()).limit(limit)
        if status:
            statement = statement.where(tasks.c.status == status)
        if task_type:
            statement = statement.where(tasks.c.type == task_type)
        if since is not None:
            statement = statement.where(tasks.c.created_at >= since)
        if search:
            pattern = f"%{search}%"
            matches: list[ColumnElement[bool]] = [
                tasks.c.type.like(pattern),
                tasks.c.error.like(pattern),
                cast(tasks.c.params, String).like(pattern),
            ]
            if search.isascii() and search.isdecimal():
                matches += [tasks.c.id == int(search), tasks.c.remote_id == int(search)]
            statement = statement.where(or_(*matches))
        with self.db.read() as conn:
            return [LocalTask.from_values(row) for row in conn.execute(statement).all()]

    def task_detail(
        self, *, task_id: int | None = None, remote_id: int | None = None
    ) -> TaskDetail | None:
        """One task by its local or its remote id, with its traceback and outbox rows."""
        key = tasks.c.id == task_id if remote_id is None else tasks.c.remote_id == remote_id
        with self.db.read() as conn:
            row = conn.execute(select(*TASK_COLUMNS, tasks.c.error_detail).where(key)).first()
            if row is None:
                return None
            task = LocalTask.from_values(row[:-1])
            rows = conn.execute(
                select(outbox).where(outbox.c.task_id == task.id).order_by(outbox.c.id)
            ).mappings()
            entries = [OutboxEntry.from_row(entry) for entry in rows]
        return TaskDetail(task, row[-1], entries)

    def finished_by_type(self, since: datetime) -> list[tuple[str, str, int]]:
        """(type, status, count) of tasks finished at or after ``since``."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(tasks.c.type, tasks.c.status, func.count())
                .where(tasks.c.finished_at >= since)
                .group_by(tasks.c.type, tasks.c.status)
            ).all()
        return [(str(task_type), str(status), int(count)) for task_type, status, count in rows]
