"""``prune`` of a long history while a worker keeps completing tasks.

    python tests/bench/prune.py [FINISHED] [--dead-every K] [--no-postgres]

FINISHED done tasks (default 100,000), each with its settled outbox row (every
K-th row dead instead: its task is kept), pruned while a worker thread runs the
worker loop (``complete_and_dequeue``) on its own queued tasks. Prints the prune's
time, its longest chunk (the longest it held the write lock), and the worker's
longest call before and during the prune. Baseline: the worker's longest call on
the same queue with no prune running.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.seed

from bridge import LocalQueue
from bridge.storage.migrations import upgrade
from bridge.storage.pruning import Pruner
from tests.seed import seed_claimed_tasks, seed_finished_history

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Worker(threading.Thread):
    """The worker loop, timing every call; runs until stopped or out of tasks."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.calls, self.done = url, threading.Event(), [], 0

    def run(self) -> None:
        with LocalQueue(self.url) as queue:
            task = queue.dequeue()
            while task is not None and not self.stop.is_set():
                started = time.perf_counter()
                task = queue.complete_and_dequeue(task, {"ok": True})
                self.calls.append(time.perf_counter() - started)
                self.done += 1


def measure(url: str, finished: int, dead_every: int) -> None:
    upgrade(url)
    seed_finished_history(url, finished, dead_every=dead_every)
    seed_claimed_tasks(url, range(1, 100_001), task_type="live", worker_id="bench")
    worker = Worker(url)
    worker.start()
    time.sleep(1.0)
    alone = max(worker.calls)
    before = len(worker.calls)
    with LocalQueue(url) as queue:
        pruner = Pruner(queue.store.db)
        started = time.perf_counter()
        rows, gone = queue.store.prune(datetime(2026, 6, 1, tzinfo=timezone.utc), pruner)
        took = time.perf_counter() - started
    during = worker.calls[before:]
    worker.stop.set()
    worker.join()
    kept = finished - gone
    print(
        f"  pruned {rows:,} rows and {gone:,} tasks ({kept:,} kept for their dead rows) in "
        f"{took:.2f} s; {pruner.chunks} chunks, longest {pruner.longest_chunk * 1000:.0f} ms"
    )
    print(
        f"  worker: {len(during):,} tasks completed during the prune, longest call "
        f"{max(during) * 1000:.0f} ms (alone: {alone * 1000:.0f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("finished", nargs="?", type=int, default=100_000)
    parser.add_argument("--dead-every", type=int, default=20)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(f"SQLite, {args.finished:,} finished tasks, every {args.dead_every}th row dead")
        measure(str(Path(folder) / "q.db"), args.finished, args.dead_every)
    if not args.no_postgres:
        import psycopg

        schema = f"bench_prune_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
        try:
            print(f"PostgreSQL, {args.finished:,} finished tasks")
            measure(f"{PG_URL}?options=-csearch_path%3D{schema}", args.finished, args.dead_every)
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
