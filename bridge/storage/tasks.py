"""Queries of the ``tasks`` table: the worker's calls, the daemon's claims and reaping.

A task's change and its outbox row are written in one transaction (promise 1).
The worker's calls run prepared statements (``statements``) in ``hot_write``
transactions; everything else goes through plain SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from taskmanager import ClaimedTask

from ..errors import DatabaseError, TaskNotHeldError
from ..models import LocalTask, QueueCounts
from ..schema import (
    FINISHED_TASK_STATUSES,
    IS_PENDING,
    IS_QUEUED,
    outbox,
    tasks,
)
from .connector import Connector
from .outbox import append_for_task
from .statements import TASK_COLUMNS, Prepared, Statement, json_text

_RELEASED = {"locked_by": None, "locked_until": None}


# A local-only task to add: (type, params, priority, metadata).
NewTask = tuple[str, dict[str, Any], int, "dict[str, Any] | None"]


def _new_task(task_id: int, item: NewTask, now: datetime) -> LocalTask:
    """The task just inserted, from what was given (the row holds nothing else)."""
    task_type, params, priority, metadata = item
    return LocalTask(
        id=task_id,
        type=task_type,
        params=params,
        priority=priority,
        status="queued",
        attempts=0,
        locked_by=None,
        locked_until=None,
        remote_id=None,
        remote_attempt=None,
        remote_worker_id=None,
        lease_expires_at=None,
        progress=0,
        result=None,
        error=None,
        metadata=metadata or {},
        created_at=now.astimezone(timezone.utc),
        started_at=None,
        finished_at=None,
    )


def _enqueue_values(item: NewTask, now: datetime) -> dict[str, Any]:
    task_type, params, priority, metadata = item
    return {
        "v_type": task_type,
        "v_params": params,
        "v_priority": priority,
        "v_status": "queued",
        "v_attempts": 0,
        "v_progress": 0,
        "v_created_at": now,
        "v_metadata": metadata,
    }


def _insert_in_a_row(statement: Statement, conn: Any, rows: list[dict[str, Any]]) -> list[int]:
    """SQLite: insert ``rows`` with one ``executemany``; their ids, in order.

    Under the write lock each new row's id is the largest so far plus one (SQLite's
    rowid rule, without AUTOINCREMENT), so the batch's ids are the ``len(rows)``
    ending at ``last_insert_rowid()``; counted again, in case the rule ever did not
    hold (only past the largest rowid SQLite can store).
    """
    statement.run_many(conn, rows)
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    first = last - len(rows) + 1
    found = conn.execute("SELECT count(*) FROM tasks WHERE id BETWEEN ? AND ?", (first, last))
    if found.fetchone()[0] != len(rows):
        raise RuntimeError(f"enqueue_many: the {len(rows)} new ids are not {first}..{last}")
    return list(range(first, last + 1))


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _token(task: LocalTask) -> dict[str, Any]:
    """The claim token: only the holder of this attempt may change the running task."""
    return {"p_id": task.id, "p_holder": task.locked_by, "p_attempts": task.attempts}


class TaskQueries:
    """Every read and write of ``tasks``."""

    db: Connector
    sql: Prepared

    # -- reading -------------------------------------------------------------------------
    def _task(self, conn: Any, task_id: int) -> LocalTask | None:
        row = self.sql.task_by_id.run(conn, {"p_id": task_id}).first()
        return LocalTask.from_values(row) if row is not None else None

    def get_task(self, task_id: int) -> LocalTask | None:
        with self.db.read() as conn:
            return self._task(conn, task_id)

    def get_task_by_remote_id(self, remote_id: int) -> LocalTask | None:
        with self.db.read() as conn:
            return _by_remote_id(conn, remote_id)

    # -- the worker's side ---------------------------------------------------------------
    def enqueue(
        self,
        task_type: str,
        params: dict[str, Any],
        priority: int,
        metadata: dict[str, Any] | None,
        now: datetime,
    ) -> LocalTask:
        """A local-only task (no remote id): the specification's hybrid pattern."""
        item = (task_type, params, priority, metadata)
        if self.db.is_postgresql:
            return self.enqueue_many([item], now)[0]
        with self.db.one_statement() as conn:  # SQLite: the INSERT commits on its own
            task_id = self.sql.enqueue_rows.insert(conn, _enqueue_values(item, now))
        return _new_task(task_id, item, now)

    def enqueue_many(self, items: Sequence[NewTask], now: datetime) -> list[LocalTask]:
        """Local-only tasks ``(type, params, priority, metadata)``, in ONE transaction."""
        rows = [_enqueue_values(item, now) for item in items]
        with self.db.hot_write() as conn:
            if len(rows) > 1 and not self.db.is_postgresql:
                added = _insert_in_a_row(self.sql.enqueue_rows, conn, rows)
            else:
                added = [self.sql.enqueue.run(conn, values).one()[0] for values in rows]
        return [_new_task(task_id, item, now) for task_id, item in zip(added, items, strict=True)]

    def dequeue(
        self,
        types: Sequence[str] | None,
        locked_by: str,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        """Lock the best queued task to ``locked_by``: highest priority, then oldest.

        Skips tasks whose remote lease ends within the margin (promise 2).
        """
        with self.db.hot_write(durable=False) as conn:
            return self._dequeue(conn, types, locked_by, lock_seconds, lease_margin_seconds, now)

    def dequeue_many(
        self,
        types: Sequence[str] | None,
        worker_id: str,
        limit: int,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> list[LocalTask]:
        """Up to ``limit`` of the best queued tasks, locked to ``worker_id`` in one
        transaction, best first (see ``dequeue``)."""
        with self.db.hot_write(durable=False) as conn:
            return self._dequeue_many(
                conn, types, worker_id, limit, lock_seconds, lease_margin_seconds, now
            )

    def _take_values(
        self,
        types: Sequence[str] | None,
        locked_by: str,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "p_lease_floor": now + _seconds(lease_margin_seconds),
            "p_worker": locked_by,
            "p_until": now + _seconds(lock_seconds),
            "p_now": now,
        }
        for i, name in enumerate(types or ()):
            values[f"p_type_{i}"] = name
        return values

    def _dequeue(
        self,
        conn: Any,
        types: Sequence[str] | None,
        worker_id: str,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        values = self._take_values(types, worker_id, lock_seconds, lease_margin_seconds, now)
        row = self.sql.dequeue(len(types or ())).run(conn, values).first()
        return LocalTask.from_values(row) if row is not None else None

    def _dequeue_many(
        self,
        conn: Any,
        types: Sequence[str] | None,
        worker_id: str,
        limit: int,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> list[LocalTask]:
        if limit < 1:
            return []
        values = self._take_values(types, worker_id, lock_seconds, lease_margin_seconds, now)
        values["p_limit"] = limit
        rows = self.sql.dequeue(len(types or ()), many=True).run(conn, values).rows
        taken = [LocalTask.from_values(row) for row in rows]
        taken.sort(key=lambda task: (-task.priority, task.id))  # RETURNING keeps no order
        return taken

    def _refuse(self, conn: Any, task: LocalTask, action: str) -> TaskNotHeldError:
        current = self._task(conn, task.id)
        if current is None:
            return TaskNotHeldError(
                f"cannot {action} task {task.id}: it no longer exists", task_id=task.id
            )
        if current.status == "running":
            why = f"it is now held by {current.locked_by} (attempt {current.attempts})"
        else:
            why = f"it is {current.status} now"
        return TaskNotHeldError(
            f"cannot {action} task {task.id}: {task.locked_by} (attempt {task.attempts}) "
            f"no longer holds it; {why}. Nothing was changed.",
            current.status,
            task.id,
        )

    def _update_held(
        self, conn: Any, statement: Statement, task: LocalTask, action: str, **values: Any
    ) -> None:
        if statement.run(conn, {**_token(task), **values}).rowcount != 1:
            raise self._refuse(conn, task, action)

    def heartbeat(self, task: LocalTask, lock_seconds: float, now: datetime) -> datetime:
        until = now + _seconds(lock_seconds)
        with self.db.hot_write() as conn:
            self._update_held(conn, self.sql.heartbeat, task, "heartbeat", p_until=until)
        return until

    def record_progress(
        self,
        task: LocalTask,
        percent: int,
        message: str | None,
        lock_seconds: float,
        now: datetime,
    ) -> None:
        """Progress also renews the local lock; the newest pending progress row replaces older."""
        until = now + _seconds(lock_seconds)
        with self.db.hot_write() as conn:
            self._update_held(
                conn,
                self.sql.progress,
                task,
                "report progress on",
                p_progress=percent,
                p_until=until,
            )
            if task.remote_id is None:
                return
            payload = {"progress": percent, "message": message}
            replaced = self.sql.replace_progress.run(
                conn,
                {
                    "p_task_id": task.id,
                    "p_payload": payload,
                    "p_now": now,
                    "p_remote_attempt": task.remote_attempt,
                    "p_remote_worker": task.remote_worker_id,
                },
            ).rowcount
            if not replaced:
                append_for_task(self.sql, conn, "progress", payload, now, task)

    def complete(self, task: LocalTask, result: dict[str, Any], now: datetime) -> None:
        with self.db.hot_write() as conn:
            self._complete(conn, task, result, now)

    def complete_and_dequeue(
        self,
        task: LocalTask,
        result: dict[str, Any],
        types: Sequence[str] | None,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        """Finish ``task`` and take the next one in ONE transaction (one commit per task)."""
        with self.db.hot_write() as conn:
            self._complete(conn, task, result, now)
            return self._dequeue(
                conn, types, str(task.locked_by), lock_seconds, lease_margin_seconds, now
            )

    def complete_many(
        self, finished: Sequence[tuple[LocalTask, dict[str, Any]]], now: datetime
    ) -> list[TaskNotHeldError]:
        """Finish many tasks in ONE transaction (one commit); returns the refusals (tasks
        this worker no longer holds: nothing of theirs changed), the rest are done."""
        with self.db.hot_write() as conn:
            return self._finish_many(conn, finished, now)

    def complete_many_and_dequeue(
        self,
        finished: Sequence[tuple[LocalTask, dict[str, Any]]],
        worker_id: str,
        limit: int,
        types: Sequence[str] | None,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> tuple[list[TaskNotHeldError], list[LocalTask]]:
        """``complete_many`` then take up to ``limit`` tasks, in ONE transaction."""
        with self.db.hot_write() as conn:
            refused = self._finish_many(conn, finished, now)
            taken = self._dequeue_many(
                conn, types, worker_id, limit, lock_seconds, lease_margin_seconds, now
            )
        return refused, taken

    def _finish_many(
        self, conn: Any, finished: Sequence[tuple[LocalTask, dict[str, Any]]], now: datetime
    ) -> list[TaskNotHeldError]:
        refused = []
        for task, result in finished:
            try:
                self._complete(conn, task, result, now)
            except TaskNotHeldError as exc:
                refused.append(exc)
        return refused

    def fail(
        self,
        task: LocalTask,
        error: str,
        retry: bool,
        now: datetime,
        not_before: datetime | None = None,
    ) -> None:
        """Fail the task, or (``retry``) put it back in the queue, handed out again from
        ``not_before`` on (at once when ``None``)."""
        with self.db.hot_write() as conn:
            if retry:
                self._update_held(
                    conn,
                    self.sql.requeue_held,
                    task,
                    "retry",
                    p_error=error,
                    p_not_before=not_before,
                )
            else:
                self._finish(conn, task, "fail", {"error": error}, now, p_error=error)

    def _complete(self, conn: Any, task: LocalTask, result: dict[str, Any], now: datetime) -> None:
        """``_finish`` for a result, encoded once for the task row and its outbox row."""
        text = json_text(result)
        self._finish(conn, task, "complete", f'{{"result": {text}}}', now, p_result=text)

    def _finish(
        self,
        conn: Any,
        task: LocalTask,
        kind: Any,
        payload: dict[str, Any] | str,
        now: datetime,
        **values: Any,
    ) -> None:
        """The task's end and its outbox row, in the caller's transaction: promise 1."""
        statement = self.sql.finish_done if kind == "complete" else self.sql.finish_failed
        progress = statement.run(conn, {**_token(task), "p_now": now, **values}).scalar()
        if progress is None:
            raise self._refuse(conn, task, kind)
        if task.remote_id is None:
            return
        if progress:
            reason = f"task ended locally ({kind}) before this progress was sent"
            self.sql.obsolete_progress.run(
                conn, {"p_task_id": task.id, "p_now": now, "p_reason": reason}
            )
        append_for_task(self.sql, conn, kind, payload, now, task)

    # -- the daemon's side ---------------------------------------------------------------
    def insert_claimed(
        self, claimed: ClaimedTask, lease_seconds: float, now: datetime
    ) -> tuple[LocalTask, bool]:
        """Record a remote claim locally; idempotent on (remote id, remote attempt).

        Returns the task and whether anything changed. A newer claim of a task we
        already know renews the lease of a queued/running row, and re-queues a
        failed/expired one. A ``done`` row keeps its result: it is sent again for the
        new claim (unless its completion is still pending, which the server will
        accept as ours), instead of running the task again.
        """
        fresh = {
            "remote_attempt": claimed.attempts,
            "remote_worker_id": claimed.worker_id,
            "lease_expires_at": claimed.claimed_at + _seconds(lease_seconds),
        }
        # Not fsynced: the daemon's claim intent, updated durably after the claims are
        # recorded (or left open), covers a power loss in between.
        with self.db.hot_write(durable=False) as conn:
            values = {f"c_{name}": value for name, value in fresh.items()}
            values.update(
                c_remote_id=claimed.id,
                c_type=claimed.type,
                c_params=claimed.params,
                c_priority=claimed.priority,
                c_created_at=now,
            )
            added = self.sql.claim_new.run(conn, values).first()
        if added is not None:
            return LocalTask.from_values(added), True
        for _ in range(2):  # a concurrent insert of the same remote id: read it back, once
            try:
                with self.db.write(durable=False) as conn:
                    known = _by_remote_id(conn, claimed.id)
                    if known is None:
                        return _insert_claim(conn, claimed, fresh, now), True
                    if (known.remote_attempt or 0) >= claimed.attempts:
                        return known, False
                    if known.status == "done" and known.result is not None:
                        return self._resend_result(conn, known, fresh, now), True
                    return _renew_claim(conn, known, fresh), True
            except DatabaseError as exc:
                if isinstance(exc.__cause__, IntegrityError):  # another writer inserted it first
                    continue
                raise
        raise RuntimeError(f"remote task {claimed.id} could not be recorded")  # pragma: no cover

    def _resend_result(
        self, conn: Connection, known: LocalTask, fresh: dict[str, Any], now: datetime
    ) -> LocalTask:
        renewed = _renew_lease(conn, known, fresh)
        if not _pending(conn, known.id, "complete"):
            append_for_task(self.sql, conn, "complete", {"result": known.result}, now, renewed)
        return renewed

    def expire_unstartable(self, lease_margin_seconds: float, now: datetime) -> int:
        """Queued remote tasks whose lease ends within the margin will never be handed out."""
        with self.db.write() as conn:
            return conn.execute(
                update(tasks)
                .where(
                    IS_QUEUED,
                    tasks.c.lease_expires_at.is_not(None),
                    tasks.c.lease_expires_at <= now + _seconds(lease_margin_seconds),
                )
                .values(
                    status="expired",
                    finished_at=now,
                    error="the remote lease ran out before a worker could start it",
                )
            ).rowcount

    def requeue_stale_locks(self, lease_margin_seconds: float, now: datetime) -> tuple[int, int]:
        """Running tasks whose worker stopped heartbeating: (re-queued, expired).

        Searched in a read transaction, which blocks no worker; the write lock is
        taken only when there is something to change, and the conditions are checked
        again under it.
        """
        stale = and_(tasks.c.status == "running", tasks.c.locked_until < now)
        lease_ok = or_(
            tasks.c.lease_expires_at.is_(None),
            tasks.c.lease_expires_at > now + _seconds(lease_margin_seconds),
        )
        with self.db.read() as conn:
            found = conn.execute(select(tasks.c.id).where(stale)).scalars().all()
        if not found:
            return 0, 0
        stale = and_(stale, tasks.c.id.in_(found))
        with self.db.write() as conn:
            requeued = conn.execute(
                update(tasks)
                .where(stale, lease_ok)
                .values(
                    status="queued",
                    error="the worker's lock ran out (worker died?); re-queued",
                    **_RELEASED,
                )
            ).rowcount
            expired = conn.execute(
                update(tasks)
                .where(stale)
                .values(
                    status="expired",
                    finished_at=now,
                    error="the worker's lock and the remote lease both ran out",
                    **_RELEASED,
                )
            ).rowcount
        return requeued, expired

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
        """Tasks of a type waiting for a worker (answered from the queued-tasks index)."""
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
                    tasks.c.lease_expires_at <= now + _seconds(lease_margin_seconds),
                )
            ).all()
        return [LocalTask.from_values(row) for row in rows]


def _by_remote_id(conn: Connection, remote_id: int) -> LocalTask | None:
    row = conn.execute(select(*TASK_COLUMNS).where(tasks.c.remote_id == remote_id)).first()
    return LocalTask.from_values(row) if row is not None else None


def _insert_claim(
    conn: Connection, claimed: ClaimedTask, fresh: dict[str, Any], now: datetime
) -> LocalTask:
    row = conn.execute(
        insert(tasks)
        .values(
            remote_id=claimed.id,
            type=claimed.type,
            params=claimed.params,
            priority=claimed.priority,
            status="queued",
            attempts=0,
            progress=0,
            created_at=now,
            **fresh,
        )
        .returning(*TASK_COLUMNS)
    ).one()
    return LocalTask.from_values(row)


def _pending(conn: Connection, task_id: int, kind: str) -> bool:
    """Whether a row of this kind waits in the outbox for the task."""
    return bool(
        conn.execute(
            select(func.count()).where(
                IS_PENDING, outbox.c.task_id == task_id, outbox.c.kind == kind
            )
        ).scalar_one()
    )


def _renew_lease(conn: Connection, known: LocalTask, fresh: dict[str, Any]) -> LocalTask:
    """The new claim's attempt and lease, the task left as it is."""
    row = conn.execute(
        update(tasks).where(tasks.c.id == known.id).values(**fresh).returning(*TASK_COLUMNS)
    ).one()
    return LocalTask.from_values(row)


def _renew_claim(conn: Connection, known: LocalTask, fresh: dict[str, Any]) -> LocalTask:
    """A newer claim of a task we know: new lease; a finished row goes back to the queue."""
    values: dict[str, Any] = dict(fresh)
    if known.status in FINISHED_TASK_STATUSES:
        values.update(status="queued", finished_at=None, result=None, progress=0, **_RELEASED)
    row = conn.execute(
        update(tasks).where(tasks.c.id == known.id).values(**values).returning(*TASK_COLUMNS)
    ).one()
    return LocalTask.from_values(row)
