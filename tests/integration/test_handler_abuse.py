"""What a handler does to the process or the loop that runs it ends its own task at most:
never another task's result, never a task run twice at once, never a task re-run for
ever, never the worker (promise 6). Each test is a scenario an adversary ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import BridgeConfig, LocalQueue, TaskPolicy
from bridge.storage.migrations import upgrade
from bridge.worker import Worker

from .abusive_handlers import raises_generator_exit, write_plugin
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


# -- the async worker ---------------------------------------------------------------------
def test_a_blocking_handler_is_never_run_twice_at_once(local: LocalQueue):
    """Break 2: a blocking handler's limit ran out while an async handler blocked the loop;
    its task was handed back and started again while its first thread still ran."""
    runs: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def slow(params: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic() - t0
        time.sleep(2.0)
        runs.append((start, time.monotonic() - t0))
        return {"slow": True}

    async def blocker(params: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        time.sleep(1.0)  # blocks the event loop from 0.5 s to 1.5 s
        return {"blocked": True}

    slow_task = local.enqueue("slow", {"x": 1})
    blocker_task = local.enqueue("blocker", {"x": 1})
    worker = Worker(
        local,
        {"slow": slow, "blocker": blocker},
        concurrency=2,
        policies={"slow": TaskPolicy(time_limit=1.0)},
        poll_seconds=0.05,
    )
    _run_until_finished(worker, local, [slow_task.id, blocker_task.id], 10)
    time.sleep(2.5)  # a second run, had one started, ends by now
    assert len(runs) == 1, f"the task ran {len(runs)} times: {runs}"
    after = local.get(slow_task.id)
    assert after.status == "failed" and (after.error or "").startswith("timed out after 1.0 s")
    assert local.get(blocker_task.id).status == "done"


def test_an_async_handler_raising_generator_exit_fails_its_task(local: LocalQueue, tmp_path):
    """Break 3: GeneratorExit was re-raised: the task stayed running, re-queued at every
    lock expiry, and ran again (10 runs in 25 s, never failed)."""
    runs = tmp_path / "runs.txt"
    bad = local.enqueue("t", {"kind": "genexit", "n": 0, "runs": str(runs)})
    good = [local.enqueue("t", {"n": n, "runs": str(runs)}) for n in range(1, 4)]
    worker = Worker(local, {"t": raises_generator_exit}, concurrency=2, poll_seconds=0.05)
    _run_until_finished(worker, local, [bad.id] + [t.id for t in good], 10)
    after = local.get(bad.id)
    assert (after.status, after.error) == (
        "failed",
        "GeneratorExit: the handler's own GeneratorExit",
    )
    assert _runs(runs).count("0") == 1
    assert [local.get(t.id).status for t in good] == ["done"] * 3
    assert worker.exit_code == 0


def _abuse(db: str, tmp_path: Path, workers, kind: str, innocents: int = 12):
    """A worker process running ``loop_abuser`` on ``innocents`` innocent tasks and one
    task of ``kind`` among them, at concurrency 8."""
    runs = tmp_path / "runs.txt"
    with LocalQueue(db) as queue:
        before = [queue.enqueue("a", {"n": n, "runs": str(runs)}) for n in range(innocents // 2)]
        culprit = queue.enqueue("a", {"n": 100, "kind": kind, "runs": str(runs)})
        after = [
            queue.enqueue("a", {"n": n, "runs": str(runs)})
            for n in range(innocents // 2, innocents)
        ]
    worker = start(
        workers, db, tmp_path, "--handler", f"{ABUSIVE}:loop_abuser", "--type", "a",
        "--concurrency", "8",
    )  # fmt: skip
    return worker, culprit, before + after, runs


@pytest.mark.parametrize("kind", ["cancel_all", "stop", "interrupt"])
def test_what_a_handler_does_to_the_loop_ends_no_other_task_and_not_the_worker(
    db: str, tmp_path: Path, workers, kind: str
):
    """Breaks 5 and 6: `for t in asyncio.all_tasks(): t.cancel()` in a handler failed
    innocent tasks with CancelledError and ended the worker (rc 0, 3 or -11);
    `loop.stop()` ended it with rc 0 and tasks left running."""
    worker, culprit, innocent, _ = _abuse(db, tmp_path, workers, kind)
    states = wait_finished(db, [culprit.id] + [t.id for t in innocent], worker)
    assert worker.alive(), f"the worker ended (rc {worker.process.poll()}):\n{worker.text()}"
    failed = {i: s for i, s in states.items() if i != culprit.id and s[0] != "done"}
    assert not failed, f"innocent tasks failed: {failed}\n{worker.text()}"
    with LocalQueue(db) as queue:
        assert queue.status().tasks.get(("a", "running"), 0) == 0
    assert worker.stop() == 0


def test_a_broken_loop_ends_the_worker_non_zero_with_no_task_left_running(
    db: str, tmp_path: Path, workers
):
    """A loop that cannot run any more (its selector closed by a handler) ends the worker
    with a code systemd's Restart=on-failure restarts, and every task it held is back in
    the queue: none left "running" until its lock runs out."""
    worker, culprit, innocent, _ = _abuse(db, tmp_path, workers, "break", innocents=6)
    assert wait_until(lambda: not worker.alive(), 60), worker.text()
    assert worker.process.returncode not in (0, None), worker.text()
    with LocalQueue(db) as queue:
        statuses = [queue.get(t.id).status for t in [culprit, *innocent]]
    assert "running" not in statuses, statuses
    assert "the handlers' event loop is broken" in worker.text()
