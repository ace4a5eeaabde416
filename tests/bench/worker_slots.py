"""What a worker's slots cost each other: CPU per task at concurrency 1 and at 4.

    python tests/bench/worker_slots.py [N] [--rounds R]

Each round drains N claimed (remote) tasks from a fresh SQLite file with
``Worker(queue, handlers, concurrency=C).run(max_tasks=N)``, a handler that returns
at once, once with one slot and once with four (interleaved, the order alternating).
Per task: the process's CPU (user + system) and the wall time. With a handler that
does nothing, four slots have nothing to gain; what they cost above one slot is the
slots' contention: the write lock taken in turn, a commit and its fsync each, the
wake-ups of all that waiting. Prints the median [spread] of R rounds and the ratio
of four slots to one measured in each round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from bridge import LocalQueue, Worker
from bridge.storage.migrations import upgrade
from tests.bench.figures import spread
from tests.seed import seed_claimed_tasks


def instant(params: dict[str, Any]) -> dict[str, Any]:
    return {"n": params["n"]}


def drain(n: int, concurrency: int) -> tuple[float, float]:
    """(CPU ms a task, wall ms a task) of one worker draining n claimed tasks."""
    with tempfile.TemporaryDirectory() as folder:
        url = str(Path(folder) / "q.db")
        upgrade(url)
        seed_claimed_tasks(url, range(1, n + 1), task_type="bench", worker_id="bench")
        with LocalQueue(url) as queue:
            worker = Worker(queue, {"bench": instant}, concurrency=concurrency)
            cpu, wall = time.process_time(), time.perf_counter()
            assert worker.run(max_tasks=n) == n
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert queue.status().tasks == {("bench", "done"): n}
    return 1000 * cpu / n, 1000 * wall / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    found: dict[int, list[tuple[float, float]]] = {1: [], 4: []}
    for round_number in range(args.rounds):
        order = (1, 4) if round_number % 2 == 0 else (4, 1)
        for concurrency in order:
            found[concurrency].append(drain(args.n, concurrency))
        one, four = found[1][-1], found[4][-1]
        print(
            f"round {round_number + 1}: 1 slot {one[0]:.3f} ms CPU, {one[1]:.3f} ms wall; "
            f"4 slots {four[0]:.3f} ms CPU, {four[1]:.3f} ms wall a task",
            flush=True,
        )
    print(f"\n{args.n} tasks, median [spread] of {args.rounds} rounds, ms a task:")
    for concurrency, rows in found.items():
        cpu = [row[0] for row in rows]
        wall = [row[1] for row in rows]
        print(f"  {concurrency} slot(s): CPU {spread(cpu, 3)}, wall {spread(wall, 3)}")
    ratio = [four[0] / one[0] for one, four in zip(found[1], found[4], strict=True)]
    print(f"  CPU, 4 slots / 1 slot: {spread(ratio, 3)}")


if __name__ == "__main__":
    main()
