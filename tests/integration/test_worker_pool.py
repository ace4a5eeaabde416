"""``--pool process``: a handler process per slot, replaced when it hangs, dies or leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import LocalQueue

from .test_worker_runtime import HANDLERS, db, start, wait_finished, workers

__all__ = ["db", "workers"]

pytestmark = pytest.mark.integration


def test_abort_exit_hang_and_poison_end_their_task_only(db: str, tmp_path: Path, workers):
    expected = {
        "abort": "HandlerProcessDied: the handler process died (killed by SIGABRT)",
        "exit": "SystemExit: 3 (the handler called sys.exit(); only its task ended)",
        "interrupt": "KeyboardInterrupt:  (raised by the handler; only its task ended)",
        "hang": "timed out after 2.0 s (time limit; the handler's process was killed",
        "set": "result refused: results.items[3].seen_at: set is not JSON",
        "error": "ValueError: unknown kind 'error'",
    }
    with LocalQueue(db) as queue:
        poison = [queue.enqueue("mixed", {"kind": k, "n": i}) for i, k in enumerate(expected)]
        good = [queue.enqueue("mixed", {"kind": "good", "n": n}) for n in range(10)]
    worker = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:mixed",
        "--type",
        "mixed",
        "--pool",
        "process",
        "--concurrency",
        "2",
        "--time-limit",
        "2",
    )
    states = wait_finished(db, [t.id for t in poison + good], worker)
    for task in poison:
        status, error = states[task.id]
        assert status == "failed" and error.startswith(expected[task.params["kind"]]), error
    assert all(states[t.id][0] == "done" for t in good)
    assert worker.alive()
    assert "pool process" in worker.text()
    assert worker.stop() == 0


def test_a_leaking_handler_process_is_replaced(db: str, tmp_path: Path, workers):
    with LocalQueue(db) as queue:
        ids = [queue.enqueue("leaky", {"n": n}).id for n in range(6)]
        progress = queue.enqueue("p", {"n": 1})
    worker = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:leaky",
        "--type",
        "leaky",
        "--pool",
        "process",
        "--max-memory-mb",
        "40",
    )
    wait_finished(db, ids, worker)
    with LocalQueue(db) as queue:
        pids = [queue.get(i).result["pid"] for i in ids]
    assert len(set(pids)) >= 2, f"one process ran every task: {pids}"
    assert worker.stop() == 0
    runner = start(
        workers,
        db,
        tmp_path,
        "--handler",
        f"{HANDLERS}:with_progress",
        "--type",
        "p",
        "--pool",
        "process",
        "--max-tasks-per-child",
        "1",
    )
    wait_finished(db, [progress.id], runner)
    with LocalQueue(db) as queue:
        assert queue.get(progress.id).progress == 40
    assert runner.stop() == 0
