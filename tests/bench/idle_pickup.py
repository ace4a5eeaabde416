"""Idle pickup at the default settings, with the server's rate limit on.

    python tests/bench/idle_pickup.py [--minutes 3] [--types 10] [--runs 3] [--gap 8]

The running daemon (real scheduler, default settings) and a worker (one thread per
type's task, handlers that note their start) against the emulator with the
measured server's costs and its rate limit (100 requests a minute per path).
Tasks are created at random moments (exponential gaps, ``--gap`` s on average) across
``--types`` types, so the bridge is idle most of the time: pickup latency is
created -> handler started. Then a busy burst of 300 tasks. Prints p50/p95/max
pickup, requests a minute by path while idle and while busy, and 429s received.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bridge import BridgeConfig, LocalQueue, Worker
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer
from taskmanager.emulator.app import REALISTIC_COSTS


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def per_minute(server: EmulatorServer, since: float, until: float) -> dict[str, float]:
    minutes = (until - since) / 60
    counts = Counter(
        f"{r.method} {'/tasks/{id}/complete' if r.path.endswith('/complete') else r.path}"
        for r in server.requests
        if since <= r.at < until
    )
    return {path: round(n / minutes, 1) for path, n in sorted(counts.items())}


def one_run(minutes: float, types: int, seed: int, gap: float) -> dict[str, Any]:
    rng = random.Random(seed)
    names = [f"idle.t{i}" for i in range(types)]
    started: dict[int, float] = {}

    def handler(params: dict[str, Any], context: Any) -> dict[str, Any]:
        started.setdefault(int(context.task.remote_id), time.time())
        return {}

    folder = Path(tempfile.mkdtemp(prefix="idle-pickup-"))
    db = str(folder / "queue.db")
    upgrade(db)
    with EmulatorServer(rate_limit=100, rate_window=60, **REALISTIC_COSTS) as server:  # type: ignore[arg-type]
        admin = server.client()
        for name in names:
            admin.register_task_type(name, "1", {"type": "object"})
        config = BridgeConfig.load(env={}, db_url=db, types=names, workers=4)  # else defaults
        client = TaskManagerClient(
            TaskManagerConfig.from_env({}, api_url=server.url, api_key=server.api_key)
        )
        daemon = Daemon(DaemonJobs(LocalQueue(config=config).store, client, config))
        queue = LocalQueue(config=config)
        worker = Worker(queue, dict.fromkeys(names, handler), concurrency=4)
        worker_thread = threading.Thread(target=worker.run, daemon=True)
        daemon.start()
        worker_thread.start()
        created: dict[int, float] = {}
        try:
            time.sleep(5)  # settle: the first looks and probes
            idle_from = time.monotonic()
            deadline = idle_from + minutes * 60
            while time.monotonic() < deadline:
                time.sleep(min(rng.expovariate(1 / gap), max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    break
                remote_id = produce(server, rng.choice(names), {"n": len(created)})
                created[remote_id] = time.time()
            idle_until = time.monotonic()
            wait_for(lambda: all(i in started for i in created), 30)
            busy_from = time.monotonic()
            burst = [produce(server, rng.choice(names), {"b": n}) for n in range(300)]
            wait_for(lambda: all(i in started for i in burst), 120)
            busy_until = time.monotonic()
        finally:
            worker.stop()
            daemon.stop()
            worker_thread.join(10)
        latencies = [started[i] - at for i, at in created.items() if i in started]
        return {
            "tasks": len(created),
            "picked": len(latencies),
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "max": max(latencies) if latencies else float("nan"),
            "idle": per_minute(server, idle_from, idle_until),
            "busy": per_minute(server, busy_from, busy_until),
            "busy_seconds": busy_until - busy_from,
            "429s": dict(Counter(r.path for r in server.requests if r.status == 429)),
        }


def produce(server: EmulatorServer, task_type: str, params: dict[str, Any]) -> int:
    """A task created by a producer on another machine: straight into the server's store,
    so it spends none of this host's rate windows."""
    return int(server.store.create_task({"type": task_type, "params": params})["id"])


def wait_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--types", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gap", type=float, default=8.0, help="mean seconds between tasks")
    args = parser.parse_args()
    print(f"{args.types} types, {args.minutes:g} idle minutes a run, rate limit 100/min per path")
    p95s = []
    for run in range(args.runs):
        result = one_run(args.minutes, args.types, seed=run, gap=args.gap)
        p95s.append(result["p95"])
        print(
            f"run {run + 1}: {result['picked']}/{result['tasks']} idle tasks, pickup p50 "
            f"{result['p50']:.2f} s, p95 {result['p95']:.2f} s, max {result['max']:.2f} s; "
            f"429s {result['429s']}"
        )
        print(f"  requests a minute while idle: {result['idle']}")
        print(
            f"  busy (300 tasks in {result['busy_seconds']:.1f} s), requests a minute: "
            f"{result['busy']}"
        )
    print(
        f"pickup p95 over {len(p95s)} runs: {min(p95s):.2f}-{max(p95s):.2f} s "
        f"(median {statistics.median(p95s):.2f} s; goal < 2 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
