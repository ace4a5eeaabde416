"""The bridge against the specification's direct pattern, on the same server, in one run.

    python tests/bench/bridge_vs_direct.py [--tasks 300] [--workers 4] [--rounds 3]
                                            [--url URL --key KEY]

Direct: W threads in one process, each looping ``claim_task`` then ``complete_task``
(pattern 1). Bridge: ``taskmanager-bridge run`` (workers = W) and ``taskmanager-bridge
worker --concurrency W``, a handler that returns at once; the daemon starts once the
worker is ready. Both are separate processes; each run's time is the server's: from
the first claim's arrival to the last completion's answer, so process start-up counts
for neither. Half the tasks exist
at the start, the other half are created during the run at a steady rate, to measure
create-to-start while busy.

Against the emulator with the measured server's costs (``REALISTIC_COSTS``: 3 ms a
request, 4 at a time, 1 deadlock in ~300) unless ``--url``/``--key`` name a server.
Rounds alternate the order. Prints both times, the ratio (bridge / direct, <= 1.0 is
the goal), calls per task and latency percentiles per run, then the spread.
``--trickle 0`` creates every task up front (the throughput case);
``BENCH_BRIDGE_CONFIG="poll_min_seconds = 0.05; ..."`` adds lines to the bridge's config.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer
from taskmanager.emulator.app import REALISTIC_COSTS

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXTRA_CONFIG = os.environ.get("BENCH_BRIDGE_CONFIG", "").replace(";", "\n") + "\n"


@dataclass
class Run:
    pattern: str
    seconds: float
    calls_per_task: float
    claim_p95_ms: float
    call_p95_ms: float
    start_p95_ms: float


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Target:
    """The server under test: the emulator (its request log gives the times) or a URL."""

    def __init__(self, url: str | None, key: str | None) -> None:
        self.server = None if url else EmulatorServer(**REALISTIC_COSTS).start()  # type: ignore[arg-type]
        self.url = url or self.server.url  # type: ignore[union-attr]
        self.key = key or self.server.api_key  # type: ignore[union-attr]

    def client(self) -> TaskManagerClient:
        return TaskManagerClient(
            TaskManagerConfig.from_env({}, api_url=self.url, api_key=self.key, retry_attempts=5)
        )

    def completed(self, admin: TaskManagerClient, task_type: str) -> int:
        """How many tasks of the type are completed. On the emulator, read from its
        request log in this process: a list request of every completed task each 50 ms
        would spend the shared CPU (ours and the emulator's) that the patterns measure."""
        if self.server is None:
            rows = admin.list_tasks(status="completed", task_type=task_type, page_size=500)
            return sum(1 for _ in rows)
        done = {
            r.path for r in self.server.requests if r.path.endswith("/complete") and r.status == 200
        }
        return len(done)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def start_log(path: Path) -> dict[int, float]:
    """Task id -> wall time its work started, from a log the workers append to."""
    starts: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            task_id, at = line.split()
            starts.setdefault(int(task_id), float(at))
    return starts


def run_pattern(pattern: str, target: Target, tasks: int, workers: int, upfront: int) -> Run:
    admin = target.client()
    task_type = f"bench.{pattern}.{uuid.uuid4().hex[:8]}"
    admin.register_task_type(task_type, "1", {"type": "object"})
    created: dict[int, float] = {}
    for n in range(upfront):
        created[admin.create_task(task_type, {"n": n})] = time.time()
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{pattern}-"))
    starts_file = folder / "starts.log"
    env = {**os.environ, "TASKMANAGER_API_KEY": target.key, "BENCH_STARTS": str(starts_file)}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if target.server is not None:
        target.server.reset_requests()
    processes = start_processes(pattern, target, task_type, workers, folder, env)
    try:
        while not target.completed(admin, task_type):
            time.sleep(0.01)  # processes started: now the run is busy
        trickle = threading.Thread(
            target=create_slowly, args=(admin, task_type, upfront, tasks, created)
        )
        trickle.start()
        trickle.join()
        deadline = time.monotonic() + 300
        while target.completed(admin, task_type) < len(created) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    starts = start_log(starts_file)
    busy = [starts[i] - created[i] for i in list(created)[upfront:] if i in starts]
    return measure(pattern, target, tasks, busy)


def create_slowly(
    admin: TaskManagerClient, task_type: str, first: int, tasks: int, created: dict[int, float]
) -> None:
    """The tasks not created up front, at ~70 a second while the others run."""
    for n in range(first, tasks):
        created[admin.create_task(task_type, {"n": n})] = time.time()
        time.sleep(0.01)


def start_processes(
    pattern: str, target: Target, task_type: str, workers: int, folder: Path, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    log = (folder / "out.log").open("wb")
    if pattern == "direct":
        script = str(HERE / "direct_worker.py")
        command = [sys.executable, script, target.url, task_type, str(workers)]
        return [subprocess.Popen(command, env=env, stdout=log, stderr=log)]
    db = folder / "queue.db"
    upgrade(str(db))
    config = folder / "bridge.toml"
    config.write_text(
        f'db_url = "{db}"\ntypes = ["{task_type}"]\nworkers = {workers}\nprefetch = 50\n'
        f"{EXTRA_CONFIG}"
        f'[taskmanager]\napi_url = "{target.url}"\nworker_id = "bench-{uuid.uuid4().hex[:6]}"\n'
    )
    base = [sys.executable, "-m", "bridge", "--config", str(config)]
    worker = [*base, "worker", "--handler", "tests.bench.noop:handle", "--type", task_type]
    # The worker first, and the daemon once the worker is ready: the clock starts at the
    # first claim, and a worker still importing would count its start-up as the bridge's
    # (the direct pattern's threads are all running when its first claim goes out).
    worker_log_path = folder / "worker.log"
    worker_log = worker_log_path.open("wb")
    started = subprocess.Popen(
        [*worker, "--concurrency", str(workers)],
        env=env,
        stdout=worker_log,
        stderr=worker_log,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while b"worker started" not in worker_log_path.read_bytes():
        if time.monotonic() > deadline or started.poll() is not None:
            raise RuntimeError(f"the worker did not start: {worker_log_path.read_text()}")
        time.sleep(0.01)
    return [subprocess.Popen([*base, "run"], env=env, stdout=log, stderr=log, cwd=ROOT), started]


def measure(pattern: str, target: Target, tasks: int, busy_starts: list[float]) -> Run:
    server = target.server
    if server is None:  # a real server: only what the client side can see
        return Run(pattern, float("nan"), float("nan"), float("nan"), float("nan"), 0.0)
    records = [r for r in server.requests if r.path != "/health"]
    claims = [r for r in records if r.path == "/tasks/claim"]
    done = [r for r in records if r.path.endswith("/complete") and r.status == 200]
    seconds = max(r.answered for r in done) - min(r.at for r in claims)
    calls = sum(1 for r in records if r.path == "/tasks/claim" or r.path.endswith("/complete"))
    return Run(
        pattern,
        seconds,
        calls / tasks,
        1000 * percentile([r.answered - r.at for r in claims], 0.95),
        1000 * percentile([r.answered - r.at for r in records], 0.95),
        1000 * percentile(busy_starts, 0.95),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--trickle",
        type=float,
        default=0.5,
        help="share of the tasks created during the run (0: all exist at the start)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a real server instead of the emulator")
    parser.add_argument("--key", help="its API key")
    args = parser.parse_args()
    target = Target(args.url, args.key)
    costs = "server given by URL" if args.url else f"emulator, costs {REALISTIC_COSTS}"
    print(f"{args.tasks} tasks, {args.workers} workers, {costs}")
    ratios = []
    try:
        for round_number in range(args.rounds):
            order = ("direct", "bridge") if round_number % 2 == 0 else ("bridge", "direct")
            upfront = args.tasks - round(args.tasks * args.trickle)
            runs = {p: run_pattern(p, target, args.tasks, args.workers, upfront) for p in order}
            ratio = runs["bridge"].seconds / runs["direct"].seconds
            ratios.append(ratio)
            for run in runs.values():
                print(
                    f"  round {round_number + 1} {run.pattern:6} {run.seconds:6.2f} s  "
                    f"{args.tasks / run.seconds:6.1f} tasks/s  "
                    f"calls/task {run.calls_per_task:.2f}  "
                    f"p95 claim {run.claim_p95_ms:.0f} ms, any call {run.call_p95_ms:.0f} ms, "
                    f"create-to-start while busy {run.start_p95_ms:.0f} ms"
                )
            print(f"  round {round_number + 1} bridge / direct time: {ratio:.2f}")
    finally:
        target.close()
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(
        f"bridge / direct time over {len(ratios)} rounds: median "
        f"{statistics.median(ratios):.2f}, spread {spread} (<= 1.00 is the goal)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
