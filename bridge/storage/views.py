"""Read-only queries for the operator's views (the dashboard): what is running, what
finished lately, the latest dead rows. Nothing here writes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from ..models import LocalTask, OutboxEntry
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
