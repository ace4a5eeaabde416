"""What an operator sees of tasks and workers, and the one-daemon rule, through the CLI
as a subprocess (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.ops.metrics import Metrics
from bridge.ops.operations import Operations
from bridge.storage.migrations import upgrade
from taskmanager import ClaimedTask
from taskmanager.emulator import EmulatorServer

from .helpers import ROOT, wait_until
from .test_daemon_processes import TYPE, cli, write_config

pytestmark = pytest.mark.acceptance
HANDLERS = "tests.integration.worker_handlers"


def bridge(
    db: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "--db-url", db, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def db(db_url: str) -> str:
    upgrade(db_url)
    return db_url


def test_tasks_lists_filters_and_shows_one_with_its_traceback_and_outbox_rows(db: str):
    with LocalQueue(db) as queue:
        ok = queue.enqueue("scrape", {"channel": "good"})
        bad = queue.enqueue("scrape", {"channel": "bad"})
        other = queue.enqueue("other", {"n": 1})
        claim = ClaimedTask(41, "scrape", {"channel": "remote"}, 2, 0, "w", queue.clock())
        remote, _ = queue.store.insert_claimed(claim, 300, queue.clock())
        for _ in (ok, bad, remote):
            taken = queue.dequeue(["scrape"])
            assert taken is not None
            if taken.id == bad.id:
                try:
                    raise ValueError("unlucky channel")
                except ValueError as exc:
                    queue.fail(taken, exc)
            else:
                queue.complete(taken, {"ideas_found": 3})
    listing = bridge(db, "tasks")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()[1:]
    assert [int(line.split()[0]) for line in lines] == [remote.id, other.id, bad.id, ok.id]
    failed = json.loads(bridge(db, "tasks", "--status", "failed", "--json").stdout)
    assert [(t["id"], t["error"]) for t in failed] == [(bad.id, "ValueError: unlucky channel")]
    assert [
        t["id"] for t in json.loads(bridge(db, "tasks", "--type", "other", "--json").stdout)
    ] == [other.id]
    assert [
        t["id"] for t in json.loads(bridge(db, "tasks", "--search", "remote", "--json").stdout)
    ] == [remote.id]
    shown = bridge(db, "tasks", "show", str(bad.id))
    assert shown.returncode == 0, shown.stderr
    assert "error: ValueError: unlucky channel" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout
    assert 'raise ValueError("unlucky channel")' in shown.stdout
    by_remote = json.loads(bridge(db, "tasks", "show", "remote:41", "--json").stdout)
    assert (by_remote["id"], by_remote["remote_attempt"], by_remote["status"]) == (
        remote.id,
        2,
        "done",
    )
    assert [(row["kind"], row["status"]) for row in by_remote["outbox"]] == [
        ("complete", "pending")
    ]
    missing = bridge(db, "tasks", "show", "remote:999")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no remote task 999" in missing.stderr
    assert bridge(db, "tasks", "show", "twelve").returncode == 2


def test_workers_record_themselves_and_show_alive_lost_or_stopped(db: str, tmp_path: Path):
    env = {"BRIDGE_WORKER_BEAT_SECONDS": "0.3"}
    with LocalQueue(db) as queue:
        queue.enqueue("mixed", {"kind": "hang"})  # holds one slot of the first worker
    command = [sys.executable, "-m", "bridge", "--db-url", db, "worker", "--handler"]
    first = subprocess.Popen(
        [*command, f"{HANDLERS}:mixed", "--type", "mixed", "--concurrency", "2"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = subprocess.Popen(
        [*command, f"{HANDLERS}:mixed_async", "--type", "other"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def workers() -> dict[int, dict]:
            doc = json.loads(bridge(db, "status", "--json", env=env).stdout)
            return {w["pid"]: w for w in doc["workers"]}

        assert wait_until(lambda: len(workers()) == 2 and workers()[first.pid]["running"] == 1, 30)
        seen = workers()
        assert seen[first.pid]["state"] == "alive" and seen[second.pid]["state"] == "alive"
        assert (
            seen[first.pid]["types"],
            seen[first.pid]["concurrency"],
            seen[first.pid]["pool"],
        ) == (
            ["mixed"],
            2,
            "thread",
        )
        assert (seen[second.pid]["pool"], seen[first.pid]["host"]) == (
            "asyncio",
            socket.gethostname(),
        )
        first.send_signal(signal.SIGKILL)  # gone without a word
        first.wait(10)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert wait_until(lambda: workers()[first.pid]["state"] == "lost", 10)
        assert workers()[second.pid]["state"] == "stopped"
        text = bridge(db, "status", env=env).stdout
        assert "LOST" in text and "stopped" in text
        config = BridgeConfig.load(env={}, db_url=db, worker_beat_seconds=0.3)
        with Operations.open(config) as operations:
            page = Metrics(operations).render().decode()
        assert 'taskmanager_bridge_workers{state="lost"} 1.0' in page
        assert 'taskmanager_bridge_workers{state="stopped"} 1.0' in page
        pruned = bridge(db, "prune", "--older-than", "90s")
        assert "0 silent worker(s)" in pruned.stdout  # both beat within the last 90 s
        with Operations.open(config) as operations:
            later = datetime.now(timezone.utc) + timedelta(minutes=1)
            assert operations.prune(timedelta(seconds=1), later)[2] == 2
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_a_second_daemon_on_the_same_queue_and_worker_id_is_refused(db: str, tmp_path: Path):
    with EmulatorServer() as server:
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        config = write_config(tmp_path, server, db)
        first = cli(config, "run", server=server)
        try:
            with LocalQueue(config=BridgeConfig.load(config)) as queue:
                assert wait_until(lambda: queue.store.get_state("last_tick") is not None, 30)
                contact_before = queue.store.get_state("contact")
            second = cli(config, "run", server=server)
            _out, err = second.communicate(timeout=60)
            assert second.returncode == 2, err
            assert f"pid {first.pid} on {socket.gethostname()}" in err, err
            assert [line for line in err.splitlines() if "error" in line] == [
                err.strip().splitlines()[-1]
            ], err
            with LocalQueue(config=BridgeConfig.load(config)) as queue:
                assert queue.store.get_state("contact") == contact_before  # nothing reset
            first.send_signal(signal.SIGKILL)  # gone: its lease is not waited out on this host
            first.communicate(timeout=10)
            with LocalQueue(config=BridgeConfig.load(config)) as queue:
                ticked = queue.store.get_state("last_tick")
                third = cli(config, "run", server=server)
                # Held, and ticking (so past its start: a SIGTERM now is a clean stop).
                assert wait_until(
                    lambda: (
                        _held_by(queue, third.pid) and queue.store.get_state("last_tick") != ticked
                    ),
                    30,
                )
            third.send_signal(signal.SIGTERM)
            assert third.communicate(timeout=30)[0] is not None and third.returncode == 0
            with LocalQueue(config=BridgeConfig.load(config)) as queue:
                assert not any(k.startswith("daemon:") for k in queue.store.states_with_prefix(""))
        finally:
            for process in (first,):
                if process.poll() is None:
                    process.kill()


def _held_by(queue: LocalQueue, pid: int) -> bool:
    held = queue.store.states_with_prefix("daemon:")
    return any(json.loads(value)["pid"] == pid for value in held.values())


def test_separate_worker_ids_share_one_postgresql_queue(db: str, tmp_path: Path):
    if not db.startswith("postgresql"):
        pytest.skip("a fleet shares one queue on PostgreSQL only")
    with EmulatorServer() as server:
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        config = write_config(tmp_path, server, db)
        daemons = [
            cli(config, "run", server=server, env_extra={"TASKMANAGER_WORKER_ID": f"host-{n}"})
            for n in (1, 2)
        ]
        try:
            with LocalQueue(config=BridgeConfig.load(config)) as queue:
                assert wait_until(lambda: len(queue.store.states_with_prefix("daemon:")) == 2, 30)
            assert all(d.poll() is None for d in daemons)
        finally:
            for daemon in daemons:
                daemon.send_signal(signal.SIGTERM)
                daemon.communicate(timeout=30)


def test_a_role_taken_at_once_by_many_goes_to_exactly_one(db: str):
    """Eight connections race for a free role at the same instant: one holds it, the
    other seven are told who does (the database serialises them)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    start = Barrier(8)
    queues = [LocalQueue(db) for _ in range(8)]
    try:
        for queue in queues:  # connected before the race, so nothing staggers the start
            queue.store.states_with_prefix("daemon:race")

        def take(n: int) -> str:
            start.wait()
            now = datetime.now(timezone.utc)
            return queues[n].store.hold_role("daemon:race", f"holder-{n}", now, lambda _: False)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(take, range(8)))
    finally:
        for queue in queues:
            queue.close()
    assert len(set(answers)) == 1
    winner = answers[0]
    assert winner in {f"holder-{n}" for n in range(8)}
    with LocalQueue(db) as queue:
        assert queue.store.states_with_prefix("daemon:") == {"race": winner}
