"""Storage faults under a running queue and daemon: the disk fills up, the file
becomes read-only. Each gives one clear ``DatabaseError``, leaves no partial
state (the task still held, no outbox row without its result), and everything
works again once the cause is gone, without restarting anything.

Real faults, so they need root: a 4 MiB tmpfs mounted for the test and filled
up, and ``chattr +i`` (immutable, which root cannot write either). Skipped, with
the reason, where those are not allowed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import BridgeConfig, DatabaseError, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

pytestmark = pytest.mark.integration
TYPE = "disk.work"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A filesystem of ``size`` (``4m``) of our own, to fill up; skips without root."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of our own, to fill up."""
    with mounted_tmpfs(tmp_path, "4m") as folder:
        yield folder


def fill(folder: Path) -> Path:
    """Write until the filesystem refuses: no byte left for anyone."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 4096, 512):  # then smaller: what is left is below 512 bytes
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    return filler


def truncate_wal(db: str) -> None:
    """Empty the WAL file, so the next write needs new disk blocks (not reused ones)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def bridge_for(queue: LocalQueue, server: EmulatorServer, db: str) -> DaemonJobs:
    config = BridgeConfig.load(env={}, db_url=db, types=[TYPE], prefetch=5)
    return DaemonJobs(queue.store, server.client(), config)


def test_disk_full_refuses_cleanly_and_recovers_when_space_returns(small_disk: Path):
    db = str(small_disk / "q.db")
    upgrade(db)
    with EmulatorServer() as server, LocalQueue(db) as queue:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        first, orphan = (admin.create_task(TYPE, {"n": n}) for n in (1, 2))
        bridge = bridge_for(queue, server, db)
        claimed = admin.claim_task(task_type=TYPE, worker_id=bridge.worker_id)
        assert claimed is not None
        bridge.store.insert_claimed(claimed, 300, queue.clock())
        task = queue.dequeue()
        assert task is not None and task.remote_id == first

        truncate_wal(db)
        filler = fill(small_disk)
        # More than any space SQLite could find (stored twice: the task and its outbox row),
        # within what the server stores (65,535 bytes).
        result = {"text": "r" * 60_000}

        # The worker: a clear error; the task still held, no outbox row, nothing half done.
        with pytest.raises(DatabaseError, match="the disk is full"):
            queue.complete(task, result)
        assert queue.get(task.id).status == "running"
        assert queue.outbox(None, 10) == []
        # The daemon: its claim intent cannot be recorded, so no claim is sent (a claim
        # it could not record would be work taken from other bridges for nothing).
        with pytest.raises(DatabaseError, match="the disk is full"):
            bridge.pull_tick(queue.clock())
        assert admin.get_task(orphan).status == "pending"
        assert queue.store.get_task_by_remote_id(orphan) is None

        filler.unlink()  # the cause goes; nothing is restarted
        queue.complete(task, result)
        assert [row.kind for row in queue.outbox("pending", 10)] == ["complete"]
        assert bridge.push_tick(queue.clock()) == 1
        assert admin.get_task(first).result == result
        assert bridge.pull_tick(queue.clock()) == 1
        assert queue.store.get_task_by_remote_id(orphan) is not None


def require_chattr(folder: Path) -> None:
    """Skip, with the reason, where ``chattr +i`` is not allowed (needs root on ext4)."""
    probe = folder / "probe"
    probe.write_text("")
    tried = _run("chattr", "+i", str(probe))
    if tried.returncode != 0:
        pytest.skip(f"chattr +i not allowed here (needs root on ext4): {tried.stderr.strip()}")
    _run("chattr", "-i", str(probe))


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Files made immutable during the test (chattr +i), made mutable again after."""
    locked: list[Path] = []
    require_chattr(tmp_path)
    try:
        yield locked
    finally:
        for path in locked:
            _run("chattr", "-i", str(path))


def test_read_only_database_refuses_cleanly_and_recovers(tmp_path: Path, immutable: list[Path]):
    db = str(tmp_path / "q.db")
    upgrade(db)
    with LocalQueue(db) as queue:
        for n in range(3):
            queue.enqueue(TYPE, {"n": n})
        task = queue.dequeue()
        assert task is not None
        # The database and its WAL become read-only (the -shm stays writable: SQLite maps it).
        files = [Path(db), Path(f"{db}-wal")]
        immutable.extend(files)
        for path in files:
            assert _run("chattr", "+i", str(path)).returncode == 0

        with pytest.raises(DatabaseError, match="disk refused a read or write"):
            queue.complete(task, {"ok": True})
        assert queue.get(task.id).status == "running"  # reads still work; nothing changed
        with pytest.raises(DatabaseError, match="read-only"), LocalQueue(db) as other:
            other.dequeue()

        for path in files:
            assert _run("chattr", "-i", str(path)).returncode == 0
        queue.complete(task, {"ok": True})
        assert queue.get(task.id).status == "done"
        assert queue.dequeue() is not None
    assert os.path.exists(db)
