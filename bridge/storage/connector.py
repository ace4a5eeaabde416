"""Connections and transactions of the local queue: the only code that opens either.

The queries (``tasks``, ``outbox``, ``state`` beside this file) ask for a
transaction and run their statements in it; how it begins, commits, and
recovers from a driver failure is decided here, once for both databases.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..database import SYNCHRONOUS_FULL, driver_errors, translated_errors

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

SYNCHRONOUS_NORMAL = "PRAGMA synchronous = NORMAL"  # taking a task only (hot_write)


class _ThreadConnection:
    """One thread's connection; closing it (or losing it with the thread) returns it.

    On SQLite it also holds the thread's descriptor of the writers' turn file
    (``Connector.hot_write``), or -1.
    """

    def __init__(self, conn: Connection, turn_path: str | None) -> None:
        self.conn = conn
        self.driver: Any = conn.connection.driver_connection
        self.turn = -1
        if turn_path is not None:
            with contextlib.suppress(OSError):
                self.turn = os.open(turn_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.turn >= 0:
            with contextlib.suppress(OSError):
                os.close(self.turn)
            self.turn = -1

    def __del__(self) -> None:
        self.close()


class Connector:
    """Per-thread connections and three kinds of transaction over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._thread_local = threading.local()
        self._driver_errors = driver_errors(engine)
        self._translated: tuple[type[BaseException], ...] = (SQLAlchemyError, *self._driver_errors)
        self._turn_path = (
            f"{engine.url.database}-writers"
            if fcntl is not None and engine.dialect.name == "sqlite"
            else None
        )
        self._holders: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._holders_lock = threading.Lock()

    def close(self) -> None:
        with self._holders_lock:
            holders = list(self._holders)
        for holder in holders:
            holder.close()
        self.engine.dispose()

    def connection(self) -> Connection:
        """This thread's connection, kept for the thread's life (a pool checkout per
        transaction costs more than the worker's statements); it returns to the pool
        when the thread ends, so short-lived threads do not exhaust the pool."""
        holder: _ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is None or holder.conn.closed or holder.conn.invalidated:
            holder = _ThreadConnection(self.engine.connect(), self._turn_path)
            self._thread_local.holder = holder
            with self._holders_lock:
                self._holders.add(holder)
        return holder.conn

    def drop(self, conn: Connection) -> None:
        """Forget a connection in an unknown state; this thread's next call opens another."""
        self._thread_local.holder = None
        with contextlib.suppress(Exception):
            conn.invalidate()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction through SQLAlchemy (``BEGIN IMMEDIATE`` on SQLite)."""
        with translated_errors(self.engine):
            conn = self.connection()
            try:
                with conn.begin():
                    yield conn
            except self._driver_errors:
                # A failure below SQLAlchemy leaves it unaware of the connection's state.
                self.drop(conn)
                raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction on its own pooled connection (takes no write lock)."""
        with (
            translated_errors(self.engine),
            self.engine.connect().execution_options(readonly=True) as conn,
            conn.begin(),
        ):
            yield conn

    def _holder(self) -> _ThreadConnection:
        holder: _ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is None or holder.conn.closed or holder.conn.invalidated:
            self.connection()
            holder = self._thread_local.holder
        return holder

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """The hot writers' turn (see ``hot_write``), for a writer that must not starve
        them, such as ``prune`` between its chunks; nothing on PostgreSQL."""
        turn = -1 if self.is_postgresql else self._holder().turn
        if turn >= 0:
            fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._end_turn(turn)

    @contextlib.contextmanager
    def hot_write(self, *, durable: bool = True) -> Iterator[Any]:
        """A write transaction for prepared statements only (``Statement.run``); yields
        the DBAPI connection.

        On SQLite it is begun and committed on the driver connection: SQLAlchemy sees
        an idle connection throughout. Hot writers of every process and thread take
        turns on an OS lock (``flock`` of ``<db>-writers``) around the transaction: a
        waiter is woken the moment the holder commits, where SQLite's busy handler
        polls with sleeps of 1, 2, 5, 10... ms (most of the time of four workers on one
        file). The lock is held only inside the transaction, whose wait for SQLite's
        own lock is bounded by the busy timeout; the kernel releases it with a process.
        ``durable=False`` commits without the fsync (a process crash cannot undo it; see
        docs/OPERATIONS.md on taking a task).
        PostgreSQL takes the ordinary path.
        """
        if self.is_postgresql:
            with self.write() as conn:
                yield conn.connection.driver_connection
            return
        holder = self._holder()
        driver, turn = holder.driver, holder.turn
        if turn >= 0:
            fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            if not durable:
                driver.execute(SYNCHRONOUS_NORMAL)
            driver.execute("BEGIN IMMEDIATE")
        except self._translated as exc:
            self._end_turn(turn)
            self._drop_driver(driver)
            self._raise_translated(exc)
        try:
            yield driver
            driver.execute("COMMIT")
        except BaseException as exc:
            self._end_turn(turn)  # before a rollback that may close the descriptor
            self._roll_back(driver, durable)
            if isinstance(exc, self._translated):
                self._raise_translated(exc)
            raise
        self._end_turn(turn)
        if not durable:
            self._restore_full_sync(driver)

    @staticmethod
    def _end_turn(turn: int) -> None:
        if turn >= 0:
            with contextlib.suppress(OSError):  # closed with its connection: released
                fcntl.flock(turn, fcntl.LOCK_UN)

    def _raise_translated(self, exc: BaseException) -> None:
        with translated_errors(self.engine):
            raise exc

    def _drop_driver(self, driver: Any) -> None:
        holder: _ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is not None and holder.driver is driver:
            self.drop(holder.conn)

    def _roll_back(self, driver: Any, durable: bool) -> None:
        try:
            driver.rollback()
            if not durable:
                driver.execute(SYNCHRONOUS_FULL)
        except self._driver_errors:
            self._drop_driver(driver)  # unknown state, or skipping fsyncs: never reuse it

    def _restore_full_sync(self, driver: Any) -> None:
        try:
            driver.execute(SYNCHRONOUS_FULL)
        except self._driver_errors:
            self._drop_driver(driver)
            raise
