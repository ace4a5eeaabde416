"""Run every example script against a local TaskManager emulator, in order.

    python examples/run_against_emulator.py

Starts the emulator on a free loopback port, points the examples at it through
TASKMANAGER_API_URL / TASKMANAGER_API_KEY / TASKMANAGER_WORKER_ID, and runs
register -> create -> claim -> progress -> complete, then a lost-answer replay.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str, env: dict[str, str]) -> str:
    print(f"$ python examples/{script} {' '.join(args)}".rstrip())
    done = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{script} failed with exit code {done.returncode}")
    return done.stdout


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  (log) %(message)s", stream=sys.stdout)
    with EmulatorServer(api_key="example-key") as server:
        env = {
            **os.environ,
            "TASKMANAGER_API_URL": server.url,
            "TASKMANAGER_API_KEY": server.api_key,
            "TASKMANAGER_WORKER_ID": "example-worker",
        }
        print(f"emulator listening on {server.url}\n")
        run("register_task_type.py", env=env)
        run("create_task.py", env=env)
        claimed = run("claim_task.py", env=env)
        task_id = re.search(r"claimed task (\d+)", claimed)
        if task_id is None:
            raise SystemExit("claim_task.py claimed nothing")
        run("update_progress.py", task_id[1], "60", env=env)
        run("complete_task.py", task_id[1], env=env)
        run("claim_task.py", env=env)

        print("\nA completion whose answer is lost after the server committed it:")
        config = TaskManagerConfig(
            api_url=server.url, api_key=server.api_key, worker_id="example-worker", backoff_base=0.1
        )
        with TaskManagerClient(config) as client:
            task = client.create_task(
                "youtube_channel_scrape", {"channel_url": "https://youtube.com/@lost"}
            )
            claimed_task = client.claim_task(task_type="youtube_channel_scrape")
            assert claimed_task is not None and claimed_task.id == task
            server.faults.drop_after_commit(path="/tasks/*/complete")
            outcome = client.complete_task(task, {"ideas_found": 1})
            print(
                f"task {task}: {outcome.status}, settled by reading it back: "
                f"{outcome.settled_by_read}"
            )
        print(f"\nrequests served: {dict(server.request_counts())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
