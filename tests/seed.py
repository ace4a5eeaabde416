"""Bulk setup shared by tests and benchmarks: claimed remote tasks, written in one transaction.

Setup only: it writes rows the daemon would have inserted one claim at a time,
so what is measured or tested starts from a known queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, insert, select

from bridge import LocalQueue
from bridge.storage.schema import tasks


def seed_claimed_tasks(
    url: str,
    remote_ids: Sequence[int],
    *,
    task_type: str,
    worker_id: str,
    lease: timedelta = timedelta(hours=1),
) -> None:
    """Queued local tasks for these remote ids, claimed by ``worker_id``, params {"n": i}."""
    now = datetime.now(timezone.utc)
    rows = [
        {
            "remote_id": remote_id,
            "type": task_type,
            "params": {"n": i},
            "priority": 0,
            "status": "queued",
            "attempts": 0,
            "progress": 0,
            "remote_attempt": 1,
            "remote_worker_id": worker_id,
            "lease_expires_at": now + lease,
            "created_at": now,
        }
        for i, remote_id in enumerate(remote_ids)
    ]
    with LocalQueue(url) as queue, queue.store.engine.begin() as conn:
        conn.execute(insert(tasks), rows)


def seed_finished_history(
    url: str, count: int, *, dead_every: int = 0, at: datetime | None = None
) -> None:
    """``count`` done tasks finished at ``at``, each with its delivered ``complete`` row
    (every ``dead_every``-th row dead instead: its task must survive a prune)."""
    from bridge.storage.schema import outbox

    at = at or datetime(2026, 1, 1, tzinfo=timezone.utc)
    with LocalQueue(url) as queue, queue.store.engine.begin() as conn:
        first = conn.execute(select(func.coalesce(func.max(tasks.c.id), 0))).scalar_one()
        conn.execute(
            insert(tasks),
            [
                {
                    "remote_id": None,
                    "type": "history",
                    "params": {"n": n, "pad": "x" * 100},
                    "priority": 0,
                    "status": "done",
                    "attempts": 1,
                    "progress": 100,
                    "result": {"ok": True},
                    "created_at": at,
                    "started_at": at,
                    "finished_at": at,
                }
                for n in range(count)
            ],
        )
        ids = conn.execute(
            select(tasks.c.id).where(tasks.c.id > first, tasks.c.type == "history")
        ).scalars()
        conn.execute(
            insert(outbox),
            [
                {
                    "kind": "complete",
                    "task_id": task_id,
                    "payload": {"result": {"ok": True}},
                    "status": "dead" if dead_every and task_id % dead_every == 0 else "delivered",
                    "attempts": 1,
                    "created_at": at,
                    "settled_at": at,
                }
                for task_id in ids
            ],
        )
