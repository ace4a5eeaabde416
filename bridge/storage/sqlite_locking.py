"""How the queue uses SQLite's one write lock: in one place, every pragma and wait.

A queue file is WAL, ``synchronous=FULL`` (a commit survives power loss), created
mode 0600, and every write transaction is ``BEGIN IMMEDIATE`` so that concurrent
writers queue up on the write lock instead of failing on a lock upgrade. Writers
wait for the lock by short polls (``begin_immediate``) rather than SQLite's busy
handler; a thread's hot connection keeps its busy timeout at 0 between transactions
(``ThreadConnection``), and whatever waits with SQLite's own handler sets it first.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, Engine

from ..errors import BridgeConfigError, DatabaseError, SchemaError

POOL_OVERFLOW = 64  # beyond the pool's 5: one connection per thread using the queue
SYNCHRONOUS_FULL = "PRAGMA synchronous = FULL"  # a commit waits for the disk
SYNCHRONOUS_NORMAL = "PRAGMA synchronous = NORMAL"  # taking a task only (hot_write)
# In the pool's record of a connection left at NORMAL (``ThreadConnection.synchronous``):
# whoever takes it from the pool next gets FULL back first.
RELAXED_KEY = "bridge.relaxed"
PATIENCE_KEY = "bridge.patience"  # Connection.info: the next begin's wait for the lock
POLL_SECONDS = 0.0002  # first wait between two tries for SQLite's write lock, doubling
POLL_MAX_SECONDS = 0.002  # to this (begin_immediate),
LONG_WAIT_AFTER_SECONDS = 0.1  # and after this long waiting (a backup, a shell's lock)
LONG_WAIT_POLL_SECONDS = 0.02  # to this


def begin_immediate(driver: Any, patience: float, busy_timeout: float | None = None) -> None:
    """``BEGIN IMMEDIATE`` on a sqlite3 connection, waiting up to ``patience`` seconds for
    the write lock by trying again after ``POLL_SECONDS``, doubling to ``POLL_MAX_SECONDS``;
    the connection's own busy timeout (``busy_timeout``, default ``patience``) is set back.

    Why not SQLite's busy handler: its sleeps grow to 100 ms, while the queue's writers
    (a worker's slots, the daemon) hold the lock for about a millisecond at a time, so a
    waiter sleeps through many chances. Measured on the bridge benchmark (1,000 tasks,
    4 slots): the worker's transactions waited 6.7-10.4 s in all for the lock and the
    daemon's claim records 6.1-7.4 s, single waits up to 0.5 s; with these polls
    0.1-0.3 s. The cap keeps four processes writing back to back from trading the
    lock every transaction (a constant 0.2 ms halved their throughput).
    """
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        begin_polling(driver, patience)
    finally:
        restored = patience if busy_timeout is None else busy_timeout
        driver.execute(f"PRAGMA busy_timeout = {int(restored * 1000)}")


def begin_polling(driver: Any, patience: float) -> None:
    """``begin_immediate`` on a connection whose busy timeout is already 0 (the hot path
    keeps it so between transactions: two PRAGMAs fewer per transaction)."""
    started: float | None = None
    pause = POLL_SECONDS
    while True:
        try:
            driver.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            now = time.monotonic()
            if started is None:
                started = now
            elif now - started > patience:
                raise
        time.sleep(pause)
        long_wait = time.monotonic() - started > LONG_WAIT_AFTER_SECONDS
        pause = min(LONG_WAIT_POLL_SECONDS if long_wait else POLL_MAX_SECONDS, pause * 2)


def _create_private_file(path: str) -> None:
    """Create the SQLite file 0600 before SQLite does (its WAL copies the mode)."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise DatabaseError(f"cannot create the queue database {path}: {parent} does not exist")
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def sqlite_engine(url: URL, busy_timeout: float, *, create: bool = False) -> Engine:
    """The engine of a queue file. A missing file is created (0600) only when ``create``
    (the schema's creation): for anything else SQLite would create an empty file on the
    first connection and the command would then fail for want of a schema, leaving the
    file behind; it is refused instead, naming the command that creates it."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise BridgeConfigError(
            "db_url: an in-memory database cannot hold a durable queue; give a file path"
        )
    if create:
        _create_private_file(database)
    elif not Path(database).exists():
        from .revisions import FIX_COMMAND  # not at the top: revisions -> engine -> here

        if not Path(database).parent.is_dir():  # a typo in the path, most likely
            folder = Path(database).parent
            raise DatabaseError(f"no queue database at {database}: {folder} does not exist")
        raise SchemaError(f"no queue database at {database}. Create it with: {FIX_COMMAND}")
    # Every thread using the queue keeps one connection (see Store): room for many workers.
    engine = create_engine(url, connect_args={"timeout": busy_timeout}, max_overflow=POOL_OVERFLOW)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(SYNCHRONOUS_FULL)
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A thread's hot connection keeps its busy timeout at 0 between transactions
        # (storage.connector), and may be left at NORMAL: whoever takes it from the pool
        # next gets the real timeout, and FULL.
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if record.info.pop(RELAXED_KEY, False):
            dbapi_connection.execute(SYNCHRONOUS_FULL)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get("readonly", False)
        # Straight to the driver: exec_driver_sql's bookkeeping cost more than the BEGIN.
        driver = connection.connection.driver_connection
        if readonly:
            driver.execute("BEGIN")
        else:
            # What this process's turn to write left of the busy timeout (storage.connector),
            # so that a writer never waits longer than it in all; for this begin only.
            patience = connection.info.pop(PATIENCE_KEY, busy_timeout)
            begin_immediate(driver, patience, busy_timeout)

    return engine


class ThreadConnection:
    """One thread's connection; closing it (or losing it with the thread) returns it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        driver: Any = conn.connection.driver_connection
        self.driver = driver
        self.full_ms = 0  # SQLite: the configured busy timeout (read from the connection)
        # SQLite: the busy timeout set on the connection now, in ms. The hot path keeps it
        # at 0 between its transactions (statements inside one never wait for a lock);
        # anything that waits with SQLite's own handler sets what it may wait first
        # (``waiting``); a connection taken from the pool gets the configured one back at
        # checkout (``sqlite_engine``).
        self.timeout_ms = 0
        # SQLite: the pool's record of the connection, where ``synchronous`` notes NORMAL.
        self._record_info: dict[Any, Any] = conn.connection.info
        if conn.dialect.name == "sqlite":
            found = driver.execute("PRAGMA busy_timeout").fetchone()
            self.full_ms = self.timeout_ms = int(found[0])

    def synchronous(self, full: bool) -> None:
        """SQLite: FULL (a commit waits for the disk) or NORMAL for this connection's next
        commits, set only when it changes. A thread that only takes tasks, or only
        records claims, stays at NORMAL; every durable write sets FULL first, and a
        connection back in the pool at NORMAL gets FULL at its next checkout. (Set and
        restored around each relaxed write, it was two more statements a task.)"""
        relaxed = self._record_info.get(RELAXED_KEY, False)
        if relaxed == (not full):
            return
        # The note errs towards NORMAL: written before NORMAL is set and cleared only
        # after FULL is, so that a PRAGMA cut short (a KeyboardInterrupt raised the
        # moment it returned) costs one FULL more later, never a durable commit at NORMAL.
        if full:
            self.driver.execute(SYNCHRONOUS_FULL)
            self._record_info.pop(RELAXED_KEY, None)
        else:
            self._record_info[RELAXED_KEY] = True
            self.driver.execute(SYNCHRONOUS_NORMAL)

    @property
    def patience(self) -> float:
        """The busy timeout in seconds, for begin_immediate and the turn."""
        return self.full_ms / 1000

    def to_polling(self) -> None:
        self._set_timeout(0)

    def waiting(self, left: float) -> None:
        """SQLite's own wait for the lock, for at most ``left`` seconds (what the turn
        left of the busy timeout)."""
        full = self.full_ms
        wanted = min(full, round(left * 1000))
        # Within a millisecond of the whole: the whole (no PRAGMA per uncontended call).
        self._set_timeout(full if wanted >= full - 1 else wanted)

    def _set_timeout(self, ms: int) -> None:
        if self.timeout_ms != ms:
            self.driver.execute(f"PRAGMA busy_timeout = {ms}")
            self.timeout_ms = ms

    def close(self) -> None:
        # No SQL here (this runs from __del__ too, on any thread, maybe after the driver
        # connection went back to the pool): the pool's checkout sets the busy timeout.
        with contextlib.suppress(Exception):
            self.conn.close()

    def __del__(self) -> None:
        self.close()
