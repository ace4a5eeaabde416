"""Effects exactly once under SIGKILL: the rows a handler writes appear once per task,
however often workers and daemons die (promise 8).

Each round: N tasks, each writing K idea rows, a daemon and two workers as processes
against the emulator; some tasks kill their own worker once, inside their write
function or between their writes and the commit (tests/faults/effect_handlers.py), and
the harness SIGKILLs busy workers and the daemon at random. Then: exactly N x K rows,
each task's rows present exactly when its completion is, every remote task completed
with its result. Thread, async and process-pool workers, on a SQLite file and on
PostgreSQL; and the ``record_once`` way into a database of the handler's own.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bridge import BridgeConfig, LocalQueue
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import pg_base_url, wait_until
from .effect_handlers import ROWS
from .test_crash_anywhere import TYPE, Fleet

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("CRASH_SEED", "1234"))
TASKS = int(os.environ.get("EFFECT_TASKS", "16"))
KILLS = int(os.environ.get("EFFECT_KILLS", "4"))
HANDLERS = "tests.faults.effect_handlers"
IDEAS = "CREATE TABLE ideas (id INTEGER PRIMARY KEY{auto}, task_n INTEGER NOT NULL, title TEXT)"
MODES = {
    "thread": (f"{HANDLERS}:ideas", ()),
    "async": (f"{HANDLERS}:ideas_async", ()),
    "process": (f"{HANDLERS}:ideas", ("--pool", "process")),
}


def _ideas_table(connection: Any) -> None:
    postgres = connection.dialect.name == "postgresql"
    connection.execute(text(IDEAS.format(auto=" GENERATED ALWAYS AS IDENTITY" if postgres else "")))


def _config(folder: Path, db_url: str, server: EmulatorServer) -> Path:
    config = folder / "bridge.toml"
    config.write_text(
        f'db_url = "{db_url}"\ntypes = ["{TYPE}"]\nprefetch = 20\nworkers = 4\n'
        "lock_seconds = 2\nlease_margin_seconds = 5\ndefault_task_seconds = 0.05\n"
        "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
        "push_backoff_max_seconds = 0.5\nreap_interval_seconds = 0.2\n"
        "reconcile_interval_seconds = 1\nshutdown_push_seconds = 2\n"
        f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 2\nretry_attempts = 1\n'
        "backoff_base = 0.05\nretry_deadline = 2\n"
    )
    return config


def _params() -> list[dict[str, Any]]:
    """Every fourth task dies once: inside its write, or between it and the commit."""
    return [
        {"n": n, "die": ("inside", "between")[(n // 4) % 2]} if n % 4 == 1 else {"n": n}
        for n in range(TASKS)
    ]


def _run_round(
    tmp_path: Path, db_url: str, handler: str, worker_args: tuple[str, ...], own_db: str = ""
) -> tuple[EmulatorServer, list[Any], dict[str, int], Path]:
    """Create the tasks, run the fleet with kills until all are completed; (server,
    remote tasks, kills, config)."""
    rng = random.Random(SEED)
    marks = tmp_path / "marks"
    marks.mkdir()
    with EmulatorServer(api_key="effects-key") as server:
        client = server.client()
        client.register_task_type(TYPE, "1", {"type": "object"})
        ids = [client.create_task(TYPE, p) for p in _params()]
        config = _config(tmp_path, db_url, server)
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": server.api_key,
            "EFFECT_MARKS": str(marks),
            "EFFECT_OWN_DB": own_db,
            "CRASH_RUN_LOG": str(tmp_path / "runs.log"),
        }
        fleet = Fleet(config, env, tmp_path, handler, worker_args)
        kills: Counter[str] = Counter()
        try:
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.2, 0.6))
                victim = rng.choice(["daemon", "worker-1", "worker-2"])
                fleet.kill_and_restart(victim)
                kills[victim] += 1

            def completed() -> bool:
                for name, process in fleet.processes.items():
                    if process.poll() is not None:  # a task killed its worker: restart it
                        kills["self"] += 1
                        fleet.start(name)
                return server.store.count_tasks("completed") == TASKS

            drained = wait_until(completed, timeout=150, every=0.2)
        finally:
            fleet.stop()
        remote = [client.get_task(i) for i in ids]
    assert drained, f"not drained: {[(t.id, t.status) for t in remote]}, kills {dict(kills)}"
    return server, remote, dict(kills), config


def _check(rows: list[tuple[int, str]], remote: list[Any], config: Path, kills: dict) -> None:
    per_task = Counter(n for n, _ in rows)
    report = f"kills {kills}, rows {len(rows)} for {TASKS} x {ROWS}"
    assert len(rows) == TASKS * ROWS, report
    assert per_task == dict.fromkeys(range(TASKS), ROWS), report
    assert len(set(rows)) == len(rows), "a row written twice"
    assert [(t.status, t.result["ideas_found"]) for t in remote] == [("completed", ROWS)] * TASKS
    assert kills.get("self", 0) >= 1, f"no task killed its worker: {report}"


def _local_rows(db_url: str) -> list[tuple[int, str]]:
    with LocalQueue(db_url) as queue, queue.store.engine.begin() as conn:
        return [(int(n), str(t)) for n, t in conn.execute(text("SELECT task_n, title FROM ideas"))]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_writes_with_the_result_land_once_per_task_through_kills(
    mode: str, db_url: str, tmp_path: Path
):
    upgrade(db_url)
    with LocalQueue(db_url) as queue, queue.store.engine.begin() as conn:
        _ideas_table(conn)
    handler, worker_args = MODES[mode]
    _server, remote, kills, config = _run_round(tmp_path, db_url, handler, worker_args)
    rows = _local_rows(db_url)
    _check(rows, remote, config, kills)
    with LocalQueue(config=BridgeConfig.load(config)) as queue:
        local = [queue.store.get_task_by_remote_id(t.id) for t in remote]
    # Each task's rows are there exactly when its completion is: all of both.
    assert [(t.status, t.result) for t in local if t] == [
        ("done", {"ideas_found": ROWS, "n": n}) for n in range(TASKS)
    ]


def _own_database(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        path = tmp_path / "prismq_ideas.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE ideas (task_n INTEGER NOT NULL, title TEXT)")
        return str(path)
    import psycopg

    url = pg_base_url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS ideas, taskmanager_bridge_once")
        conn.execute("CREATE TABLE ideas (task_n INTEGER NOT NULL, title TEXT)")
    return url


def _own_rows(target: str) -> list[tuple[int, str]]:
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            found = conn.execute("SELECT task_n, title FROM ideas").fetchall()
            conn.execute("DROP TABLE IF EXISTS ideas, taskmanager_bridge_once")
        return [(int(n), str(t)) for n, t in found]
    with sqlite3.connect(target) as conn:
        return [(int(n), str(t)) for n, t in conn.execute("SELECT task_n, title FROM ideas")]


@pytest.mark.timeout(240)
def test_record_once_fences_writes_to_another_database_through_kills(db_url: str, tmp_path: Path):
    """The case that doubled rows: the handler commits its own rows, then its worker dies
    before the result is stored, and the task runs again."""
    upgrade(db_url)
    kind = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    own = _own_database(kind, tmp_path)
    _server, remote, kills, config = _run_round(
        tmp_path, db_url, f"{HANDLERS}:ideas_elsewhere", (), own
    )
    _check(_own_rows(own), remote, config, kills)
