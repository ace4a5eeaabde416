"""``prune`` at scale: short chunks, a worker alongside, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from bridge import LocalQueue
from bridge.storage.pruning import MAX_WINDOW, MIN_WINDOW, Pruner, _next_window
from bridge.storage.schema import outbox, tasks
from tests.seed import seed_claimed_tasks, seed_finished_history

HISTORY = 20_000
LONGEST_WAIT = 0.5  # seconds: a chunk aims at 20 ms; before chunking, a worker waited minutes


def test_window_grows_when_quick_and_shrinks_when_slow():
    assert _next_window(1000, 0.001) == 2000
    assert _next_window(1000, 0.015) == 1000
    assert _next_window(1000, 0.08) == 500
    assert _next_window(MAX_WINDOW, 0.0) == MAX_WINDOW
    assert _next_window(MIN_WINDOW, 1.0) == MIN_WINDOW


def test_prune_in_chunks_while_a_worker_completes_tasks(migrated_url: str):
    seed_finished_history(migrated_url, HISTORY, dead_every=10)
    seed_claimed_tasks(migrated_url, range(1, 20_001), task_type="live", worker_id="w")
    calls: list[float] = []
    pruning, stop = threading.Event(), threading.Event()

    def worker() -> None:
        with LocalQueue(migrated_url) as queue:
            task = queue.dequeue()
            while task is not None and not stop.is_set():
                started = time.perf_counter()
                task = queue.complete_and_dequeue(task, {"ok": True})
                if pruning.is_set():
                    calls.append(time.perf_counter() - started)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with LocalQueue(migrated_url) as queue:
            pruner = Pruner(queue.store.db)
            pruning.set()
            rows, finished = queue.store.prune(datetime(2026, 6, 1, tzinfo=timezone.utc), pruner)
            pruning.clear()
            counts = queue.status()
    finally:
        stop.set()
        thread.join()
    assert (rows, finished) == (HISTORY * 9 // 10, HISTORY * 9 // 10)
    assert counts.tasks[("history", "done")] == HISTORY // 10  # kept for their dead rows
    assert counts.outbox["dead"] == HISTORY // 10
    assert pruner.chunks > 2 and calls, "the prune ran in one chunk, or the worker never ran"
    assert max(calls) < LONGEST_WAIT, f"the worker waited {max(calls):.3f} s on the prune"


def test_a_pruned_task_leaves_its_newer_rows_without_it(queue: LocalQueue):
    """A task finished long ago whose row was settled recently: the task goes, the row
    stays (newer than the cut-off) with ``task_id`` NULL (the foreign key's action)."""
    seed_finished_history(queue.config.db_url, 2)
    cutoff = datetime(2026, 6, 1, tzinfo=timezone.utc)
    with queue.store.engine.begin() as conn:
        first = conn.execute(select(func.min(outbox.c.id))).scalar_one()
        conn.execute(
            update(outbox).where(outbox.c.id == first).values(settled_at=cutoff + timedelta(days=1))
        )
    assert queue.store.prune(cutoff) == (1, 2)
    with queue.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tasks)).scalar_one() == 0
        assert conn.execute(select(outbox.c.id, outbox.c.task_id)).all() == [(first, None)]
