"""Database trouble under a running worker process is waited out (promise 6).

A write lock held longer than the busy timeout, a full disk (a 16 MiB tmpfs), a
database file made read-only: each strikes while a handler is finishing, so a
computed result meets an unwritable database. The same process must log the
cause, keep its result, and store it and everything after once the cause goes.
Real faults need root (mount, chattr); skipped with the reason elsewhere.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import LocalQueue
from bridge.migrate import upgrade

from ..integration.helpers import wait_until
from ..integration.test_worker_runtime import HANDLERS, WorkerProcess, wait_finished
from .test_storage import _run, fill, truncate_wal

pytestmark = pytest.mark.integration
TROUBLE = "database trouble while storing the result of task"


@pytest.fixture
def procs() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def gated_run(db: str, folder: Path, procs: list[WorkerProcess], size: int = 10, **env: str):
    """A worker on three gated tasks; returns (worker, gate, task ids) once the first runs."""
    gate = folder / "gate"
    with LocalQueue(db) as queue:
        ids = [
            queue.enqueue("gated", {"n": n, "gate": str(gate), "size": size}).id for n in range(3)
        ]
    worker = WorkerProcess(db, folder, "--handler", f"{HANDLERS}:gated", "--type", "gated", env=env)
    procs.append(worker)
    with LocalQueue(db) as queue:
        running = wait_until(lambda: queue.get(ids[0]).status == "running", 60)
    assert running, worker.text()
    return worker, gate, ids


def test_a_lock_held_past_the_busy_timeout_is_waited_out(tmp_path: Path, procs):
    db = str(tmp_path / "q.db")
    upgrade(db)
    worker, gate, ids = gated_run(db, tmp_path, procs, BRIDGE_BUSY_TIMEOUT_SECONDS="0.5")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    gate.touch()  # the handler returns; its result meets the lock
    worker.wait_for_log(TROUBLE, "the locked database")
    assert "is locked" in worker.text()
    holder.execute("COMMIT")
    holder.close()
    states = wait_finished(db, ids, worker)
    assert {s for s, _ in states.values()} == {"done"}
    assert worker.alive()
    worker.wait_for_log("database usable again", "recovery line")
    assert worker.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def test_a_full_disk_is_waited_out_and_the_result_kept(small_disk: Path, tmp_path: Path, procs):
    db = str(small_disk / "q.db")
    upgrade(db)
    worker, gate, ids = gated_run(db, tmp_path, procs, size=400_000)
    truncate_wal(db)
    filler = fill(small_disk)
    gate.touch()
    worker.wait_for_log(TROUBLE, "the full disk")
    assert "the disk is full" in worker.text()
    filler.unlink()
    states = wait_finished(db, ids, worker)
    assert {s for s, _ in states.values()} == {"done"}
    with LocalQueue(db) as queue:
        assert len(queue.get(ids[0]).result["text"]) == 400_000
    assert worker.alive()
    assert worker.stop() == 0


def test_a_read_only_file_is_waited_out(tmp_path: Path, procs):
    probe = tmp_path / "probe"
    probe.write_text("")
    tried = _run("chattr", "+i", str(probe))
    if tried.returncode != 0:
        pytest.skip(f"chattr +i not allowed here (needs root on ext4): {tried.stderr.strip()}")
    _run("chattr", "-i", str(probe))
    db = str(tmp_path / "q.db")
    upgrade(db)
    worker, gate, ids = gated_run(db, tmp_path, procs)
    files = [Path(db), Path(f"{db}-wal")]
    try:
        for path in files:
            assert _run("chattr", "+i", str(path)).returncode == 0
        gate.touch()
        worker.wait_for_log(TROUBLE, "the read-only file")
    finally:
        for path in files:
            _run("chattr", "-i", str(path))
    states = wait_finished(db, ids, worker)
    assert {s for s, _ in states.values()} == {"done"}
    assert worker.alive()
    assert worker.stop() == 0
