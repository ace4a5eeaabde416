"""Crash anywhere: SIGKILL the daemon and the workers at random moments, restart them,
and check that nothing is lost, nothing is wrong, and no task ran twice at once.

Seeded (CRASH_SEED, default 1234); CRASH_KILLS (default 30) kills per run, more
for a soak: ``python3 -m pytest tests/faults --soak -s`` (200 kills, 600 tasks), or
any size: CRASH_KILLS=500 CRASH_TASKS=1000 python3 -m pytest tests/faults -k crash
Kill points are hit here at random: between a remote claim and its local insert
(daemon killed mid-pull), between a local commit and its delivery (results waiting
in the outbox), during delivery after the server committed (answers dropped after
commit by the emulator, with kills around them). tests/faults/test_kill_points.py
forces each of those windows deterministically.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import wait_until
from .handlers import POISONS, expected

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TYPE = "crash.work"
SEED = int(os.environ.get("CRASH_SEED", "1234"))
KILLS = int(os.environ.get("CRASH_KILLS", "30"))
TASKS = int(os.environ.get("CRASH_TASKS", "180"))


class Fleet:
    """The daemon and two workers as processes, each restartable after a kill."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        folder: Path,
        handler: str = "tests.faults.handlers:compute",
        worker_args: tuple[str, ...] = (),
    ) -> None:
        common = [sys.executable, "-m", "bridge", "--config", str(config)]
        worker = [
            *common,
            "worker",
            "--handler",
            handler,
            "--type",
            TYPE,
            "--concurrency",
            "2",
            *worker_args,
        ]
        self.commands = {"daemon": [*common, "run"], "worker-1": worker, "worker-2": worker}
        self.env, self.folder = env, folder
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name in self.commands:
            self.start(name)

    def start(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            self.commands[name], stdout=log, stderr=log, env=self.env, cwd=ROOT
        )
        log.close()

    def busy_worker(self, run_log: Path) -> str | None:
        """A worker process with a handler run in progress (started, not ended), if any."""
        if not run_log.exists():
            return None
        open_pids: set[int] = set()
        for line in run_log.read_text().splitlines():
            pid, event, _n, _at = line.split()
            (open_pids.add if event == "start" else open_pids.discard)(int(pid))
        for name, process in self.processes.items():
            if name != "daemon" and process.pid in open_pids:
                return name
        return None

    def wait_for_busy_worker(self, run_log: Path, timeout: float = 10.0) -> str | None:
        """A worker caught mid-handler within ``timeout`` (processes restart slowly on a
        loaded machine: looking once would mostly find none and kill idle processes)."""
        found: list[str] = []

        def busy() -> bool:
            name = self.busy_worker(run_log)
            if name is not None:
                found.append(name)
            return name is not None

        wait_until(busy, timeout, every=0.02)
        return found[-1] if found else None

    def kill_and_restart(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.start(name)

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def overlapping_runs(run_log: Path) -> list[str]:
    """Runs of one task by two processes whose [start, end] intervals overlap."""
    open_runs: dict[tuple[int, int], float] = {}
    runs: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for line in run_log.read_text().splitlines():
        pid, event, n, at = line.split()
        key = (int(pid), int(n))
        if event == "start":
            open_runs[key] = float(at)
        elif key in open_runs:
            runs[int(n)].append((open_runs.pop(key), float(at), int(pid)))
    problems = []
    for n, intervals in runs.items():
        intervals.sort()
        for (s1, e1, p1), (s2, e2, p2) in itertools.pairwise(intervals):
            if s2 < e1:
                problems.append(
                    f"task n={n}: pid {p1} [{s1:.3f}, {e1:.3f}] and pid {p2} "
                    f"[{s2:.3f}, {e2:.3f}] overlap"
                )
    return problems


@pytest.mark.timeout(120 + KILLS + TASKS // 10)
def test_crash_anywhere_loses_nothing(tmp_path):
    rng = random.Random(SEED)
    db = str(tmp_path / "queue.db")
    upgrade(db)
    run_log = tmp_path / "runs.log"
    with EmulatorServer(api_key="crash-key") as server:
        client = server.client()
        client.register_task_type(TYPE, "1", {"type": "object"})
        params = [{"n": i} for i in range(TASKS)]
        ids = [client.create_task(TYPE, p) for p in params]
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\nprefetch = 40\nworkers = 4\n'
            "lock_seconds = 2\nlease_margin_seconds = 5\ndefault_task_seconds = 0.05\n"
            "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
            "push_backoff_max_seconds = 0.5\nreap_interval_seconds = 0.2\n"
            "reconcile_interval_seconds = 1\nshutdown_push_seconds = 2\n"
            f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 2\nretry_attempts = 1\n'
            "backoff_base = 0.05\nretry_deadline = 2\n"
        )
        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key, "CRASH_RUN_LOG": str(run_log)}
        fleet = Fleet(config, env, tmp_path)
        kills: dict[str, int] = defaultdict(int)
        try:
            for kill in range(KILLS):
                time.sleep(rng.uniform(0.05, 0.35))
                if kill % 10 == 3:  # an answer lost after the server committed it
                    server.faults.drop_after_commit(
                        path=rng.choice(["/tasks/*/complete", "/tasks/claim", "/tasks/*/progress"])
                    )
                busy = fleet.wait_for_busy_worker(run_log) if rng.random() < 0.5 else None
                victim = busy or rng.choice(["daemon", "daemon", "worker-1", "worker-2"])
                fleet.kill_and_restart(victim)
                kills[victim] += 1
                kills["mid-task"] += busy is not None
            server.faults.clear()

            def all_completed() -> bool:
                return server.store.count_tasks("completed") == TASKS

            drained = wait_until(all_completed, timeout=120, every=0.25)
        finally:
            fleet.stop()
        remote = {i: client.get_task(i) for i in ids}
        with LocalQueue(config=BridgeConfig.load(config)) as queue:
            counts = queue.status()
            pending = queue.outbox("pending", 10_000)
            dead = queue.outbox("dead", 10_000)
    wrong = [
        (i, t.status, t.result)
        for (i, t), p in zip(remote.items(), params, strict=True)
        if t.status != "completed" or t.result != expected(p)
    ]
    starts: dict[str, int] = defaultdict(int)
    for line in run_log.read_text().splitlines():
        if " start " in line:
            starts[line.split()[2]] += 1
    rerun = sum(1 for count in starts.values() if count > 1)
    report = (
        f"seed {SEED}, kills {dict(kills)}, tasks run again after a kill {rerun}, "
        f"remote completed "
        f"{sum(t.status == 'completed' for t in remote.values())}/{TASKS}, "
        f"local {counts.tasks}, outbox {counts.outbox}"
    )
    print(report)
    # The kills hit what they were meant to: the daemon, both workers, handlers mid-run
    # (whose tasks had to run again).
    if KILLS >= 20:
        assert kills["daemon"] and kills["worker-1"] and kills["worker-2"], report
        assert kills["mid-task"] and rerun, f"no kill interrupted a handler: {report}"
    assert drained, f"not drained: {report}"
    assert wrong == [], f"wrong or missing results: {wrong[:5]} ({report})"
    assert pending == [], f"outbox rows never delivered: {pending[:3]}"
    assert dead == [], f"dead rows: {[(d.kind, d.last_error) for d in dead[:3]]}"
    assert overlapping_runs(run_log) == []


def write_config(folder: Path, db: str, server: EmulatorServer) -> Path:
    config = folder / "bridge.toml"
    config.write_text(
        f'db_url = "{db}"\ntypes = ["{TYPE}"]\nprefetch = 20\nworkers = 4\n'
        "lock_seconds = 2\nlease_margin_seconds = 5\ndefault_task_seconds = 0.05\n"
        "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
        "push_backoff_max_seconds = 0.5\nreap_interval_seconds = 0.2\n"
        "reconcile_interval_seconds = 1\nshutdown_push_seconds = 2\n"
        "busy_timeout_seconds = 0.5\n"
        f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 2\nretry_attempts = 1\n'
        "backoff_base = 0.05\nretry_deadline = 2\n"
    )
    return config


@pytest.mark.timeout(240)
def test_poison_tasks_and_a_locked_database_among_kills(tmp_path):
    """The poison-task and database-fault round: every 5th task is poison (a set or NaN in
    its result, sys.exit(), KeyboardInterrupt); mid-run the database's write lock is held
    past the busy timeout until every worker has met it; workers are killed now and then.
    The workers never exit on their own, every good task completes with its result, every
    poison task ends failed on the server (after the server's own 3 attempts)."""
    import sqlite3

    rng = random.Random(SEED)
    db = str(tmp_path / "queue.db")
    upgrade(db)
    run_log = tmp_path / "runs.log"
    tasks = 60
    with EmulatorServer(api_key="crash-key") as server:
        client = server.client()
        client.register_task_type(TYPE, "1", {"type": "object"})
        params = [
            {"n": i, "poison": POISONS[(i // 5) % len(POISONS)]} if i % 5 == 4 else {"n": i}
            for i in range(tasks)
        ]
        ids = [client.create_task(TYPE, p) for p in params]
        config = write_config(tmp_path, db, server)
        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key, "CRASH_RUN_LOG": str(run_log)}
        fleet = Fleet(config, env, tmp_path, "tests.faults.handlers:compute_or_poison")
        try:
            for _ in range(6):
                time.sleep(rng.uniform(0.1, 0.4))
                fleet.kill_and_restart(rng.choice(["daemon", "worker-1", "worker-2"]))
            # Work for both workers (local-only tasks, never sent), then the lock: an idle
            # worker looks for queued work without the write lock and would never meet it.
            with LocalQueue(db) as local:
                local.enqueue_many((TYPE, {"n": 1000 + i}) for i in range(4))
            holder = sqlite3.connect(db, isolation_level=None, timeout=30)
            holder.execute("BEGIN IMMEDIATE")
            logs = [tmp_path / f"{name}.log" for name in ("worker-1", "worker-2")]
            met = wait_until(
                lambda: all("database trouble" in log.read_text(errors="replace") for log in logs),
                timeout=60,
            )
            holder.execute("COMMIT")
            holder.close()
            assert met, "a worker never met the held lock"
            poisoned = sum("poison" in p for p in params)

            def settled() -> bool:
                # Not this round's subject: a daemon that starts while the lock is held exits
                # 2 at start (its start-up does not wait the lock out); start it again.
                if fleet.processes["daemon"].poll() is not None:
                    fleet.start("daemon")
                done = server.store.count_tasks("completed") == tasks - poisoned
                return done and server.store.count_tasks("failed") == poisoned

            drained = wait_until(settled, timeout=120, every=0.25)
            exited = {name: p.poll() for name, p in fleet.processes.items() if p.poll() is not None}
        finally:
            fleet.stop()
        remote = {i: client.get_task(i) for i in ids}
    report = f"remote {[(i, t.status) for i, t in remote.items() if t.status != 'completed']}"
    assert exited == {}, f"workers exited on their own: {exited}"
    assert drained, f"not settled: {report}"
    for (i, task), p in zip(remote.items(), params, strict=True):
        if "poison" in p:
            assert task.status == "failed", (i, task.status)
            if p["poison"] == "set":
                assert "results.seen: set is not JSON" in (task.error_message or ""), task
        else:
            assert task.status == "completed" and task.result == expected(p), (i, task)
