"""What a handler does to the process or the loop that runs it ends its own task at most:
never another task's result, never a task run twice at once, never a task re-run for
ever, never the worker (promise 6). Each test is a scenario an adversary ran.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.migrate import upgrade
from bridge.worker import Worker

from .abusive_handlers import write_plugin
from .helpers import wait_until
from .test_worker_runtime import db, start, wait_finished, workers

__all__ = ["db", "workers"]

pytestmark = pytest.mark.integration
ABUSIVE = "tests.integration.abusive_handlers"
FINISHED = ("done", "failed")


@pytest.fixture
def local(tmp_path: Path):
    url = str(tmp_path / "abuse.db")
    upgrade(url)
    with LocalQueue(config=BridgeConfig.load(env={}, db_url=url, lock_seconds=2)) as queue:
        yield queue


def _run_until_finished(worker: Worker, queue: LocalQueue, ids: list[int], seconds: float) -> None:
    """Run ``worker`` in a thread until every task in ``ids`` is done or failed (or
    ``seconds`` pass), then stop it and wait for it."""
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    wait_until(lambda: all(queue.get(i).status in FINISHED for i in ids), seconds, 0.05)
    worker.stop()
    runner.join(30)
    assert not runner.is_alive(), "the worker did not stop"


def _runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- the process pool -------------------------------------------------------------------
def test_a_forking_handlers_child_cannot_answer_for_another_task(db: str, tmp_path: Path, workers):
    """Break 1: the forked copy's answer stayed in the pipe and was taken as the next
    task's result (`task params n=2 status=done stored result={'n': 1}`)."""
    with LocalQueue(db) as queue:
        ids = [queue.enqueue("fork", {"n": n}).id for n in range(8)]
    worker = start(
        workers, db, tmp_path, "--handler", f"{ABUSIVE}:forking", "--type", "fork",
        "--pool", "process", "--concurrency", "1",
    )  # fmt: skip
    wait_finished(db, ids, worker)
    with LocalQueue(db) as queue:
        tasks = [queue.get(i) for i in ids]
    assert [(t.status, t.result) for t in tasks] == [
        ("done", {"n": n, "by_child": False}) for n in range(8)
    ], worker.text()
    assert worker.alive()
    assert worker.stop() == 0


def test_an_answer_the_worker_cannot_read_fails_its_task_once(db: str, tmp_path: Path, workers):
    """Break 4: an exception class only the handler's process can import made reading the
    answer raise in the worker; the task re-ran at every lock expiry."""
    plugin_dir = tmp_path / "plugins"
    module = write_plugin(plugin_dir)
    runs = tmp_path / "runs.txt"
    common = {"plugin_dir": str(plugin_dir), "plugin_module": module, "runs": str(runs)}
    with LocalQueue(db) as queue:
        bad = queue.enqueue("plugin", {**common, "kind": "plugin", "n": 0})
        good = [queue.enqueue("plugin", {**common, "n": n}) for n in range(1, 4)]
    worker = start(
        workers, db, tmp_path, "--handler", f"{ABUSIVE}:raises_unimportable",
        "--type", "plugin", "--pool", "process",
        env={"BRIDGE_LOCK_SECONDS": "1"},
    )  # fmt: skip
    states = wait_finished(db, [bad.id] + [t.id for t in good], worker)
    status, error = states[bad.id]
    assert status == "failed"
    assert "PluginError: plugin failed on 0" in error, error
    assert "could not be read" in error, error
    assert all(states[t.id][0] == "done" for t in good)
    time.sleep(2.5)  # two lock times: a task left "running" would have run again by now
    assert _runs(runs).count("0") == 1, _runs(runs)
    assert "unexpected error" not in worker.text()
    assert worker.stop() == 0
