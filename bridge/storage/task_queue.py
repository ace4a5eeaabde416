"""The worker's calls on the ``tasks`` table: enqueue, take, heartbeat, progress,
complete and fail, each one transaction of prepared statements (``statements``) in a
``hot_write``. A task's change and its outbox row are written in that one
transaction (promise 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection

from ..errors import TaskNotHeldError, WriteFailed
from ..models import NEW_TASK_FIELDS, LocalTask
from .connector import Connector
from .db_errors import passing_trouble
from .outbox import append_for_task
from .statements import Prepared, Statement, json_text, seconds
from .task_reads import read_task

# A local-only task to add: (type, params, priority, metadata).
NewTask = tuple[str, dict[str, Any], int, "dict[str, Any] | None"]
# A handler's write in its result's transaction: ``write(connection)``.
Write = Callable[[Connection], Any]
# What to take next in a result's transaction: (types, lock seconds, lease margin).
Take = tuple["Sequence[str] | None", float, float]


def _new_tasks(ids: Sequence[int], items: Sequence[NewTask], now: datetime) -> list[LocalTask]:
    """The tasks just inserted, from what was given (their rows hold nothing else)."""
    common = {**NEW_TASK_FIELDS, "created_at": now.astimezone(timezone.utc)}
    tasks = []
    for task_id, (task_type, params, priority, metadata) in zip(ids, items, strict=True):
        fields = common.copy()  # a key at a time: half the cost of update(**fields)
        fields["id"] = task_id
        fields["type"] = task_type
        fields["params"] = params
        fields["priority"] = priority
        fields["metadata"] = metadata or {}
        tasks.append(LocalTask.from_fields(fields))
    return tasks


# The order of an enqueued row's values (``Statement.positional``).
ENQUEUE_ORDER = ("v_type", "v_params", "v_priority", "v_metadata", "v_created_at")


def _enqueue_row(item: NewTask, created: Any, texts: dict[int, Any]) -> tuple[Any, ...]:
    """The row's values in ``ENQUEUE_ORDER``, every one in the driver's form: ``created``
    is the batch's time converted once, and ``texts`` the metadata already encoded in
    this batch, by identity (a batch's tasks usually share one metadata dict, encoded
    once for all of them); each text is kept with its dict, so that no other dict can
    take the same id meanwhile."""
    task_type, params, priority, metadata = item
    meta: str | None = None
    if metadata is not None:
        known = texts.get(id(metadata))
        if known is not None and known[0] is metadata:
            meta = known[1]
        else:
            meta = json_text(metadata)
            texts[id(metadata)] = (metadata, meta)
    return (task_type, json_text(params), priority, meta, created)


def _insert_in_a_row(statement: Statement, conn: Any, rows: list[tuple[Any, ...]]) -> list[int]:
    """SQLite: insert ``rows`` (``_enqueue_row``) with one ``executemany``; their ids,
    in order.

    Under the write lock each new row's id is the largest so far plus one (SQLite's
    rowid rule, without AUTOINCREMENT), so the batch's ids are the ``len(rows)``
    ending at ``last_insert_rowid()``; counted again, in case the rule ever did not
    hold (only past the largest rowid SQLite can store).
    """
    statement.insert_rows(conn, ENQUEUE_ORDER, rows)
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    first = last - len(rows) + 1
    found = conn.execute("SELECT count(*) FROM tasks WHERE id BETWEEN ? AND ?", (first, last))
    if found.fetchone()[0] != len(rows):
        raise RuntimeError(f"enqueue_many: the {len(rows)} new ids are not {first}..{last}")
    return list(range(first, last + 1))


def _token(task: LocalTask) -> dict[str, Any]:
    """The claim token: only the holder of this attempt may change the running task."""
    return {"p_id": task.id, "p_holder": task.locked_by, "p_attempts": task.attempts}


class WorkerQueries:
    """The worker's writes of ``tasks`` (and their outbox rows)."""

    db: Connector
    sql: Prepared

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
            row = _enqueue_row(item, self.sql.enqueue_rows.converted(now), {})
            task_id = self.sql.enqueue_rows.insert(conn, ENQUEUE_ORDER, row)
        return _new_tasks([task_id], [item], now)[0]

    def enqueue_many(self, items: Sequence[NewTask], now: datetime) -> list[LocalTask]:
        """Local-only tasks ``(type, params, priority, metadata)``, in ONE transaction."""
        created, texts = self.sql.enqueue_rows.converted(now), dict[int, Any]()
        rows = [_enqueue_row(item, created, texts) for item in items]
        with self.db.hot_write() as conn:
            if len(rows) > 1 and not self.db.is_postgresql:
                added = _insert_in_a_row(self.sql.enqueue_rows, conn, rows)
            else:
                returning = self.sql.enqueue
                values = (dict(zip(ENQUEUE_ORDER, row, strict=True)) for row in rows)
                added = [returning.run(conn, named, ready=True).one()[0] for named in values]
        return _new_tasks(added, items, now)

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
            "p_lease_floor": now + seconds(lease_margin_seconds),
            "p_worker": locked_by,
            "p_until": now + seconds(lock_seconds),
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
        current = read_task(self.sql, conn, task.id)
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
        until = now + seconds(lock_seconds)
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
        until = now + seconds(lock_seconds)
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
        self.db.shared_write(lambda conn: self._complete(conn, task, result, now))

    def complete_and_dequeue(
        self,
        task: LocalTask,
        result: dict[str, Any],
        types: Sequence[str] | None,
        lock_seconds: float,
        lease_margin_seconds: float,
        now: datetime,
    ) -> LocalTask | None:
        """Finish ``task`` and take the next one in ONE transaction (one commit per task,
        or fewer: other threads' results may share it)."""

        def finish_and_take(conn: Any) -> LocalTask | None:
            self._complete(conn, task, result, now)
            return self._dequeue(
                conn, types, str(task.locked_by), lock_seconds, lease_margin_seconds, now
            )

        return self.db.shared_write(finish_and_take)

    def complete_with_writes(
        self,
        task: LocalTask,
        result: dict[str, Any],
        writes: Sequence[Write],
        now: datetime,
        take: Take | None = None,
    ) -> LocalTask | None:
        """``complete`` and the handler's own ``writes``, each ``write(connection)`` on the
        transaction's SQLAlchemy ``Connection``, committed together or not at all; with
        ``take`` (types, lock seconds, lease margin), the next task in the same transaction.

        The task is checked first (a task no longer held runs no write: ``TaskNotHeldError``).
        A write that raises rolls everything back and comes out as ``WriteFailed``; only
        the database's own passing trouble (locked, a full disk, a lost connection) comes
        out as the ``DatabaseError`` it is, for the caller to wait out and try again whole.
        A write that caught an error PostgreSQL keeps (the transaction is aborted: its
        COMMIT would roll back) fails the same way: nothing is kept, the task fails.
        """
        with self.db.write() as conn:
            self._complete(conn, task, result, now)
            for write in writes:
                try:
                    write(conn)
                except self.db.operational_errors as exc:
                    if passing_trouble(exc):
                        raise
                    raise WriteFailed(exc) from exc
                except Exception as exc:
                    raise WriteFailed(exc) from exc
                if self.db.transaction_aborted(conn):
                    raise WriteFailed(
                        RuntimeError(
                            "a statement of the write failed and was caught: PostgreSQL "
                            "aborted the transaction, so nothing of it could be kept"
                        )
                    )
            if take is None:
                return None
            types, lock_seconds, lease_margin_seconds = take
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
        detail: str | None = None,
    ) -> None:
        """Fail the task, or (``retry``) put it back in the queue, handed out again from
        ``not_before`` on (at once when ``None``); ``detail`` (a traceback) is kept with
        it, locally."""
        with self.db.hot_write() as conn:
            if retry:
                self._update_held(
                    conn,
                    self.sql.requeue_held,
                    task,
                    "retry",
                    p_error=error,
                    p_detail=detail,
                    p_not_before=not_before,
                )
            else:
                values = {"p_error": error, "p_detail": detail}
                self._finish(conn, task, "fail", {"error": error}, now, **values)

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
