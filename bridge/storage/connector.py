"""Connections and transactions of the local queue: the only code that opens either.

The queries (``tasks``, ``outbox``, ``state`` beside this file) ask for a
transaction and run their statements in it; how it begins, commits, and
recovers from a driver failure is decided here, once for both databases.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

from sqlalchemy import Connection
from sqlalchemy.engine import Engine

from ..database import SYNCHRONOUS_FULL, driver_errors, translated_errors


class _ThreadConnection:
    """One thread's connection; closing it (or losing it with the thread) returns it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def __del__(self) -> None:
        self.close()


class Connector:
    """Per-thread connections and three kinds of transaction over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._thread_local = threading.local()
        self._driver_errors = driver_errors(engine)
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
            holder = _ThreadConnection(self.engine.connect())
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
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction through SQLAlchemy (``BEGIN IMMEDIATE`` on SQLite).

        ``durable=False`` (SQLite) commits without waiting for the disk, for a write a
        later durable commit covers (the WAL is written in order); see ``hot_write``.
        """
        with translated_errors(self.engine):
            conn = self.connection()
            relaxed = not durable and not self.is_postgresql
            try:
                if relaxed:
                    conn.connection.driver_connection.execute("PRAGMA synchronous = NORMAL")  # type: ignore[union-attr]
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if relaxed:
                        conn.connection.driver_connection.execute(SYNCHRONOUS_FULL)  # type: ignore[union-attr]
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

    @contextlib.contextmanager
    def hot_write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction for prepared statements only (``Statement.run``).

        On SQLite it is begun and committed on the driver connection: SQLAlchemy sees
        an idle connection throughout. ``durable=False`` commits without the fsync (a
        process crash cannot undo it; see docs/OPERATIONS.md on taking a task).
        PostgreSQL takes the ordinary path.
        """
        if self.is_postgresql:
            with self.write() as conn:
                yield conn
            return
        with translated_errors(self.engine):
            conn = self.connection()
            driver = conn.connection.driver_connection
            try:
                if not durable:
                    driver.execute("PRAGMA synchronous = NORMAL")  # type: ignore[union-attr]
                driver.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
            except self._driver_errors:
                self.drop(conn)
                raise
            try:
                yield conn
                driver.execute("COMMIT")  # type: ignore[union-attr]
            except BaseException:
                self._roll_back(conn, durable)
                raise
            if not durable:
                self._restore_full_sync(conn)

    def _roll_back(self, conn: Connection, durable: bool) -> None:
        driver = conn.connection.driver_connection
        try:
            driver.rollback()  # type: ignore[union-attr]
            if not durable:
                driver.execute(SYNCHRONOUS_FULL)  # type: ignore[union-attr]
        except self._driver_errors:
            self.drop(conn)  # unknown state, or skipping fsyncs: never reuse it

    def _restore_full_sync(self, conn: Connection) -> None:
        try:
            conn.connection.driver_connection.execute(SYNCHRONOUS_FULL)  # type: ignore[union-attr]
        except self._driver_errors:
            self.drop(conn)
            raise
