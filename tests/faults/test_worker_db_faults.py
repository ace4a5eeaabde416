"""Database trouble under a running worker process is waited out (promise 6).

A write lock held longer than the busy timeout, a full disk (a 16 MiB tmpfs), a
database file made read-only: each strikes while a handler is finishing, so a
computed result meets an unwritable database. The same process must log the
cause, keep its result, and store it and everything after once the cause goes.
Real faults need root (mount, chattr); skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bridge import LocalQueue
from bridge.storage.migrations import upgrade

from ..integration.helpers import (
    free_port,
    pg_base_url,
    pg_execute,
    pg_unreachable_reason,
    wait_until,
)
from ..integration.test_worker_runtime import FLAVOURS, HANDLERS, WorkerProcess, wait_finished
from .test_storage import _run, fill, mounted_tmpfs, require_chattr, truncate_wal

pytestmark = pytest.mark.integration
# "storing the result of task 3" (threads) or "storing 1 result(s)" (async handlers)
TROUBLE = "database trouble while storing "


@pytest.fixture
def procs() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def gated_run(
    db: str,
    folder: Path,
    procs: list[WorkerProcess],
    flavour: str,
    size: int = 10,
    **env: str,
):
    """A worker on three gated tasks; returns (worker, gate, task ids) once the first runs."""
    gate = folder / "gate"
    with LocalQueue(db) as queue:
        ids = [
            queue.enqueue("gated", {"n": n, "gate": str(gate), "size": size}).id for n in range(3)
        ]
    handler = f"{HANDLERS}:gated{flavour}"
    worker = WorkerProcess(db, folder, "--handler", handler, "--type", "gated", env=env)
    procs.append(worker)
    with LocalQueue(db) as queue:
        running = wait_until(lambda: queue.get(ids[0]).status == "running", 60)
    assert running, worker.text()
    return worker, gate, ids


@FLAVOURS
def test_a_lock_held_past_the_busy_timeout_is_waited_out(tmp_path: Path, procs, flavour: str):
    db = str(tmp_path / "q.db")
    upgrade(db)
    worker, gate, ids = gated_run(db, tmp_path, procs, flavour, BRIDGE_BUSY_TIMEOUT_SECONDS="0.5")
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
    with mounted_tmpfs(tmp_path, "16m") as folder:
        yield folder


@FLAVOURS
def test_a_full_disk_is_waited_out_and_the_result_kept(
    small_disk: Path, tmp_path: Path, procs, flavour: str
):
    db = str(small_disk / "q.db")
    upgrade(db)
    # A result the server takes (<= 65,535 bytes) that the full disk cannot.
    worker, gate, ids = gated_run(db, tmp_path, procs, flavour, size=60_000)
    truncate_wal(db)
    filler = fill(small_disk)
    gate.touch()
    worker.wait_for_log(TROUBLE, "the full disk")
    assert "the disk is full" in worker.text()
    filler.unlink()
    states = wait_finished(db, ids, worker)
    assert {s for s, _ in states.values()} == {"done"}
    with LocalQueue(db) as queue:
        assert len(queue.get(ids[0]).result["text"]) == 60_000
    assert worker.alive()
    assert worker.stop() == 0


@FLAVOURS
def test_a_read_only_file_is_waited_out(tmp_path: Path, procs, flavour: str):
    require_chattr(tmp_path)
    db = str(tmp_path / "q.db")
    upgrade(db)
    worker, gate, ids = gated_run(db, tmp_path, procs, flavour)
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


class Proxy:
    """A TCP proxy in front of PostgreSQL: ``cut()`` closes every connection and refuses
    new ones (the server unreachable), ``restore()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            opened, self._open = self._open, []
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@FLAVOURS
def test_an_unreachable_postgresql_is_waited_out(tmp_path: Path, procs, flavour: str):
    reason = pg_unreachable_reason()
    if reason:
        pytest.skip(reason)
    base = make_url(pg_base_url())
    schema = f"bw_{uuid.uuid4().hex[:12]}"
    pg_execute(f"CREATE SCHEMA {schema}")
    proxy = Proxy((base.host or "127.0.0.1", base.port or 5432))
    try:
        options = f"?options=-csearch_path%3D{schema}"
        upgrade(pg_base_url() + options)
        through = base.set(port=proxy.port).render_as_string(hide_password=False) + options
        worker, gate, ids = gated_run(through, tmp_path, procs, flavour)
        proxy.cut()
        gate.touch()
        worker.wait_for_log(TROUBLE, "the unreachable server")
        proxy.restore()
        states = wait_finished(through, ids, worker)
        assert {s for s, _ in states.values()} == {"done"}
        assert worker.alive()
        assert worker.stop() == 0
    finally:
        proxy.cut()
        pg_execute(f"DROP SCHEMA {schema} CASCADE")
