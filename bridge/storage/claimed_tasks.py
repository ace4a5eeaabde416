"""The daemon's writes of the ``tasks`` table: recording remote claims, and reaping
(expiring what can no longer start within its lease, re-queueing what a dead worker
held)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from taskmanager import ClaimedTask

from ..errors import DatabaseError
from ..models import FINISHED_TASK_STATUSES, NEW_TASK_FIELDS, LocalTask
from .connector import Connector
from .outbox import append_for_task
from .schema import IS_PENDING, IS_QUEUED, outbox, tasks
from .statements import RELEASED, TASK_COLUMNS, Prepared, json_text, seconds
from .task_reads import read_by_remote_id


class ClaimQueries:
    """The daemon's writes of ``tasks``."""

    db: Connector
    sql: Prepared

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
            "lease_expires_at": claimed.claimed_at + seconds(lease_seconds),
        }
        values = {f"c_{name}": value for name, value in fresh.items()}
        values.update(
            c_remote_id=claimed.id,
            c_type=claimed.type,
            c_params=json_text(claimed.params),  # the one encoder, at half json.dumps' cost
            c_priority=claimed.priority,
            c_created_at=now,
        )
        # Not fsynced: the daemon's claim intent, updated durably after the claims are
        # recorded (or left open), covers a power loss in between. Each claim commits on
        # its own: sharing commits (``shared_write``) was measured slower at a 20 ms
        # round trip (docs/BENCHMARKS.md, issue 29).
        with self.db.hot_write(durable=False) as conn:
            added = self.sql.claim_new.run(conn, values).first()
        if added is not None:
            return _new_claim(added[0], claimed, fresh, now), True
        for _ in range(2):  # a concurrent insert of the same remote id: read it back, once
            try:
                with self.db.write(durable=False) as conn:
                    known = read_by_remote_id(conn, claimed.id)
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
                    tasks.c.lease_expires_at <= now + seconds(lease_margin_seconds),
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
            tasks.c.lease_expires_at > now + seconds(lease_margin_seconds),
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
                    **RELEASED,
                )
            ).rowcount
            expired = conn.execute(
                update(tasks)
                .where(stale)
                .values(
                    status="expired",
                    finished_at=now,
                    error="the worker's lock and the remote lease both ran out",
                    **RELEASED,
                )
            ).rowcount
        return requeued, expired


def _new_claim(
    task_id: int, claimed: ClaimedTask, fresh: dict[str, Any], now: datetime
) -> LocalTask:
    """The task a claim just inserted, from what was inserted: reading its row back (and
    decoding its params again) was a sixth of what recording a claim cost. Its params
    are the claim's own dict, not a copy."""
    fields = {**NEW_TASK_FIELDS, **fresh}
    fields["id"] = task_id
    fields["remote_id"] = claimed.id
    fields["type"] = claimed.type
    fields["params"] = claimed.params
    fields["priority"] = claimed.priority
    fields["metadata"] = {}
    fields["created_at"] = now.astimezone(timezone.utc)
    fields["lease_expires_at"] = fresh["lease_expires_at"].astimezone(timezone.utc)
    return LocalTask.from_fields(fields)


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
        values.update(status="queued", finished_at=None, result=None, progress=0, **RELEASED)
    row = conn.execute(
        update(tasks).where(tasks.c.id == known.id).values(**values).returning(*TASK_COLUMNS)
    ).one()
    return LocalTask.from_values(row)
