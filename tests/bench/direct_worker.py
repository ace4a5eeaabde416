"""The specification's pattern 1, as a benchmark process: W threads, each with its own
client, looping ``claim_task`` then ``complete_task`` until the queue is empty.

    python tests/bench/direct_worker.py URL TYPE WORKERS   (key in TASKMANAGER_API_KEY)
"""

from __future__ import annotations

import os
import sys
import threading
import time

from taskmanager import TaskManagerClient, TaskManagerConfig, TaskManagerError


def work(url: str, task_type: str, index: int, starts: str | None, idle_for: float) -> None:
    config = TaskManagerConfig.from_env(
        os.environ, api_url=url, worker_id=f"direct-{os.getpid()}-{index}", retry_attempts=5
    )
    with TaskManagerClient(config) as client:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_for:
            try:
                task = client.claim_task(task_type=task_type)
            except TaskManagerError:
                continue  # the direct pattern has nothing to fall back on: try again
            if task is None:
                time.sleep(0.05)
                continue
            if starts:
                with open(starts, "a", encoding="utf-8") as log:
                    log.write(f"{task.id} {time.time():.6f}\n")
            try:
                client.complete_task(task.id, {"n": task.params.get("n")})
            except TaskManagerError as exc:
                print(f"task {task.id} lost: {exc}", file=sys.stderr)
            idle_since = time.monotonic()


def main() -> int:
    url, task_type, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    starts = os.environ.get("BENCH_STARTS")
    threads = [
        threading.Thread(target=work, args=(url, task_type, i, starts, 30.0))
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
