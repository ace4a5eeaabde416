"""Bulk setup shared by tests and benchmarks: claimed remote tasks, written in one transaction.

Setup only: it writes rows the daemon would have inserted one claim at a time,
so what is measured or tested starts from a known queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert

from bridge import LocalQueue
from bridge.schema import tasks


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
