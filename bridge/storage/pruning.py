"""Pruning: finished tasks and settled outbox rows, deleted in short chunks.

Each chunk is one write transaction over a window of ids (a rowid range on
SQLite, a primary-key range on PostgreSQL), so the write lock is held for the
window's rows only; the window grows or shrinks to keep each chunk near
``CHUNK_SECONDS``. A chunk takes the lock by short polls, like every write
(``database.begin_immediate``): a worker looping back to back leaves it free for
well under a millisecond between transactions. After a chunk the pruner waits
twice as long as it held the lock, so the workers get their turn.
``ix_outbox_task_id`` (revision 0002) makes the "no pending or dead row" check
and the foreign key's ``ON DELETE SET NULL`` index lookups. The statements run
through ``Statement`` (SQLAlchemy's public API).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, exists, func, select
from sqlalchemy.engine import Dialect

from ..models import FINISHED_TASK_STATUSES, SETTLED_OUTBOX_STATUSES
from .connector import Connector
from .schema import outbox, tasks
from .statements import Statement, constant

PRUNABLE_OUTBOX_STATUSES = SETTLED_OUTBOX_STATUSES  # dead rows stay for the operator
CHUNK_SECONDS = 0.02  # aim; a chunk is never let grow past ~50 ms of the write lock
PAUSE_SECONDS = 0.002
FIRST_WINDOW, MIN_WINDOW, MAX_WINDOW = 1000, 50, 50_000


def _in(column: Any, values: tuple[str, ...]) -> Any:
    return column.in_([constant(value) for value in values])


def _window(table: Table) -> Any:
    return and_(table.c.id > bindparam("p_low"), table.c.id <= bindparam("p_high"))


def _prune_statements(dialect: Dialect) -> tuple[Statement, Statement]:
    """(settled outbox rows, finished tasks) in an id window, older than ``p_before``."""
    rows = delete(outbox).where(
        _window(outbox),
        _in(outbox.c.status, PRUNABLE_OUTBOX_STATUSES),
        outbox.c.settled_at < bindparam("p_before"),
    )
    unsettled = exists().where(
        outbox.c.task_id == tasks.c.id, _in(outbox.c.status, ("pending", "dead"))
    )
    finished = delete(tasks).where(
        _window(tasks),
        _in(tasks.c.status, FINISHED_TASK_STATUSES),
        tasks.c.finished_at < bindparam("p_before"),
        ~unsettled,
    )
    return Statement(rows, dialect), Statement(finished, dialect)


class Pruner:
    """One prune run: deletes what a statement matches, id window by id window."""

    def __init__(
        self,
        db: Connector,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.db, self.sleep, self.clock = db, sleep, clock
        self.longest_chunk = 0.0  # seconds the write lock was held, at the longest
        self.chunks = 0

    def run(self, table: Table, statement: Statement, before: datetime) -> int:
        with self.db.read() as conn:
            first, last = conn.execute(select(func.min(table.c.id), func.max(table.c.id))).one()
        if last is None:
            return 0
        deleted, low, window = 0, first - 1, FIRST_WINDOW  # ids below the first are gone
        while low < last:
            high = min(low + window, last)
            with self.db.hot_write() as conn:
                started = self.clock()  # the write lock is held from here to the commit
                values = {"p_low": low, "p_high": high, "p_before": before}
                deleted += statement.run(conn, values).rowcount
            took = self.clock() - started
            self.chunks += 1
            self.longest_chunk = max(self.longest_chunk, took)
            low, window = high, _next_window(window, took)
            if low < last:
                self.sleep(max(PAUSE_SECONDS, 2 * took))
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
        settled, finished_tasks = _prune_statements(self.db.engine.dialect)
        rows = pruner.run(outbox, settled, before)
        finished = pruner.run(tasks, finished_tasks, before)
        return rows, finished
