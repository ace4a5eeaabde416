"""What exactly-once writes cost: the worker loop with a handler writing 3 rows through
``write_with_result`` against the same handler committing them itself.

    python tests/bench/effects.py [N] [--rounds R]

Each round runs both handlers once on a fresh SQLite file of N local tasks
(interleaved, the order alternating, so the machine's drift hits both alike), one worker
slot each. ``atomic``: the rows go into the queue's database with the result, one
transaction (one synced commit) a task. ``own commit``: the same write function on an
engine of the handler's own, to the same file, committed before the handler returns
(the way that wrote rows twice when a worker died), then the worker stores the result:
two commits a task (SQLite's default ``synchronous`` for the handler's). The rate is
from the first task's end to the last one's (the queue's own timestamps). Prints the
median of R rounds, every round, and atomic / own.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from bridge import LocalQueue, Worker
from bridge.storage.migrations import upgrade

TABLE = "CREATE TABLE ideas (task_n INTEGER NOT NULL, title TEXT NOT NULL)"
ROWS = 3


def store(connection: Any, n: int) -> None:
    connection.execute(
        text("INSERT INTO ideas (task_n, title) VALUES (:n, :t)"),
        [{"n": n, "t": f"idea {i} of {n}"} for i in range(ROWS)],
    )


def atomic(params: dict[str, Any], context: Any) -> dict[str, Any]:
    context.write_with_result(store, params["n"])
    return {"ideas_found": ROWS}


class OwnCommit:
    """The same handler with its own transaction: the same ``store`` on an engine of its
    own (SQLAlchemy, as the atomic way's ``store`` is), committed before it returns."""

    def __init__(self, path: str) -> None:
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as connection:
            store(connection, params["n"])
        return {"ideas_found": ROWS}


def rate(n: int, way: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        url = str(Path(folder) / "q.db")
        upgrade(url)
        with sqlite3.connect(url) as conn:
            conn.execute(TABLE)
        own = OwnCommit(url)
        handler = atomic if way == "atomic" else own
        with LocalQueue(url) as queue:
            ids = [queue.enqueue("bench", {"n": i}).id for i in range(n + 1)]
            worker = Worker(queue, {"bench": handler}, summary_seconds=3600)
            assert worker.run(max_tasks=n + 1) == n + 1
            first, last = (queue.get(ids[i]).finished_at for i in (0, -1))
            with queue.store.engine.connect() as conn:
                rows = conn.execute(text("SELECT count(*) FROM ideas")).scalar()
        own.engine.dispose()
    assert rows == ROWS * (n + 1), rows
    assert first is not None and last is not None
    return n / (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ways = ("atomic", "own commit")
    rates: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in ways if round_ % 2 == 0 else tuple(reversed(ways)):
            rates[way].append(rate(args.n, way))
    for way, values in rates.items():
        print(
            f"{way:10} median {statistics.median(values):6.0f} tasks/s   rounds "
            + " ".join(f"{v:.0f}" for v in values)
        )
    ratios = [a / o for a, o in zip(rates["atomic"], rates["own commit"], strict=True)]
    print(
        f"atomic / own commit (rate): median {statistics.median(ratios):.2f}, "
        f"rounds {' '.join(f'{r:.2f}' for r in ratios)} (above 1: the atomic way is faster)"
    )


if __name__ == "__main__":
    main()
