"""Peak memory of the daemon and a worker over a long run (target: flat, under 150 MB each).

    python tests/bench/rss.py [N]

The emulator runs in this process with N tasks seeded into its store; the
daemon (`taskmanager-bridge run`) and a worker (`taskmanager-bridge worker`,
2 threads) run as real processes on a SQLite queue. RSS is read from /proc
while the tasks flow; the run ends when the server shows all N completed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

TYPE = "bench.rss"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=100_000)
    parser.add_argument("--progress", action="store_true", help="print progress every 10 s")
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as tmp, EmulatorServer(api_key="rss") as server:
        folder = Path(tmp)
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        for i in range(n):
            server.store.create_task({"type": TYPE, "params": {"n": i}})
        db = folder / "queue.db"
        upgrade(str(db))
        config = folder / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\nprefetch = 200\nworkers = 2\n'
            "default_task_seconds = 0.01\npoll_min_seconds = 0.05\npoll_max_seconds = 0.5\n"
            "push_interval_seconds = 0.1\npush_batch = 500\nreconcile_interval_seconds = 600\n"
            f'[taskmanager]\napi_url = "{server.url}"\n'
        )
        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key}
        common = [sys.executable, "-m", "bridge", "--config", str(config)]
        with (folder / "daemon.log").open("w") as dlog, (folder / "worker.log").open("w") as wlog:
            daemon = subprocess.Popen([*common, "run"], stderr=dlog, env=env)
            worker = subprocess.Popen(
                [
                    *common,
                    "worker",
                    "--handler",
                    "json:dumps",
                    "--type",
                    TYPE,
                    "--concurrency",
                    "2",
                ],
                stderr=wlog,
                env=env,
            )
            started = time.monotonic()
            samples: list[tuple[int, float, float]] = []
            try:
                done = 0
                while done < n:
                    time.sleep(2)
                    done = server.store.count_tasks("completed")
                    samples.append((done, rss_mb(daemon.pid), rss_mb(worker.pid)))
                    if args.progress and len(samples) % 5 == 0:
                        print(f"  {done} done, {time.monotonic() - started:.0f} s", flush=True)
                    if time.monotonic() - started > 3600:
                        raise SystemExit("no end after an hour")
                peaks = (rss_mb(daemon.pid, "VmHWM"), rss_mb(worker.pid, "VmHWM"))
            finally:
                for process in (worker, daemon):
                    process.send_signal(signal.SIGTERM)
                for process in (worker, daemon):
                    process.wait(60)
        elapsed = time.monotonic() - started
    print(f"{n} tasks completed remotely in {elapsed:.0f} s ({n / elapsed:.0f} tasks/s end to end)")
    print(f"peak RSS: daemon {peaks[0]:.1f} MB, worker {peaks[1]:.1f} MB (target < 150 MB each)")
    print("RSS while running (completed: daemon MB / worker MB):")
    step = max(1, len(samples) // 8)
    for done, daemon_mb, worker_mb in samples[::step] + samples[-1:]:
        print(f"  {done:7d}: {daemon_mb:6.1f} / {worker_mb:6.1f}")


if __name__ == "__main__":
    main()
