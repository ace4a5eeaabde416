"""The bridge end to end against the emulator (real HTTP, keep-alive, SQLite queue).

    python tests/bench/bridge_e2e.py [--tasks N] [--drain N]

1. remote calls per task in steady state (target 2: claim + complete);
2. latency from remote create to worker start, while busy and after idle (p50/p95);
3. outbox drain of N completion rows after an outage vs N bare client calls
   (``client.complete_task`` in a loop) in the same run (target >= 0.9x their rate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bridge import BridgeConfig, LocalQueue, Worker
from bridge.daemon.jobs import DaemonJobs
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.seed
from tests.seed import seed_claimed_tasks

TYPE = "bench.work"


def make_bridge(folder: Path, server: EmulatorServer, **settings: object) -> DaemonJobs:
    url = str(folder / "queue.db")
    upgrade(url)
    config = BridgeConfig.load(env={}, db_url=url, types=[TYPE], **settings)
    client = TaskManagerClient(
        TaskManagerConfig.from_env(
            {}, api_url=server.url, api_key=server.api_key, worker_id="bench-bridge"
        )
    )
    return DaemonJobs(LocalQueue(config=config).store, client, config)


def run_jobs(bridge: DaemonJobs, stop: threading.Event) -> threading.Thread:
    """pull and push in a loop, as the scheduler would (without its thread pool)."""

    def loop() -> None:
        while not stop.is_set():
            now = datetime.now(timezone.utc)
            bridge.pull_tick(now)
            bridge.push_tick(now)
            time.sleep(bridge.config.poll_min_seconds)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def calls_per_task(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        bridge = make_bridge(
            Path(tmp),
            server,
            prefetch=50,
            workers=4,
            poll_min_seconds=0.05,
            poll_max_seconds=0.5,
            default_task_seconds=0.01,
        )
        for i in range(n):
            admin.create_task(TYPE, {"n": i})
        server.reset_requests()
        stop = threading.Event()
        jobs = run_jobs(bridge, stop)
        worker = Worker(
            bridge.queue, {TYPE: lambda p: {"n": p["n"]}}, concurrency=4, poll_seconds=0.02
        )
        worker.run(max_tasks=n)
        while bridge.store.outbox_backlog()[0]:
            time.sleep(0.05)
        stop.set()
        jobs.join()
        counts = server.request_counts()
        total = sum(counts.values())
        print(f"  requests by endpoint: {dict(counts)}")
        return total / n


def latency(n: int, busy: bool) -> tuple[float, float]:
    """Seconds from remote create to local start, p50 and p95."""
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        bridge = make_bridge(
            Path(tmp),
            server,
            prefetch=10,
            workers=2,
            poll_min_seconds=0.1,
            poll_max_seconds=2.0,
            default_task_seconds=0.05,
        )
        stop = threading.Event()
        jobs = run_jobs(bridge, stop)
        worker = Worker(
            bridge.queue, {TYPE: lambda p: time.sleep(0.02)}, concurrency=2, poll_seconds=0.02
        )
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        created: dict[int, float] = {}
        if not busy:
            time.sleep(6)  # idle: the claim poll backs off to its cap
        for i in range(n):
            created[admin.create_task(TYPE, {"n": i})] = time.time()
            time.sleep(0.03 if busy else 2.5)
        deadline = time.time() + 60
        while time.time() < deadline and bridge.store.counts().tasks_with_status("done") < n:
            time.sleep(0.05)
        worker.stop()
        stop.set()
        jobs.join()
        waits = []
        for remote_id, at in created.items():
            task = bridge.store.get_task_by_remote_id(remote_id)
            assert task is not None and task.started_at is not None
            waits.append(task.started_at.timestamp() - at)
        waits.sort()
        return statistics.median(waits), waits[int(len(waits) * 0.95) - 1]


def seed_claimed(server: EmulatorServer, n: int, worker_id: str, offset: int) -> list[int]:
    """n tasks claimed by ``worker_id`` on the emulator, without HTTP (setup, not measured)."""
    type_id = int(server.store.get_type(TYPE)["items"][0]["id"])
    ids = []
    for i in range(n):
        server.store.create_task({"type": TYPE, "params": {"n": offset + i}})
        claimed = server.store.claim({"worker_id": worker_id, "task_type_id": type_id})
        assert claimed is not None
        ids.append(int(claimed["id"]))
    return ids


def drain_vs_bare(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer() as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        bridge = make_bridge(Path(tmp), server, push_batch=500)
        # Our side: n completions made during an outage, waiting in the outbox.
        ours = seed_claimed(server, n, bridge.worker_id, 0)
        seed_claimed_tasks(
            bridge.queue.config.db_url, ours, task_type=TYPE, worker_id=bridge.worker_id
        )
        task = bridge.queue.dequeue()
        while task is not None:
            task = bridge.queue.complete_and_dequeue(task, {"n": task.params["n"]})
        assert bridge.store.outbox_backlog()[0] == n
        started = time.perf_counter()
        while bridge.push_tick(datetime.now(timezone.utc)):
            pass
        ours_rate = n / (time.perf_counter() - started)
        assert bridge.store.outbox_backlog()[0] == 0
        # Baseline: the same number of bare client calls.
        bare = seed_claimed(server, n, "bare-worker", n)
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, worker_id="bare-worker"
            )
        )
        started = time.perf_counter()
        for i, remote_id in enumerate(bare):
            client.complete_task(remote_id, {"n": n + i})
        bare_rate = n / (time.perf_counter() - started)
        return ours_rate, bare_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="drain rounds (median)")
    args = parser.parse_args()
    print(f"1. remote calls per task, {args.tasks} tasks in steady state (target 2):")
    print(f"   {calls_per_task(args.tasks):.2f} calls per task")
    p50, p95 = latency(60, busy=True)
    print(f"2. create -> worker start while busy: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    p50, p95 = latency(4, busy=False)
    print(
        f"   create -> worker start after idle (poll cap 2 s): p50 {p50 * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms"
    )
    rounds = [drain_vs_bare(args.drain) for _ in range(args.rounds)]
    ours = statistics.median(r[0] for r in rounds)
    bare = statistics.median(r[1] for r in rounds)
    ratio = statistics.median(r[0] / r[1] for r in rounds)
    print(
        f"3. outbox drain of {args.drain} rows, median of {args.rounds} rounds: {ours:.0f} "
        f"rows/s; bare client calls: {bare:.0f} calls/s; ratio {ratio:.2f}x (target >= 0.90x)"
    )
    print(f"   rounds: {', '.join(f'{o / b:.2f}x' for o, b in rounds)}")


if __name__ == "__main__":
    main()
