"""The bridge's storage boundary: every query of the local queue lives here.

Each public method is one transaction. On SQLite a write transaction begins
with ``BEGIN IMMEDIATE`` (see ``database``), so a dequeue's select-and-update is
atomic across processes; on PostgreSQL the dequeue's inner select uses
``FOR UPDATE SKIP LOCKED``. Times are passed in (``now``) so callers, and
tests, control the clock.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from taskmanager import ClaimedTask

from .database import SYNCHRONOUS_FULL, driver_errors, translated_errors
from .errors import DatabaseError, TaskNotHeldError
from .models import CachedTaskType, LocalTask, OutboxEntry, QueueCounts
from .schema import (
    FINISHED_TASK_STATUSES,
    IS_PENDING,
    IS_PENDING_CREATE,
    IS_QUEUED,
    bridge_state,
    outbox,
    task_types,
    tasks,
)
from .statements import TASK_COLUMNS, Prepared, Statement

_TASK_COLUMNS = TASK_COLUMNS

# Built once (not hot enough for statements.Prepared, but no reason to rebuild them).
_SETTLE = (
    update(outbox)
    .where(outbox.c.id == bindparam("p_id"), outbox.c.status == "pending")
    .values(
        status=bindparam("p_status"),
        last_error=bindparam("p_reason"),
        settled_at=bindparam("p_now"),
        attempts=outbox.c.attempts + 1,
    )
)
_APPEND_RETURNING_ID = insert(outbox).returning(outbox.c.id)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class _ThreadConnection:
    """One thread's connection; closing it (or losing it with the thread) returns it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def __del__(self) -> None:
        self.close()


class Store:
    """All reads and writes of the local queue, one transaction per method."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._sql = Prepared(engine.dialect)
        self._thread_local = threading.local()
        self._driver_errors = driver_errors(engine)
        self._holders: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()

    def close(self) -> None:
        with self._connections_lock:
            holders = list(self._holders)
        for holder in holders:
            holder.close()
        self.engine.dispose()

    def _connection(self) -> Connection:
        """This thread's connection, opened once (a pool checkout per transaction cost
        more than the transaction's SQL on the worker's hot path).

        It goes back to the pool when the thread ends (its holder is freed with the
        thread's local storage), so short-lived threads do not exhaust the pool.
        """
        holder: _ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is None or holder.conn.closed or holder.conn.invalidated:
            holder = _ThreadConnection(self.engine.connect())
            self._thread_local.holder = holder
            with self._connections_lock:
                self._holders.add(holder)
        return holder.conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with translated_errors(self.engine):
            conn = self._connection()
            try:
                with conn.begin():
                    yield conn
            except self._driver_errors:
                # A failure below SQLAlchemy (driver cursor, raw BEGIN) leaves it unaware of
                # the connection's state: drop the connection, the next call opens a new one.
                self._drop(conn)
                raise

    @contextlib.contextmanager
    def _hot_write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction for the worker's calls, which run only prepared statements.

        On SQLite it is begun and committed on the driver connection itself: SQLAlchemy's
        transaction bookkeeping cost about as much as the three statements of a
        ``complete_and_dequeue``. SQLAlchemy sees an idle connection throughout, so
        nothing else may run on it inside (``Statement.run`` only). PostgreSQL takes
        the ordinary path.

        ``durable=False`` (SQLite only) commits without waiting for the disk: the
        commit reaches the OS, so it survives any process crash, and only a power loss
        or OS crash can undo it. Used for taking a task: that undone, the task is simply
        queued again, and every worker that could hold it died in the same crash. The
        WAL is written in order, so the next durable commit (the task's completion)
        makes this one durable too. Not on PostgreSQL: a fleet's workers on other
        machines outlive a database server crash.
        """
        if self.is_postgresql:
            with self._write() as conn:
                yield conn
            return
        with translated_errors(self.engine):
            conn = self._connection()
            driver = conn.connection.driver_connection
            try:
                if not durable:
                    driver.execute("PRAGMA synchronous = NORMAL")  # type: ignore[union-attr]
                driver.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
            except self._driver_errors:
                self._drop(conn)
                raise
            try:
                yield conn
                driver.execute("COMMIT")  # type: ignore[union-attr]
            except BaseException:
                try:
                    driver.rollback()  # type: ignore[union-attr]
                    if not durable:
                        driver.execute(SYNCHRONOUS_FULL)  # type: ignore[union-attr]
                except self._driver_errors:
                    self._drop(conn)  # unknown state, or skipping fsyncs: never reuse it
                raise
            if not durable:
                try:
                    driver.execute(SYNCHRONOUS_FULL)  # type: ignore[union-attr]
                except self._driver_errors:
                    self._drop(conn)
                    raise

    def _drop(self, conn: Connection) -> None:
        """Forget a connection in an unknown state; this thread's next call opens another."""
        self._thread_local.holder = None
        with contextlib.suppress(Exception):
            conn.invalidate()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with (
            translated_errors(self.engine),
            self.engine.connect().execution_options(readonly=True) as conn,
            conn.begin(),
        ):
            yield conn

    # -- tasks: reading ----------------------------------------------------------------
    def _task(self, conn: Connection, task_id: int) -> LocalTask | None:
        row = self._sql.task_by_id.run(conn, {"p_id": task_id}).first()
        return LocalTask.from_values(row) if row is not None else None

    def get_task(self, task_id: int) -> LocalTask | None:
        with self._read() as conn:
            return self._task(conn, task_id)

    def get_task_by_remote_id(self, remote_id: int) -> LocalTask | None:
        with self._read() as conn:
            row = (
                conn.execute(select(*_TASK_COLUMNS).where(tasks.c.remote_id == remote_id))
                .mappings()
                .first()
            )
        return LocalTask.from_row(row) if row is not None else None

    # -- tasks: the worker's side ------------------------------------------------------
    def enqueue(
        self,
        task_type: str,
        params: dict[str, Any],
        priority: int,
        metadata: dict[str, Any] | None,
        now: datetime,
    ) -> LocalTask:
        """A local-only task (no remote id): the specification's hybrid pattern."""
        values = {
            "type": task_type,
            "params": params,
            "priority": priority,
            "status": "queued",
            "attempts": 0,
            "progress": 0,
            "created_at": now,
            "metadata": metadata,
        }
        with self._hot_write() as conn:
            row = self._sql.enqueue.run(conn, {f"v_{k}": v for k, v in values.items()}).one()
        return LocalTask.from_values(row)

    def dequeue(
        self,
        types: Sequence[str] | None,
        worker_id: str,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        """Lock the best queued task to ``worker_id``: highest priority, then oldest.

        Skips tasks whose remote lease ends within the margin: they could not be
        finished in time, and handing them out would break promise 2.
        """
        with self._hot_write(durable=False) as conn:
            return self._dequeue(conn, types, worker_id, lock_seconds, lease_margin_seconds, now)

    def _dequeue(
        self,
        conn: Connection,
        types: Sequence[str] | None,
        worker_id: str,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        values: dict[str, Any] = {
            "p_lease_floor": now + _seconds(lease_margin_seconds),
            "p_worker": worker_id,
            "p_until": now + _seconds(lock_seconds),
            "p_now": now,
        }
        wanted = list(types or ())
        values.update({f"p_type_{i}": name for i, name in enumerate(wanted)})
        row = self._sql.dequeue(len(wanted)).run(conn, values).first()
        return LocalTask.from_values(row) if row is not None else None

    @staticmethod
    def _token(task: LocalTask) -> dict[str, Any]:
        return {"p_id": task.id, "p_holder": task.locked_by, "p_attempts": task.attempts}

    def _refuse(self, conn: Connection, task: LocalTask, action: str) -> TaskNotHeldError:
        current = self._task(conn, task.id)
        if current is None:
            return TaskNotHeldError(f"cannot {action} task {task.id}: it no longer exists")
        if current.status == "running":
            why = f"it is now held by {current.locked_by} (attempt {current.attempts})"
        else:
            why = f"it is {current.status} now"
        return TaskNotHeldError(
            f"cannot {action} task {task.id}: {task.locked_by} (attempt {task.attempts}) "
            f"no longer holds it; {why}. Nothing was changed.",
            current.status,
        )

    def _update_held(
        self, conn: Connection, statement: Statement, task: LocalTask, action: str, **values: Any
    ) -> None:
        if statement.run(conn, {**self._token(task), **values}).rowcount != 1:
            raise self._refuse(conn, task, action)

    def heartbeat(self, task: LocalTask, lock_seconds: float, now: datetime) -> datetime:
        until = now + _seconds(lock_seconds)
        with self._hot_write() as conn:
            self._update_held(conn, self._sql.heartbeat, task, "heartbeat", p_until=until)
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
        with self._hot_write() as conn:
            self._update_held(
                conn,
                self._sql.progress,
                task,
                "report progress on",
                p_progress=percent,
                p_until=now + _seconds(lock_seconds),
            )
            if task.remote_id is None:
                return
            payload = {"progress": percent, "message": message}
            replaced = self._sql.replace_progress.run(
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
                self._append(conn, "progress", payload, now, task=task)

    def complete(self, task: LocalTask, result: dict[str, Any], now: datetime) -> None:
        with self._hot_write() as conn:
            self._finish(conn, task, "complete", {"result": result}, now, p_result=result)

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
        with self._hot_write() as conn:
            self._finish(conn, task, "complete", {"result": result}, now, p_result=result)
            return self._dequeue(
                conn, types, str(task.locked_by), lock_seconds, lease_margin_seconds, now
            )

    def fail(self, task: LocalTask, error: str, retry: bool, now: datetime) -> None:
        with self._hot_write() as conn:
            if retry:
                self._update_held(conn, self._sql.requeue_held, task, "retry", p_error=error)
            else:
                self._finish(conn, task, "fail", {"error": error}, now, p_error=error)

    def _finish(
        self,
        conn: Connection,
        task: LocalTask,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        **values: Any,
    ) -> None:
        """The task's end and its outbox row, in the caller's transaction: promise 1."""
        statement = self._sql.finish_done if kind == "complete" else self._sql.finish_failed
        progress = statement.run(conn, {**self._token(task), "p_now": now, **values}).scalar()
        if progress is None:
            raise self._refuse(conn, task, kind)
        if task.remote_id is None:
            return
        if progress:
            self._sql.supersede_progress.run(
                conn,
                {
                    "p_task_id": task.id,
                    "p_now": now,
                    "p_reason": f"task ended locally ({kind}) before this progress was sent",
                },
            )
        self._append(conn, kind, payload, now, task=task)

    # -- outbox ------------------------------------------------------------------------
    @staticmethod
    def _outbox_values(
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        task: LocalTask | None,
        dedupe_key: str | None,
    ) -> dict[str, Any]:
        """A full outbox row: the same keys every time, so one compiled INSERT serves all."""
        return {
            "kind": kind,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "dedupe_key": dedupe_key,
            "task_id": task.id if task else None,
            "remote_id": task.remote_id if task else None,
            "remote_attempt": task.remote_attempt if task else None,
            "remote_worker_id": task.remote_worker_id if task else None,
        }

    def _append(
        self,
        conn: Connection,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        *,
        task: LocalTask | None = None,
    ) -> None:
        self._sql.append.run(conn, self._outbox_values(kind, payload, now, task, None))

    def _append_id(
        self,
        conn: Connection,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        *,
        dedupe_key: str | None = None,
    ) -> int:
        values = self._outbox_values(kind, payload, now, None, dedupe_key)
        return int(conn.execute(_APPEND_RETURNING_ID, values).scalar_one())

    def _entry(self, conn: Connection, row_id: int) -> OutboxEntry:
        row = conn.execute(select(outbox).where(outbox.c.id == row_id)).mappings().one()
        return OutboxEntry.from_row(row)

    def queue_create_task(
        self,
        task_type: str,
        params: dict[str, Any],
        priority: int,
        dedupe_key: str,
        now: datetime,
    ) -> OutboxEntry:
        """Append a remote create; a pending create with the same key is returned instead."""
        with self._write() as conn:
            existing = conn.execute(
                select(outbox.c.id).where(
                    IS_PENDING_CREATE,
                    outbox.c.dedupe_key == dedupe_key,
                )
            ).scalar()
            if existing is None:
                payload = {"type": task_type, "params": params, "priority": priority}
                existing = self._append_id(conn, "create_task", payload, now, dedupe_key=dedupe_key)
            return self._entry(conn, existing)

    def queue_register_type(
        self, name: str, version: str, schema: dict[str, Any], now: datetime
    ) -> OutboxEntry:
        """Cache the schema at once (offline validation) and append the remote register."""
        with self._write() as conn:
            self._upsert_type(conn, name, None, version, schema, now, keep_remote_id=True)
            payload = {"name": name, "version": version, "param_schema": schema}
            return self._entry(conn, self._append_id(conn, "register_type", payload, now))

    def pending_outbox(self, now: datetime, limit: int) -> list[OutboxEntry]:
        """Pending rows that are due, oldest first."""
        statement = (
            select(outbox)
            .where(
                IS_PENDING,
                or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [OutboxEntry.from_row(row) for row in conn.execute(statement).mappings()]

    def outbox_entries(self, status: str | None = None, limit: int = 100) -> list[OutboxEntry]:
        statement = select(outbox).order_by(outbox.c.id).limit(limit)
        if status is not None:
            statement = statement.where(outbox.c.status == status)
        with self._read() as conn:
            return [OutboxEntry.from_row(row) for row in conn.execute(statement).mappings()]

    def settle_outbox(self, row_id: int, status: str, reason: str | None, now: datetime) -> None:
        """End a pending row as delivered, superseded or dead, with its reason."""
        self.settle_outbox_many([(row_id, status, reason)], now)

    def settle_outbox_many(
        self, verdicts: Sequence[tuple[int, str, str | None]], now: datetime
    ) -> None:
        """Record many rows' ends in one transaction (the push's batch).

        Recording after sending is safe to lose: a row sent but not recorded is
        sent again, and every kind of row replays idempotently.
        """
        if not verdicts:
            return
        for _, status, _ in verdicts:
            if status not in ("delivered", "superseded", "dead"):
                raise ValueError(f"not a final outbox status: {status}")
        params = [
            {"p_id": row_id, "p_status": status, "p_reason": reason, "p_now": now}
            for row_id, status, reason in verdicts
        ]
        with self._write() as conn:
            conn.execute(_SETTLE, params)

    def retry_outbox_at(self, row_id: int, when: datetime, error: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row_id, outbox.c.status == "pending")
                .values(next_attempt_at=when, last_error=error, attempts=outbox.c.attempts + 1)
            )

    def requeue_outbox(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """Make dead rows (all, or the given ones) pending again, due now."""
        statement = update(outbox).where(outbox.c.status == "dead")
        if row_ids is not None:
            statement = statement.where(outbox.c.id.in_(list(row_ids)))
        with self._write() as conn:
            return conn.execute(
                statement.values(status="pending", next_attempt_at=now, settled_at=None)
            ).rowcount

    def discard_outbox(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """End dead rows (all, or the given ones) as superseded by the operator's decision.

        The row and its first reason stay, so the record of what was not delivered survives.
        """
        statement = update(outbox).where(outbox.c.status == "dead")
        if row_ids is not None:
            statement = statement.where(outbox.c.id.in_(list(row_ids)))
        reason = "discarded by the operator; it was dead because: " + func.coalesce(
            outbox.c.last_error, ""
        )
        with self._write() as conn:
            return conn.execute(
                statement.values(status="superseded", settled_at=now, last_error=reason)
            ).rowcount

    # -- the daemon's side -------------------------------------------------------------
    def insert_claimed(
        self, claimed: ClaimedTask, lease_seconds: float, now: datetime
    ) -> tuple[LocalTask, bool]:
        """Record a remote claim locally; idempotent on (remote id, remote attempt).

        Returns the task and whether anything changed. A newer claim of a task we
        already know renews the lease of a queued/running row, and re-queues a
        failed/expired/cancelled one; a ``done`` row is left alone (its completion
        is in the outbox and the server still shows us as the claimer).
        """
        lease = claimed.claimed_at + _seconds(lease_seconds)
        fresh = {
            "remote_attempt": claimed.attempts,
            "remote_worker_id": claimed.worker_id,
            "lease_expires_at": lease,
        }
        for _ in range(2):  # a concurrent insert of the same remote id: read it back, once
            try:
                with self._write() as conn:
                    row = (
                        conn.execute(select(*_TASK_COLUMNS).where(tasks.c.remote_id == claimed.id))
                        .mappings()
                        .first()
                    )
                    if row is None:
                        created = (
                            conn.execute(
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
                                .returning(*_TASK_COLUMNS)
                            )
                            .mappings()
                            .one()
                        )
                        return LocalTask.from_row(created), True
                    known = LocalTask.from_row(row)
                    if (known.remote_attempt or 0) >= claimed.attempts or known.status == "done":
                        return known, False
                    values: dict[str, Any] = dict(fresh)
                    if known.status in FINISHED_TASK_STATUSES:
                        values.update(
                            status="queued",
                            locked_by=None,
                            locked_until=None,
                            finished_at=None,
                            result=None,
                            progress=0,
                        )
                    updated = (
                        conn.execute(
                            update(tasks)
                            .where(tasks.c.id == known.id)
                            .values(**values)
                            .returning(*_TASK_COLUMNS)
                        )
                        .mappings()
                        .one()
                    )
                    return LocalTask.from_row(updated), True
            except DatabaseError as exc:
                if isinstance(exc.__cause__, IntegrityError):  # another writer inserted it first
                    continue
                raise
        raise RuntimeError(f"remote task {claimed.id} could not be recorded")  # pragma: no cover

    def expire_unstartable(self, lease_margin_seconds: float, now: datetime) -> int:
        """Queued remote tasks whose lease ends within the margin will never be handed out."""
        with self._write() as conn:
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

        Found first in a read transaction, which blocks no worker: the search scans
        the tasks table (finished tasks included, until pruned), and under the write
        lock that scan stalled every worker's dequeue and complete (42 ms every reap
        at 100,000 finished tasks). The write lock is taken only when there is
        something to change, and the conditions are checked again under it.
        """
        stale = and_(tasks.c.status == "running", tasks.c.locked_until < now)
        lease_ok = or_(
            tasks.c.lease_expires_at.is_(None),
            tasks.c.lease_expires_at > now + _seconds(lease_margin_seconds),
        )
        with self._read() as conn:
            found = conn.execute(select(tasks.c.id).where(stale)).scalars().all()
        if not found:
            return 0, 0
        stale = and_(stale, tasks.c.id.in_(found))
        with self._write() as conn:
            requeued = conn.execute(
                update(tasks)
                .where(stale, lease_ok)
                .values(
                    status="queued",
                    locked_by=None,
                    locked_until=None,
                    error="the worker's lock ran out (worker died?); re-queued",
                )
            ).rowcount
            expired = conn.execute(
                update(tasks)
                .where(stale)
                .values(
                    status="expired",
                    locked_by=None,
                    locked_until=None,
                    finished_at=now,
                    error="the worker's lock and the remote lease both ran out",
                )
            ).rowcount
        return requeued, expired

    def counts(self) -> QueueCounts:
        with self._read() as conn:
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

    def prune(self, before: datetime) -> tuple[int, int]:
        """Delete settled outbox rows and finished tasks older than ``before``; (rows, tasks).

        Nothing pending is touched, dead rows are kept for the operator, and a
        task is kept while any of its outbox rows is pending.
        """
        with self._write() as conn:
            rows = conn.execute(
                delete(outbox).where(
                    outbox.c.status.in_(("delivered", "superseded")), outbox.c.settled_at < before
                )
            ).rowcount
            unsettled = exists().where(
                outbox.c.task_id == tasks.c.id, outbox.c.status.in_(("pending", "dead"))
            )
            finished = conn.execute(
                delete(tasks).where(
                    tasks.c.status.in_(FINISHED_TASK_STATUSES),
                    tasks.c.finished_at < before,
                    ~unsettled,
                )
            ).rowcount
        return rows, finished

    # -- what the daemon's pull and reap decisions read ---------------------------------
    def queued_count(self, task_type: str) -> int:
        """Tasks of a type waiting for a worker (answered from the queued-tasks index)."""
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(IS_QUEUED, tasks.c.type == task_type)
                ).scalar_one()
            )

    def recent_duration(self, task_type: str, sample: int = 50) -> float | None:
        """Mean seconds from start to finish of the latest finished tasks of a type."""
        with self._read() as conn:
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
        with self._read() as conn:
            rows = (
                conn.execute(
                    select(*_TASK_COLUMNS).where(
                        tasks.c.status == "running",
                        tasks.c.lease_expires_at.is_not(None),
                        tasks.c.lease_expires_at <= now + _seconds(lease_margin_seconds),
                    )
                )
                .mappings()
                .all()
            )
        return [LocalTask.from_row(row) for row in rows]

    def outbox_backlog(self) -> tuple[int, datetime | None]:
        """(pending rows, creation time of the oldest)."""
        with self._read() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(IS_PENDING)
            ).one()
        return int(count), oldest

    # -- task types and bridge state -------------------------------------------------------
    @staticmethod
    def _upsert_type(
        conn: Connection,
        name: str,
        remote_id: int | None,
        version: str | None,
        schema: dict[str, Any] | None,
        now: datetime,
        *,
        keep_remote_id: bool = False,
    ) -> None:
        values: dict[str, Any] = {"version": version, "param_schema": schema, "updated_at": now}
        if not keep_remote_id:
            values["remote_id"] = remote_id
        if (
            conn.execute(
                update(task_types).where(task_types.c.name == name).values(**values)
            ).rowcount
            == 0
        ):
            conn.execute(
                insert(task_types).values(
                    name=name,
                    remote_id=remote_id,
                    **{k: v for k, v in values.items() if k != "remote_id"},
                )
            )

    def cache_task_type(
        self,
        name: str,
        remote_id: int | None,
        version: str | None,
        schema: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        with self._write() as conn:
            self._upsert_type(conn, name, remote_id, version, schema, now)

    def cached_task_type(self, name: str) -> CachedTaskType | None:
        with self._read() as conn:
            row = (
                conn.execute(select(task_types).where(task_types.c.name == name)).mappings().first()
            )
        if row is None:
            return None
        return CachedTaskType(row["name"], row["remote_id"], row["version"], row["param_schema"])

    def get_state(self, key: str) -> str | None:
        with self._read() as conn:
            value = conn.execute(
                select(bridge_state.c.value).where(bridge_state.c.key == key)
            ).scalar()
        return str(value) if value is not None else None

    def set_state(self, key: str, value: str, now: datetime) -> None:
        with self._write() as conn:
            if (
                conn.execute(
                    update(bridge_state)
                    .where(bridge_state.c.key == key)
                    .values(value=value, updated_at=now)
                ).rowcount
                == 0
            ):
                conn.execute(insert(bridge_state).values(key=key, value=value, updated_at=now))
