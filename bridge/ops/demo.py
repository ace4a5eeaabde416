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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from taskmanager.emulator import EmulatorServer

from ..config import BridgeConfig
from ..models import QueueCounts
from ..queue import LocalQueue
from ..storage import migrations

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


def _progress_line(
    elapsed: float, remote: int, tasks: int, counts: QueueCounts, up: bool, pace: str
) -> str:
    queued, running, done = (counts.tasks_with_status(s) for s in ("queued", "running", "done"))
    return (
        f"[{elapsed:5.1f} s] remote completed {remote:3d}/{tasks} ({pace}) | local queued "
        f"{queued:2d} running {running} done {done:3d} | outbox pending "
        f"{counts.outbox.get('pending', 0):3d} | network {'up' if up else 'DOWN'}"
    )


@dataclass
class _Pace:
    """Completions per second since the first one, and what is left at that rate."""

    first_at: float | None = None
    first_count: int = 0

    def describe(self, remote: int, tasks: int, now: float) -> str:
        left = tasks - remote
        if left <= 0:
            return "all completed"
        if self.first_at is None:
            if remote:
                self.first_at, self.first_count = now, remote
            return f"{left} left"
        seconds = now - self.first_at
        per_second = (remote - self.first_count) / seconds if seconds > 0 else 0.0
        if per_second <= 0:
            return f"{left} left"
        return f"{per_second:.1f}/s, {left} left, ~{left / per_second:.0f} s to go"


@dataclass
class _Outage:
    """When the demo cut the network and when it brought it back."""

    seconds: float
    cut_at: datetime | None = None
    restored_at: datetime | None = None

    def step(self, server: EmulatorServer, remote: int, tasks: int) -> str | None:
        """Cut after a third of the tasks, restore after ``seconds``; what to announce."""
        now = datetime.now(timezone.utc)
        if self.cut_at is None and remote >= tasks // 3:
            server.go_down()
            self.cut_at = now
            return (
                f"--- network cut for {self.seconds:.0f} s: workers keep going, "
                "completions wait in the outbox ---"
            )
        if (
            self.restored_at is None
            and self.cut_at is not None
            and (now - self.cut_at).total_seconds() >= self.seconds
        ):
            server.come_back()
            self.restored_at = now
            return "--- network restored: the outbox replays ---"
        return None

    def covers(self, moment: datetime) -> bool:
        return bool(self.cut_at and self.restored_at and self.cut_at <= moment <= self.restored_at)


def _create_tasks(server: EmulatorServer, tasks: int) -> tuple[list[int], list[dict[str, Any]]]:
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
    return [client.create_task(DEMO_TYPE, p) for p in params], params


def _start_processes(
    config_path: Path, folder: Path, server: EmulatorServer
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key}
    common = ["--config", str(config_path)]
    worker = [*common, "worker", "--handler", "bridge.ops.demo:scrape", "--type", DEMO_TYPE]
    return [_start([*common, "run"], folder / "daemon.log", env)] + [
        _start(worker, folder / f"worker{i}.log", env) for i in (1, 2)
    ]


def _stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _watch(
    server: EmulatorServer, queue: LocalQueue, tasks: int, outage: _Outage, started: float
) -> int:
    """Print progress until every task is completed remotely after the outage (or the
    deadline); returns the completions made during the outage and replayed after it.

    Nothing is printed until the daemon has claimed something (the processes take a
    second or two to start): a line of zeros says nothing a reader can use."""
    pace = _Pace()
    claimed = False
    while time.monotonic() - started < DEADLINE_SECONDS:
        time.sleep(0.5)
        remote = _remote_completed(server)
        elapsed = time.monotonic() - started
        counts = queue.status()
        if not claimed and not sum(counts.tasks.values()):
            continue
        if not claimed:
            claimed = True
            print(f"[{elapsed:5.1f} s] the daemon claimed its first tasks; workers are running")
        described = pace.describe(remote, tasks, time.monotonic())
        print(_progress_line(elapsed, remote, tasks, counts, server.is_up, described))
        announcement = outage.step(server, remote, tasks)
        if announcement:
            print(announcement)
        if remote >= tasks and outage.restored_at is not None:
            break
    delivered = queue.outbox("delivered", 100_000)
    return sum(1 for e in delivered if e.kind == "complete" and outage.covers(e.created_at))


def _verified(server: EmulatorServer, remote_ids: list[int], params: list[dict[str, Any]]) -> int:
    """Tasks the server shows completed with exactly the result their worker computed."""
    client = server.client()
    verified = 0
    for remote_id, p in zip(remote_ids, params, strict=True):
        task = client.get_task(remote_id)
        verified += task.status == "completed" and task.result == expected_result(p)
    return verified


def run_demo(tasks: int = 40, outage_seconds: float = 4.0) -> int:
    started = time.monotonic()
    for noisy in ("taskmanager", "alembic"):  # the emulator logs every request, alembic each step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="taskmanager-bridge-demo-") as tmp,
        EmulatorServer(api_key="demo-key", claim_timeout=120) as server,
    ):
        folder = Path(tmp)
        config_path = _write_config(folder, server)
        config = BridgeConfig.load(config_path)
        migrations.upgrade(config.db_url)
        print(f"emulator on {server.url}; local queue {folder / 'queue.db'}")
        remote_ids, params = _create_tasks(server, tasks)
        print(f"created {tasks} tasks of {DEMO_TYPE} on the emulator")
        processes = _start_processes(config_path, folder, server)
        pids = ", ".join(str(p.pid) for p in processes[1:])
        print(
            f"starting the daemon (pid {processes[0].pid}) and 2 workers (pids {pids}); "
            f"their logs go to {folder}; waiting for the first claim"
        )
        outage = _Outage(outage_seconds)
        try:
            with LocalQueue(config=config) as queue:
                replayed = _watch(server, queue, tasks, outage, started)
        finally:
            _stop_processes(processes)
        verified = _verified(server, remote_ids, params)
        lost = tasks - verified
        print("")
        print(f"tasks completed remotely with their worker's result: {verified}/{tasks}")
        print(f"completions made during the outage and replayed after it: {replayed}")
        print(f"lost: {lost}")
        print(f"time taken: {time.monotonic() - started:.1f} s")
        if lost:
            for log in sorted(folder.glob("*.log")):
                print(f"\n--- {log.name} (last lines) ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return 0 if lost == 0 else 1
