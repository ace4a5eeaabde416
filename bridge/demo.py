"""``taskmanager-bridge demo``: the whole system on one machine, with an outage.

Starts the TaskManager emulator, registers a type, creates tasks, runs the
daemon and two workers as real processes, cuts the network in the middle
(workers keep going, completions wait in the outbox), restores it, and checks
every task on the server: completed, with the result its worker computed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from taskmanager.emulator import EmulatorServer

from . import migrate
from .config import BridgeConfig
from .models import QueueCounts
from .queue import LocalQueue

DEMO_TYPE = "demo.youtube_channel_scrape"
TASK_SECONDS = 0.25
DEADLINE_SECONDS = 90.0


def scrape(params: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The demo's handler: pretends to scrape a channel, reporting progress on the way."""
    for percent in (30, 60, 90):
        time.sleep(TASK_SECONDS / 3)
        context.progress(percent)
    return expected_result(params)


def expected_result(params: Mapping[str, Any]) -> dict[str, Any]:
    channel = str(params["channel_url"])
    return {"channel": channel, "ideas_found": sum(map(ord, channel)) % 17}


def _write_config(folder: Path, server: EmulatorServer) -> Path:
    path = folder / "bridge.toml"
    path.write_text(
        f'db_url = "{folder / "queue.db"}"\n'
        f'types = ["{DEMO_TYPE}"]\n'
        "prefetch = 20\nworkers = 2\nlease_seconds = 120\nlease_margin_seconds = 10\n"
        "default_task_seconds = 0.5\npoll_min_seconds = 0.2\npoll_max_seconds = 1.0\n"
        "push_interval_seconds = 0.2\npush_backoff_max_seconds = 1.0\n"
        "reap_interval_seconds = 0.5\nreconcile_interval_seconds = 30\n"
        "lock_seconds = 10\nshutdown_push_seconds = 5\n"
        "[taskmanager]\n"
        f'api_url = "{server.url}"\nworker_id = "demo-bridge"\n'
        "timeout = 2\nconnect_timeout = 1\nretry_attempts = 1\nbackoff_base = 0.2\n"
        "retry_deadline = 2\n",
        encoding="utf-8",
    )
    return path


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", *args], stdout=sink, stderr=subprocess.STDOUT, env=env
        )


def _remote_completed(server: EmulatorServer) -> int:
    return server.store.count_tasks("completed")


def _progress_line(elapsed: float, remote: int, tasks: int, counts: QueueCounts, up: bool) -> str:
    queued, running, done = (counts.tasks_with_status(s) for s in ("queued", "running", "done"))
    return (
        f"[{elapsed:5.1f} s] remote completed {remote:3d}/{tasks} | local queued "
        f"{queued:2d} running {running} done {done:3d} | outbox pending "
        f"{counts.outbox.get('pending', 0):3d} | network {'up' if up else 'DOWN'}"
    )


def run_demo(tasks: int = 40, outage_seconds: float = 4.0) -> int:
    started = time.monotonic()
    for noisy in ("taskmanager", "alembic"):  # the emulator logs every request, alembic each step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    say = print
    with (
        tempfile.TemporaryDirectory(prefix="taskmanager-bridge-demo-") as tmp,
        EmulatorServer(api_key="demo-key", claim_timeout=120) as server,
    ):
        folder = Path(tmp)
        config_path = _write_config(folder, server)
        config = BridgeConfig.load(config_path)
        migrate.upgrade(config.db_url)
        say(f"emulator on {server.url}; local queue {folder / 'queue.db'}")

        client = server.client()
        client.register_task_type(
            DEMO_TYPE,
            "1.0",
            {
                "type": "object",
                "properties": {"channel_url": {"type": "string", "minLength": 1}},
                "required": ["channel_url"],
            },
        )
        params = [{"channel_url": f"https://youtube.com/@channel{i:03d}"} for i in range(tasks)]
        remote_ids = [client.create_task(DEMO_TYPE, p) for p in params]
        say(f"created {tasks} tasks of {DEMO_TYPE}; starting the daemon and 2 workers")

        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key}
        common = ["--config", str(config_path)]
        processes = [_start([*common, "run"], folder / "daemon.log", env)] + [
            _start(
                [*common, "worker", "--handler", "bridge.demo:scrape", "--type", DEMO_TYPE],
                folder / f"worker{i}.log",
                env,
            )
            for i in (1, 2)
        ]
        cut_at = restored_at = None
        try:
            with LocalQueue(config=config) as queue:
                while time.monotonic() - started < DEADLINE_SECONDS:
                    time.sleep(0.5)
                    remote = _remote_completed(server)
                    counts = queue.status()
                    say(
                        _progress_line(
                            time.monotonic() - started, remote, tasks, counts, server.is_up
                        )
                    )
                    if cut_at is None and remote >= tasks // 3:
                        server.go_down()
                        cut_at = datetime.now(timezone.utc)
                        say(
                            f"--- network cut for {outage_seconds:.0f} s: workers keep going, "
                            "completions wait in the outbox ---"
                        )
                    elif (
                        restored_at is None
                        and cut_at is not None
                        and (datetime.now(timezone.utc) - cut_at).total_seconds() >= outage_seconds
                    ):
                        server.come_back()
                        restored_at = datetime.now(timezone.utc)
                        say("--- network restored: the outbox replays ---")
                    if remote >= tasks and restored_at is not None:
                        break
                replayed = sum(
                    1
                    for e in queue.outbox("delivered", 100_000)
                    if e.kind == "complete"
                    and cut_at
                    and restored_at
                    and cut_at <= e.created_at <= restored_at
                )
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        verified = 0
        for remote_id, p in zip(remote_ids, params, strict=True):
            task = client.get_task(remote_id)
            if task.status == "completed" and task.result == expected_result(p):
                verified += 1
        lost = tasks - verified
        say("")
        say(f"tasks completed remotely with their worker's result: {verified}/{tasks}")
        say(f"completions made during the outage and replayed after it: {replayed}")
        say(f"lost: {lost}")
        say(f"time taken: {time.monotonic() - started:.1f} s")
        if lost:
            for log in sorted(folder.glob("*.log")):
                say(f"\n--- {log.name} (last lines) ---")
                say("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return 0 if lost == 0 else 1
