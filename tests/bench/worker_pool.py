"""The worker loop's throughput, thread mode vs ``--pool process``, and the process pool's
overhead per task.

    python tests/bench/worker_pool.py [N] [--rounds R]

Each round runs both modes once on a fresh SQLite file of N local tasks (interleaved,
the order alternating, so the machine's drift hits both alike), one slot each, a
handler that returns at once: what is measured is the runner, not the work. The
overhead per task is 1/rate(process) - 1/rate(thread). Prints the median of R
rounds and every round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from bridge import LocalQueue, Worker
from bridge.storage.migrations import upgrade


def instant(params: dict[str, Any]) -> dict[str, Any]:
    return {"n": params["n"]}


def worker_rate(n: int, pool: str) -> float:
    """Tasks per second of one worker slot draining n + 1 local tasks, from the first
    task's end to the last one's (the queue's own timestamps): the handler process's
    start and the worker's stop are not per-task costs."""
    with tempfile.TemporaryDirectory() as folder:
        url = str(Path(folder) / "q.db")
        upgrade(url)
        with LocalQueue(url) as queue:
            ids = [queue.enqueue("bench", {"n": i}).id for i in range(n + 1)]
            worker = Worker(queue, {"bench": instant}, pool=pool, summary_seconds=3600)
            assert worker.run(max_tasks=n + 1) == n + 1
            first, last = (queue.get(ids[i]).finished_at for i in (0, -1))
    assert first is not None and last is not None
    return n / (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"thread": [], "process": []}
    for round_ in range(args.rounds):
        for pool in ("thread", "process") if round_ % 2 == 0 else ("process", "thread"):
            rates[pool].append(worker_rate(args.n, pool))
    for pool, values in rates.items():
        print(
            f"{pool:8} median {statistics.median(values):8.0f} tasks/s   rounds "
            + " ".join(f"{v:.0f}" for v in values)
        )
    overhead = 1 / statistics.median(rates["process"]) - 1 / statistics.median(rates["thread"])
    print(f"process pool overhead per task: {overhead * 1e6:.0f} us (median rates)")


if __name__ == "__main__":
    main()
