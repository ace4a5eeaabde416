"""The local queue under real processes: contention, SIGKILL, durability (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridge import LocalQueue, TaskNotHeldError
from tests.seed import seed_claimed_tasks

WORKER = str(Path(__file__).parent / "procs" / "queue_worker.py")


def seed_remote_tasks(url: str, count: int) -> None:
    seed_claimed_tasks(
        url, range(10_000, 10_000 + count), task_type="bulk", worker_id="bridge-host"
    )


def run_worker(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("processes", "count"), [(4, 2000), (8, 4000)])
def test_processes_each_task_handed_out_exactly_once(migrated_url: str, processes: int, count: int):
    seed_remote_tasks(migrated_url, count)
    workers = [run_worker(migrated_url, "drain") for _ in range(processes)]
    handed_out: list[int] = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        handed_out.extend(json.loads(out))
    assert len(handed_out) == count
    assert [n for n, times in Counter(handed_out).items() if times > 1] == []
    with LocalQueue(migrated_url) as queue:
        assert queue.status().tasks == {("bulk", "done"): count}
        rows = queue.store.pending_outbox(datetime.now(timezone.utc), count + 1)
        assert len(rows) == count and len({r.remote_id for r in rows}) == count


def test_worker_killed_while_holding_task_is_handed_out_again(migrated_url: str):
    with LocalQueue(migrated_url, locked_by="survivor") as queue:
        queue.enqueue("work", {"n": 1})
        holder = run_worker(migrated_url, "hold", "1")
        line = holder.stdout.readline() if holder.stdout else ""
        held = json.loads(line)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.returncode == -signal.SIGKILL
        dead_workers_task = queue.get(held["id"])
        assert (
            dead_workers_task.status == "running"
            and dead_workers_task.locked_by == held["locked_by"]
        )
        assert queue.dequeue() is None  # still locked
        later = datetime.now(timezone.utc) + timedelta(seconds=2)
        assert queue.store.requeue_stale_locks(queue.config.lease_margin_seconds, later) == (1, 0)
        again = queue.dequeue()
        assert again.id == held["id"] and again.locked_by == "survivor" and again.attempts == 2
        with pytest.raises(TaskNotHeldError):
            queue.complete(dead_workers_task, {"late": True})
        queue.complete(again, {"ok": True})
        assert queue.get(again.id).result == {"ok": True}


def test_result_durable_when_process_is_killed_right_after_complete(migrated_url: str):
    seed_remote_tasks(migrated_url, 1)
    worker = run_worker(migrated_url, "complete-and-die")
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, err
    task_id = json.loads(out)["id"]
    with LocalQueue(migrated_url) as queue:
        task = queue.get(task_id)
        assert task.status == "done" and task.result == {"survived": True}
        [row] = queue.outbox()
        assert (row.kind, row.status, row.payload) == (
            "complete",
            "pending",
            {"result": {"survived": True}},
        )
