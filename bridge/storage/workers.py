"""The workers table: each worker process records itself, beats, and says when it stops."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..models import WorkerInfo
from .connector import Connector
from .schema import workers


class WorkerRegistry:
    """Writes of a worker's own row, and the operator's reads of all of them."""

    db: Connector

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker (a restart with the same host-pid replaces the row)."""
        row = {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "types": info.types,
            "concurrency": info.concurrency,
            "pool": info.pool,
            "started_at": info.started_at,
            "beat_at": info.beat_at,
            "stopped_at": None,
            "done": info.done,
            "failed": info.failed,
        }
        with self.db.write() as conn:
            dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(workers).values(**row)
            replaced = {name: statement.excluded[name] for name in row if name != "id"}
            conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=replaced))

    def worker_beat(
        self, worker_id: str, done: int, failed: int, now: datetime, *, stopped: bool = False
    ) -> None:
        """The worker is alive (or, ``stopped``, has stopped) with these counts."""
        values: dict[str, Any] = {"beat_at": now, "done": done, "failed": failed}
        if stopped:
            values["stopped_at"] = now
        with self.db.write(durable=False) as conn:
            conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))

    def worker_list(self, limit: int = 100) -> list[WorkerInfo]:
        """Workers, the latest beat first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(workers).order_by(workers.c.beat_at.desc()).limit(limit)
            ).mappings()
            return [WorkerInfo(**dict(row)) for row in rows]

    def prune_workers(self, beat_before: datetime) -> int:
        """Forget workers whose last beat is older than ``beat_before``: stopped or lost
        long ago."""
        with self.db.write() as conn:
            return int(
                conn.execute(delete(workers).where(workers.c.beat_at < beat_before)).rowcount
            )
