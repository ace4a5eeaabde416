"""The reaper's and status's queries on a queue with many finished tasks.

    python tests/bench/reap.py [FINISHED]

Before ``prune``, finished tasks stay in the table and the daemon's reap job
(every 2 s) searches it. Prints each query's time and whether it held the
SQLite write lock while searching (which stalls every worker's dequeue and
complete for that long), next to a bare full scan of the table as the baseline.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bridge import BridgeConfig, DatabaseError, LocalQueue
from bridge.storage.migrations import upgrade


def _fill(db: str, finished: int) -> None:
    at = "2026-11-28 12:00:00.000000"
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO tasks (remote_id, type, params, priority, status, attempts, progress, "
            "created_at, started_at, finished_at, result) "
            "VALUES (?, 't', ?, 0, 'done', 1, 100, ?, ?, ?, '{\"ok\": true}')",
            ((i, f'{{"n": {i}, "pad": "{"x" * 200}"}}', at, at, at) for i in range(finished)),
        )


def _ms(call: Callable[[], object], repeat: int = 5) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("finished", nargs="?", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "q.db")
        upgrade(db)
        _fill(db, args.finished)
        config = BridgeConfig.load(env={}, db_url=db, busy_timeout_seconds=0.1)
        with LocalQueue(config=config) as queue, sqlite3.connect(db) as bare:
            store, now = queue.store, datetime.now(timezone.utc)
            scan = _ms(
                lambda: bare.execute("SELECT count(*) FROM tasks WHERE error IS NULL").fetchone()
            )
            print(f"{args.finished:,} finished tasks; bare full scan {scan:.1f} ms")
            for name, call in [
                ("requeue_stale_locks (reap)", lambda: store.requeue_stale_locks(30, now)),
                ("leases_at_risk (reap)", lambda: store.leases_at_risk(30, now)),
                ("counts (status, metrics)", store.counts),
                ("queued_count (pull)", lambda: store.queued_count("t")),
            ]:
                took = _ms(call)
                # Does it need the write lock? Try it while another connection holds it.
                holder = sqlite3.connect(db, isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
                try:
                    call()
                    locks = "no"
                except DatabaseError:
                    locks = "yes"
                finally:
                    holder.execute("ROLLBACK")
                    holder.close()
                print(
                    f"  {name:28s} {took:7.1f} ms  ({took / scan:.2f}x the scan)  "
                    f"needs the write lock when nothing is stale: {locks}"
                )


if __name__ == "__main__":
    main()
