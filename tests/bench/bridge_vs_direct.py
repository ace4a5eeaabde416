"""The bridge against the specification's direct pattern, on the same server, in one run.

    python tests/bench/bridge_vs_direct.py [--tasks 1000] [--workers 4] [--rounds 3]
                                            [--latency-ms 0,20,50] [--trickle 0]
                                            [--url URL --key KEY]

Direct: W threads in one process, each looping ``claim_task`` then ``complete_task``
(pattern 1). Bridge: ``taskmanager-bridge run`` (workers = W, every other setting its default) and
``taskmanager-bridge worker --concurrency W``, a handler that returns at once; the daemon
starts once the worker is ready. Both are separate processes; each run's time is the
server's: from the first claim's arrival to the last completion's answer, so process
start-up counts for neither. CPU is each client process's own (user + system, from
/proc), from the first claim to the last completion, per task: the emulator's share
is not counted (it runs in this process).

Against the emulator with the measured server's costs (``REALISTIC_COSTS``: 3 ms a
request, 4 at a time, 1 deadlock in ~300) and a network delay each way of half the
round trip (``--latency-ms``: the emulator's ``network_seconds``, which holds no place
among the server's 4), unless ``--url``/``--key`` name a server. Rounds are interleaved:
each round runs every latency, the patterns' order alternating. Prints, per latency,
time, CPU and context switches per task of each pattern and process with their spread,
calls per task, and the ratios (bridge / direct: time <= 0.6 at 20 ms and CPU <= 1.0
are the goals).
``--trickle 0.5`` creates half the tasks during the run (create-to-start latency);
``BENCH_BRIDGE_CONFIG="poll_min_seconds = 0.05; ..."`` adds lines to the bridge's config.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer
from taskmanager.emulator.app import REALISTIC_COSTS
from tests.bench.figures import spread

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXTRA_CONFIG = os.environ.get("BENCH_BRIDGE_CONFIG", "").replace(";", "\n") + "\n"


@dataclass
class Run:
    pattern: str
    seconds: float
    calls_per_task: float
    cpu_ms: dict[str, float]  # process name -> CPU ms per task, first claim to last completion
    start_p95_ms: float
    switches: dict[str, float]  # process name -> context switches per task, same span

    @property
    def cpu_total_ms(self) -> float:
        return sum(self.cpu_ms.values())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Context switches so far of a process's live threads, from /proc: voluntary (the
    thread went to sleep to wait: for the GIL, a lock, a socket, the disk) and
    involuntary (preempted). Each costs the thread a wake-up, which on a small VM costs
    more CPU than most of the Python a task runs. A thread that ended is not counted."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split(":")[1])
    return total


class Target:
    """The server under test: the emulator (its request log gives the times) or a URL."""

    def __init__(self, url: str | None, key: str | None, latency_ms: float) -> None:
        self.server = (
            None
            if url
            else EmulatorServer(**REALISTIC_COSTS, network_seconds=latency_ms / 2000).start()  # type: ignore[arg-type]
        )
        self.url = url or self.server.url  # type: ignore[union-attr]
        self.key = key or self.server.api_key  # type: ignore[union-attr]

    def client(self) -> TaskManagerClient:
        return TaskManagerClient(
            TaskManagerConfig.from_env({}, api_url=self.url, api_key=self.key, retry_attempts=5)
        )

    def first_claim_seen(self) -> bool:
        if self.server is None:
            return True  # a real server: from the processes' start
        return any(r.path == "/tasks/claim" for r in self.server.requests)

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
        while not target.first_claim_seen():
            exited = [name for name, p in processes.items() if p.poll() is not None]
            if exited:  # a process that died at start would leave the round waiting for good
                log = (folder / "out.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{', '.join(exited)} exited before the first claim:\n{log}")
            time.sleep(0.002)
        before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        switched = {name: context_switches(p.pid) for name, p in processes.items()}
        trickle = threading.Thread(
            target=create_slowly, args=(admin, task_type, upfront, tasks, created)
        )
        trickle.start()
        trickle.join()
        deadline = time.monotonic() + 600
        while target.completed(admin, task_type) < len(created) and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu = {
            name: 1000 * (cpu_seconds(p.pid) - before[name]) / tasks
            for name, p in processes.items()
        }
        switches = {
            name: (context_switches(p.pid) - switched[name]) / tasks
            for name, p in processes.items()
        }
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
    starts = start_log(starts_file)
    busy = [starts[i] - created[i] for i in list(created)[upfront:] if i in starts]
    return measure(pattern, target, tasks, busy, cpu, switches)


def create_slowly(
    admin: TaskManagerClient, task_type: str, first: int, tasks: int, created: dict[int, float]
) -> None:
    """The tasks not created up front, at ~70 a second while the others run."""
    for n in range(first, tasks):
        created[admin.create_task(task_type, {"n": n})] = time.time()
        time.sleep(0.01)


def start_processes(
    pattern: str, target: Target, task_type: str, workers: int, folder: Path, env: dict[str, str]
) -> dict[str, subprocess.Popen[bytes]]:
    log = (folder / "out.log").open("wb")
    if pattern == "direct":
        script = str(HERE / "direct_worker.py")
        command = [sys.executable, script, target.url, task_type, str(workers)]
        return {"direct": subprocess.Popen(command, env=env, stdout=log, stderr=log)}
    db = folder / "queue.db"
    upgrade(str(db))
    config = folder / "bridge.toml"
    config.write_text(
        f'db_url = "{db}"\ntypes = ["{task_type}"]\nworkers = {workers}\n'
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
    daemon = subprocess.Popen([*base, "run"], env=env, stdout=log, stderr=log, cwd=ROOT)
    return {"daemon": daemon, "worker": started}


def measure(
    pattern: str,
    target: Target,
    tasks: int,
    busy_starts: list[float],
    cpu: dict[str, float],
    switches: dict[str, float],
) -> Run:
    server = target.server
    if server is None:  # a real server: only what the client side can see
        return Run(pattern, float("nan"), float("nan"), cpu, 0.0, switches)
    records = [r for r in server.requests if r.path != "/health"]
    claims = [r for r in records if r.path == "/tasks/claim"]
    done = [r for r in records if r.path.endswith("/complete") and r.status == 200]
    seconds = max(r.answered for r in done) - min(r.at for r in claims)
    calls = sum(1 for r in records if r.path == "/tasks/claim" or r.path.endswith("/complete"))
    p95 = 1000 * percentile(busy_starts, 0.95)
    return Run(pattern, seconds, calls / tasks, cpu, p95, switches)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--trickle",
        type=float,
        default=0.0,
        help="share of the tasks created during the run (0: all exist at the start)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", default="0,20,50", help="round trips to emulate, ms")
    parser.add_argument("--url", help="a real server instead of the emulator")
    parser.add_argument("--key", help="its API key")
    args = parser.parse_args()
    latencies = [0.0] if args.url else [float(v) for v in args.latency_ms.split(",")]
    costs = "server given by URL" if args.url else f"emulator, costs {REALISTIC_COSTS}"
    print(f"{args.tasks} tasks, {args.workers} workers, {costs}")
    upfront = args.tasks - round(args.tasks * args.trickle)
    runs: dict[float, list[dict[str, Run]]] = {latency: [] for latency in latencies}
    for round_number in range(args.rounds):
        for latency in latencies:
            target = Target(args.url, args.key, latency)
            try:
                order = ("direct", "bridge") if round_number % 2 == 0 else ("bridge", "direct")
                found = {
                    p: run_pattern(p, target, args.tasks, args.workers, upfront) for p in order
                }
            finally:
                target.close()
            runs[latency].append(found)
            for run in found.values():
                cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms.items())
                switches = ", ".join(f"{name} {n:.1f}" for name, n in run.switches.items())
                print(
                    f"  round {round_number + 1} rtt {latency:g} ms {run.pattern:6} "
                    f"{run.seconds:6.2f} s  calls/task {run.calls_per_task:.2f}  "
                    f"CPU ms/task {cpu}  switches/task {switches}  "
                    f"create-to-start p95 {run.start_p95_ms:.0f} ms",
                    flush=True,
                )
    print("\nmedian [spread] over rounds:")
    for latency, rounds in runs.items():
        time_ratio = [r["bridge"].seconds / r["direct"].seconds for r in rounds]
        cpu_ratio = [r["bridge"].cpu_total_ms / r["direct"].cpu_total_ms for r in rounds]
        print(f"rtt {latency:g} ms:")
        for pattern in ("direct", "bridge"):
            seconds = [r[pattern].seconds for r in rounds]
            print(f"  {pattern:6} time {spread(seconds)} s", end="")
            for name in rounds[0][pattern].cpu_ms:
                print(
                    f"; {name} CPU {spread([r[pattern].cpu_ms[name] for r in rounds])} ms/task",
                    end="",
                )
                per_task = [r[pattern].switches[name] for r in rounds]
                print(f", {spread(per_task, 1)} switches/task", end="")
            calls = [r[pattern].calls_per_task for r in rounds]
            print(f"; calls/task {spread(calls)}")
        print(f"  bridge / direct: time {spread(time_ratio)}, CPU {spread(cpu_ratio)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
