"""The daemon's claim and delivery paths: CPU per task, each against its floor.

    python tests/bench/daemon_paths.py [N] [--rounds R] [--http stdlib,aiohttp]

The emulator runs in a process of its own (``cpu_floor.start_emulator``), so the CPU
counted (user + system of this process, from /proc) is the client side's only. Each
round, for each HTTP library in ``--http`` and for the floor, in rotating order:

* **claim path**: ``DaemonJobs.pull_tick`` (the daemon's own code: the look for
  pending tasks, the claim plan, bursts on 4 connections, each claim recorded in a
  fresh SQLite queue, the claim intent) until N tasks are claimed;
* **delivery path**: the N tasks finished in the local queue (not counted), then
  ``DaemonJobs.push_tick`` (pending rows read, completions sent on 4 connections,
  verdicts stored) until the outbox is empty;
* **floor**: 4 threads on bare ``http.client`` (the cheapest HTTP measured,
  ``cpu_floor.py``), each claim's row inserted with ``sqlite3`` into a table of the
  same data without indexes, committed per claim as the daemon does (not fsynced);
  then each completion sent and its row marked delivered, one commit at the end.

Prints CPU ms per task for each path, median and spread, and each path's ratio to its
floor in the same round.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from http.client import HTTPConnection as Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient
from tests.bench.cpu_floor import (
    KEY,
    TYPE,
    against,
    config,
    cpu_seconds,
    fill,
    on_threads_at_once,
    start_emulator,
)

CONNECTIONS = 4


def now() -> datetime:
    return datetime.now(timezone.utc)


def daemon_paths(url: str, count: int, http: str, folder: Path) -> tuple[float, float]:
    """CPU ms per task of the claim path and of the delivery path."""
    db_url = f"sqlite:///{folder / f'{http}.db'}"
    upgrade(db_url)
    bridge_config = BridgeConfig.load(
        env={},
        db_url=db_url,
        types=[TYPE],
        prefetch=count,
        workers=CONNECTIONS,
        connections=CONNECTIONS,
        default_task_seconds=0.01,
    )
    client = TaskManagerClient(config(url, "bench-daemon"), http=http)  # type: ignore[arg-type]
    with LocalQueue(db_url) as queue, client:
        jobs = DaemonJobs(queue.store, client, bridge_config)
        before = cpu_seconds()
        claimed = 0
        while claimed < count:
            claimed += jobs.pull_tick(now())
        claim_cpu = cpu_seconds() - before
        finished = 0
        while tasks := queue.dequeue_many(100, TYPE):
            queue.complete_many((task, {"ok": 1}) for task in tasks)
            finished += len(tasks)
        if finished != count:
            raise SystemExit(f"{http}: {finished} of {count} tasks finished locally")
        before = cpu_seconds()
        delivered = 0
        while delivered < count:
            delivered += jobs.push_tick(now())
        push_cpu = cpu_seconds() - before
        jobs.close()
    return claim_cpu / count * 1000, push_cpu / count * 1000


class Floor:
    """The two paths with nothing but HTTP and one row a task."""

    def __init__(self, url: str, type_id: int, folder: Path) -> None:
        self.path = folder / "floor.db"
        self.path.unlink(missing_ok=True)
        with sqlite3.connect(self.path) as setup:
            setup.execute("PRAGMA journal_mode=WAL")
            setup.execute(
                "CREATE TABLE claims (id INTEGER PRIMARY KEY, remote_id INTEGER, type TEXT,"
                " params TEXT, claimed_at TEXT, delivered INTEGER DEFAULT 0)"
            )
        self.parts = urlsplit(url)
        self.type_id = type_id
        self.headers = {
            "X-API-Key": KEY,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.lock = threading.Lock()
        self.remote_ids: list[int] = []

    def run(self, count: int) -> tuple[float, float]:
        """CPU ms per task of the claim floor and of the delivery floor."""
        before = cpu_seconds()
        self._on_threads(self._claimer)
        claim_cpu = cpu_seconds() - before
        if len(self.remote_ids) != count:
            raise SystemExit(f"floor: {len(self.remote_ids)} of {count} tasks claimed")
        before = cpu_seconds()
        self._on_threads(self._deliverer)
        push_cpu = cpu_seconds() - before
        return claim_cpu / count * 1000, push_cpu / count * 1000

    def _on_threads(self, work: Callable[[Connection, sqlite3.Connection], None]) -> None:
        def run(_: int) -> None:
            connection = Connection(self.parts.hostname or "", self.parts.port)
            database = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            database.execute("PRAGMA synchronous=NORMAL")
            work(connection, database)
            database.close()
            connection.close()

        on_threads_at_once(CONNECTIONS, run)

    def _post(self, connection: Connection, path: str, body: object) -> tuple[int, Any]:
        connection.request("POST", self.parts.path + path, json.dumps(body), self.headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def _claimer(self, connection: Connection, database: sqlite3.Connection) -> None:
        claim = {"worker_id": "f", "task_type_id": self.type_id}
        while True:
            status, body = self._post(connection, "/tasks/claim", claim)
            if status != 200:
                if "no active transaction" in str(body).lower():
                    return  # the emulator's empty queue
                continue  # a deadlock 500: again
            task = body["data"]
            with self.lock:
                database.execute(
                    "INSERT INTO claims (remote_id, type, params, claimed_at) VALUES (?, ?, ?, ?)",
                    (int(task["id"]), TYPE, json.dumps(task.get("params")), now().isoformat()),
                )
                self.remote_ids.append(int(task["id"]))

    def _deliverer(self, connection: Connection, database: sqlite3.Connection) -> None:
        done: list[int] = []
        body = {"worker_id": "f", "success": True, "result": {"ok": 1}}
        while True:
            with self.lock:
                if not self.remote_ids:
                    break
                remote_id = self.remote_ids.pop()
            while self._post(connection, f"/tasks/{remote_id}/complete", body)[0] != 200:
                pass
            done.append(remote_id)
        with self.lock:
            database.executemany(
                "UPDATE claims SET delivered = 1 WHERE remote_id = ?", [(i,) for i in done]
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="?", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--http", default="stdlib,aiohttp", help="the daemon's HTTP libraries")
    args = parser.parse_args()
    variants = [*args.http.split(","), "floor"]
    claims: dict[str, list[float]] = {name: [] for name in variants}
    pushes: dict[str, list[float]] = {name: [] for name in variants}
    emulator, url = start_emulator()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for round_no in range(args.rounds):
                shift = round_no % len(variants)
                for name in variants[shift:] + variants[:shift]:
                    type_id = fill(url, args.tasks, f"{round_no}-{name}")
                    if name == "floor":
                        claim, push = Floor(url, type_id, Path(scratch)).run(args.tasks)
                    else:
                        claim, push = daemon_paths(url, args.tasks, name, Path(scratch))
                    claims[name].append(claim)
                    pushes[name].append(push)
                    print(
                        f"  round {round_no + 1} {name:8} claim {claim:.3f}"
                        f"  delivery {push:.3f} ms/task",
                        flush=True,
                    )
    finally:
        emulator.terminate()
        emulator.wait()
    print(f"\nCPU ms per task, {args.tasks} tasks, {CONNECTIONS} connections:")
    for label, table in (("claim", claims), ("delivery", pushes)):
        for name, values in table.items():
            print(f"  {label:8} {name:8} {against(values, table['floor'], 'floor')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
