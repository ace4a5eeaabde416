"""Async handlers on one event loop vs thread workers, for handlers that wait on I/O.

    python tests/bench/async_worker.py [N] [--concurrency C] [--wait S] [--rounds R]

Each round runs, in this order rotated by one per round, each in a fresh process
(its own peak RSS) on a fresh SQLite file of N local tasks:

* ``async``: ``async def`` handlers that ``await asyncio.sleep(S)``, concurrency C,
  one event loop in one thread;
* ``threads``: the same wait as ``time.sleep(S)``, concurrency C (C threads);
* ``default``: the thread worker at its default concurrency (1), on N_default =
  max(5, N // 80) tasks (at one task per S it would take N x S otherwise);
* ``queue``: the async worker with handlers that return at once: the queue's own
  rate at concurrency C, which bounds the others.

The rate is counted from the worker's start to its N-th stored result (the
worker's stop is not a per-task cost). The theoretical rate is min(C / S, queue
rate). CPU seconds (user + system) and peak RSS are the process's own.
Prints every round and the median and spread of each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODES = ("async", "threads", "default", "queue")


def _run_one(mode: str, n: int, concurrency: int, wait: float) -> dict[str, float]:
    """In the child process: one worker over n tasks; its rate, CPU and peak RSS."""
    from bridge import LocalQueue, Worker
    from bridge.storage.migrations import upgrade

    async def waits_async(params: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(wait)
        return {"n": params["n"]}

    async def instant_async(params: dict[str, Any]) -> dict[str, Any]:
        return {"n": params["n"]}

    def waits(params: dict[str, Any]) -> dict[str, Any]:
        time.sleep(wait)
        return {"n": params["n"]}

    handler, slots = {
        "async": (waits_async, concurrency),
        "threads": (waits, concurrency),
        "default": (waits, 1),
        "queue": (instant_async, concurrency),
    }[mode]
    with tempfile.TemporaryDirectory() as folder:
        url = str(Path(folder) / "q.db")
        upgrade(url)
        with LocalQueue(url) as queue:
            queue.enqueue_many([("bench", {"n": i}) for i in range(n)])
            worker = Worker(queue, {"bench": handler}, slots, summary_seconds=3600)
            cpu = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            runner = threading.Thread(target=worker.run, kwargs={"max_tasks": n}, daemon=True)
            runner.start()
            while worker.counters.handled < n:
                time.sleep(0.002)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            runner.join(60)
            assert worker.counters.done == n, worker.counters.line()
    return {
        "rate": n / seconds,
        "cpu": (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime),
        "rss_mb": after.ru_maxrss / 1024,
        "threads_peak": float(slots if mode in ("threads", "default") else 1),
    }


def run_child(mode: str, n: int, concurrency: int, wait: float) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            str(n),
            "--concurrency",
            str(concurrency),
            "--wait",
            str(wait),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def spread(values: list[float], digits: int = 0) -> str:
    return (
        f"median {statistics.median(values):.{digits}f} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--wait", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_one(args.child, args.n, args.concurrency, args.wait)))
        return
    n_default = max(5, args.n // 80)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        order = MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]
        for mode in order:
            n = n_default if mode == "default" else args.n
            results[mode].append(run_child(mode, n, args.concurrency, args.wait))
        line = "  ".join(f"{m} {results[m][-1]['rate']:.0f}/s" for m in MODES)
        print(f"round {round_ + 1}: {line}", flush=True)
    theory = [min(args.concurrency / args.wait, q["rate"]) for q in results["queue"]]
    print(
        f"\n{args.n} tasks, concurrency {args.concurrency}, each waits {args.wait} s; "
        f"default: {n_default} tasks at concurrency 1; {args.rounds} rounds"
    )
    print(f"theoretical rate min(C/S, queue) : {spread(theory)} tasks/s")
    for mode in MODES:
        rows = results[mode]
        print(
            f"{mode:8} rate {spread([r['rate'] for r in rows])} tasks/s | "
            f"CPU {spread([r['cpu'] for r in rows], 2)} s | "
            f"peak RSS {spread([r['rss_mb'] for r in rows], 1)} MB"
        )
    ratios = [a["rate"] / t for a, t in zip(results["async"], theory, strict=True)]
    rss = [
        a["rss_mb"] / t["rss_mb"] for a, t in zip(results["async"], results["threads"], strict=True)
    ]
    print(f"async / theoretical : {spread(ratios, 3)}")
    print(f"async RSS / threads RSS : {spread(rss, 3)}")


if __name__ == "__main__":
    main()
