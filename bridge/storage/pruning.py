"""Pruning: finished tasks and settled outbox rows, deleted in short chunks.

Each chunk is one write transaction over a window of ids (a rowid range on
SQLite, a primary-key range on PostgreSQL), so the write lock is held for the
window's rows only; the window grows or shrinks to keep each chunk near
``CHUNK_SECONDS``. Between chunks the pruner waits about as long as the chunk
took (never less than ``PAUSE_SECONDS``), so workers waiting for the lock get it
(on SQLite the hot writers' turn lock wakes them at once; see ``Connector``).
``ix_outbox_task_id`` (revision 0002) makes the "no pending or dead row" check
and the foreign key's ``ON DELETE SET NULL`` index lookups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, delete, exists, func, select

from ..schema import FINISHED_TASK_STATUSES, outbox, tasks
from .connector import Connector

PRUNABLE_OUTBOX_STATUSES = ("delivered", "superseded")  # dead rows stay for the operator
CHUNK_SECONDS = 0.02  # aim; a chunk is never let grow past ~50 ms of the write lock
PAUSE_SECONDS = 0.002
FIRST_WINDOW, MIN_WINDOW, MAX_WINDOW = 1000, 50, 50_000


def _settled_rows(before: datetime) -> Any:
    return and_(outbox.c.status.in_(PRUNABLE_OUTBOX_STATUSES), outbox.c.settled_at < before)


def _finished_tasks(before: datetime) -> Any:
    unsettled = exists().where(
        outbox.c.task_id == tasks.c.id, outbox.c.status.in_(("pending", "dead"))
    )
    return and_(
        tasks.c.status.in_(FINISHED_TASK_STATUSES), tasks.c.finished_at < before, ~unsettled
    )


class Pruner:
    """One prune run: deletes what ``where`` matches in ``table``, window by window."""

    def __init__(
        self,
        db: Connector,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.db, self.sleep, self.clock = db, sleep, clock
        self.longest_chunk = 0.0
        self.chunks = 0

    def run(self, table: Table, where: Any) -> int:
        with self.db.read() as conn:
            last = conn.execute(select(func.max(table.c.id))).scalar()
        if last is None:
            return 0
        deleted, low, window = 0, 0, FIRST_WINDOW
        while low < last:
            high = min(low + window, last)
            started = self.clock()
            with self.db.turn(), self.db.write() as conn:
                deleted += conn.execute(
                    delete(table).where(table.c.id > low, table.c.id <= high, where)
                ).rowcount
            took = self.clock() - started
            self.chunks += 1
            self.longest_chunk = max(self.longest_chunk, took)
            low, window = high, _next_window(window, took)
            if low < last:
                self.sleep(max(PAUSE_SECONDS, took))
        return deleted


def _next_window(window: int, took: float) -> int:
    """Double a window that took under half the aim, halve one that took over it."""
    if took < CHUNK_SECONDS / 2:
        return min(window * 2, MAX_WINDOW)
    if took > CHUNK_SECONDS:
        return max(window // 2, MIN_WINDOW)
    return window


class PruneQueries:
    """Deleting what is finished and settled, without stalling the workers."""

    db: Connector

    def prune(self, before: datetime, pruner: Pruner | None = None) -> tuple[int, int]:
        """Delete settled outbox rows and finished tasks older than ``before``; (rows, tasks).

        Nothing pending is touched, dead rows are kept for the operator, and a
        task is kept while any of its outbox rows is pending or dead. Rows first:
        a task whose old rows are gone is then free to go.
        """
        pruner = pruner or Pruner(self.db)  # a given one keeps its figures for the caller
        rows = pruner.run(outbox, _settled_rows(before))
        finished = pruner.run(tasks, _finished_tasks(before))
        return rows, finished
