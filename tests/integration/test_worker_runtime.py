"""The worker as a real process: no handler outcome ends it, only its task (promise 6).

Each test starts ``python -m bridge worker`` on a real SQLite file and on the real
PostgreSQL, feeds it tasks, and polls the queue (never sleeps) until they end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import LocalQueue
from bridge.storage.migrations import upgrade

from .helpers import ROOT, wait_until

pytestmark = pytest.mark.integration
HANDLERS = "tests.integration.worker_handlers"
FINISHED = ("done", "failed")
# Each handler as a function and as a coroutine (the worker's event loop): same promises.
FLAVOURS = pytest.mark.parametrize("flavour", ["", "_async"], ids=["sync", "async"])


class WorkerProcess:
    """``taskmanager-bridge worker`` with its log in a file the test can read while it runs."""

    def __init__(self, db: str, folder: Path, *args: str, env: dict[str, str] | None = None):
        self.log = folder / f"worker-{len(list(folder.glob('worker-*.log')))}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "-v", "--db-url", db, "worker", *args],
                stdout=out,
                stderr=out,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, fragment: str, what: str) -> None:
        found = wait_until(lambda: fragment in self.text() or self.process.poll() is not None, 60)
        assert found and fragment in self.text(), f"{what}: no {fragment!r} in log:\n{self.text()}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def db(db_url: str) -> str:
    upgrade(db_url)
    return db_url


@pytest.fixture
def workers(db: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def start(workers: list[WorkerProcess], db: str, folder: Path, *args: str, **kw) -> WorkerProcess:
    worker = WorkerProcess(db, folder, *args, **kw)
    workers.append(worker)
    return worker


def wait_finished(db: str, ids: list[int], worker: WorkerProcess) -> dict[int, tuple[str, str]]:
    """Poll until every task is done or failed; (status, error) by id."""
    with LocalQueue(db) as queue:

        def settled() -> bool:
            return all(queue.get(i).status in FINISHED for i in ids) or not worker.alive()

        wait_until(settled, 120, 0.1)
        states = {i: (queue.get(i).status, queue.get(i).error or "") for i in ids}
    unfinished = {i: s for i, s in states.items() if s[0] not in FINISHED}
    assert not unfinished, f"tasks not finished: {unfinished}\nworker log:\n{worker.text()}"
    return states


@FLAVOURS
def test_poison_results_and_exits_end_their_task_only(
    db: str, tmp_path: Path, workers, flavour: str
):
    poison = {
        "set": "result refused: results.items[3].seen_at: set is not JSON",
        "nan": "result refused: results.result: nan is not JSON",
        "object": "result refused: results.x: object is not JSON",
        "exit": "SystemExit: 3 (the handler called sys.exit(); only its task ended)",
        "interrupt": "KeyboardInterrupt:  (raised by the handler; only its task ended)",
        "error": "ValueError: unknown kind 'error'",
    }
    with LocalQueue(db) as queue:
        kinds = [kind for kind in poison for _ in range(2)]  # each poison twice
        tasks = [queue.enqueue("mixed", {"kind": k, "n": i}) for i, k in enumerate(kinds)]
        good = [queue.enqueue("mixed", {"kind": "good", "n": n}) for n in range(20)]
    worker = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:mixed{flavour}",
        "--type",
        "mixed",
        "--concurrency",
        "2",
    )
    states = wait_finished(db, [t.id for t in tasks + good], worker)
    assert worker.alive(), f"the worker died:\n{worker.text()}"
    for task in tasks:
        status, error = states[task.id]
        assert status == "failed" and error.startswith(poison[task.params["kind"]]), error
    with LocalQueue(db) as queue:
        results = [queue.get(t.id).result for t in good]
    assert all(states[t.id][0] == "done" for t in good)
    assert results[1] == {
        "n": 1,
        "seen_at": "2026-11-28T12:00:00+00:00",
        "price": "9.99",
        "id": "00000000-0000-0000-0000-000000000001",
        "pair": [1, 2],
    }
    assert worker.stop() == 0
    assert ("pool asyncio (one event loop)" in worker.text()) == (flavour == "_async")
    assert "worker stopped: 20 done, 12 failed" in worker.text()
    assert "task 1 (mixed) failed: result refused" in worker.text()


@FLAVOURS
def test_a_hung_handler_times_out_and_the_worker_moves_on(
    db: str, tmp_path: Path, workers, flavour: str
):
    with LocalQueue(db) as queue:
        hung = queue.enqueue("mixed", {"kind": "hang", "n": 0})
        after = [queue.enqueue("mixed", {"kind": "good", "n": n}) for n in range(3)]
    worker = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:mixed{flavour}",
        "--type",
        "mixed",
        "--time-limit",
        "0.5",
    )
    states = wait_finished(db, [hung.id] + [t.id for t in after], worker)
    assert states[hung.id][0] == "failed"
    assert states[hung.id][1].startswith("timed out after 0.5 s")
    assert all(states[t.id][0] == "done" for t in after)
    assert worker.alive()
    assert worker.stop() == 0


@FLAVOURS
def test_sigterm_hands_a_long_task_back_for_another_worker(
    db: str, tmp_path: Path, workers, flavour: str
):
    gate = tmp_path / "gate"
    with LocalQueue(db) as queue:
        task = queue.enqueue("gated", {"n": 1, "gate": str(gate)})
    first = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:gated{flavour}",
        "--type",
        "gated",
        "--grace",
        "0.2",
    )
    with LocalQueue(db) as queue:
        assert wait_until(lambda: queue.get(task.id).status == "running", 60), first.text()
        assert first.stop() == 0, first.text()
        handed = queue.get(task.id)
    assert handed.status == "queued" and handed.locked_by is None, handed
    assert "handed back" in (handed.error or "")
    assert "1 handed back" in first.text()
    gate.touch()
    second = start(
        workers, db, tmp_path, "--handler", f"{HANDLERS}:gated{flavour}", "--type", "gated"
    )
    assert wait_finished(db, [task.id], second)[task.id][0] == "done"
    assert second.stop() == 0


@FLAVOURS
def test_a_second_signal_exits_at_once(db: str, tmp_path: Path, workers, flavour: str):
    with LocalQueue(db) as queue:
        task = queue.enqueue("gated", {"n": 1, "gate": str(tmp_path / "never")})
    worker = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:gated{flavour}",
        "--type",
        "gated",
        "--grace",
        "3600",
    )
    with LocalQueue(db) as queue:
        assert wait_until(lambda: queue.get(task.id).status == "running", 60), worker.text()
    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for_log("taking no more tasks", "first signal")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 1, worker.text()
    assert "second signal: exiting now" in worker.text()


def test_schema_gone_exits_1_naming_the_command(db: str, tmp_path: Path, workers):
    if not db.startswith("postgresql"):
        import sqlite3

        def drop() -> None:
            with sqlite3.connect(db) as conn:
                conn.executescript(
                    "DROP TABLE outbox; DROP TABLE tasks; DROP TABLE alembic_version;"
                )
    else:
        from sqlalchemy import create_engine, text

        def drop() -> None:
            engine = create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE outbox, tasks, alembic_version"))
            engine.dispose()

    worker = start(workers, db, tmp_path, "--handler", f"{HANDLERS}:mixed", "--type", "mixed")
    worker.wait_for_log("worker started", "start line")
    drop()
    assert worker.process.wait(60) == 1, worker.text()
    assert "taskmanager-bridge db upgrade" in worker.text()


def test_handler_from_the_current_folder_and_the_start_line(db: str, tmp_path: Path, workers):
    app = tmp_path / "app"
    app.mkdir()
    (app / "mymod.py").write_text("def fn(params):\n    return {'twice': params['x'] * 2}\n")
    with LocalQueue(db) as queue:
        task = queue.enqueue("mine", {"x": 21})
    env = {"PYTHONPATH": str(ROOT)}
    here = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "-v",
            "--db-url",
            db,
            "worker",
            "--handler",
            "mymod:fn",
            "--type",
            "mine",
            "--max-tasks",
            "1",
        ],
        cwd=app,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert here.returncode == 0, here.stderr
    assert "worker started: types mine; concurrency 1; pool thread" in here.stderr
    assert "password" not in here.stderr.lower()
    assert f"task {task.id} (mine) done in " in here.stderr
    with LocalQueue(db) as queue:
        assert queue.get(task.id).result == {"twice": 42}
        other = queue.enqueue("mine", {"x": 1})
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "--db-url",
            db,
            "worker",
            "--handler",
            "mymod:fn",
            "--type",
            "mine",
            "--max-tasks",
            "1",
            "--app-dir",
            str(app),
        ],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    with LocalQueue(db) as queue:
        assert queue.get(other.id).result == {"twice": 2}
