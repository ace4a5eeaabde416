"""Connections and transactions of the local queue: the only code that opens either.

The queries (``tasks``, ``outbox``, ``state`` beside this file) ask for a
transaction and run their statements in it; how it begins, commits, and
recovers from a driver failure is decided here, once for both databases.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .db_errors import driver_errors, translated_errors
from .group_commit import GroupCommit, mark_committed
from .sqlite_locking import (
    PATIENCE_KEY,
    ThreadConnection,
    begin_polling,
)

T = TypeVar("T")


class Connector:
    """Per-thread connections and three kinds of transaction over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgresql = engine.dialect.name == "postgresql"
        self._thread_local = threading.local()
        self._driver_errors = driver_errors(engine)
        self._translated: tuple[type[BaseException], ...] = (SQLAlchemyError, *self._driver_errors)
        # The database's own trouble (locked, full, gone), as opposed to what a statement
        # asked for (a constraint, a syntax error): waited out, not blamed on the caller.
        self.operational_errors: tuple[type[BaseException], ...] = (
            OperationalError,
            *driver_errors(engine, "OperationalError"),
        )
        self._holders: weakref.WeakSet[ThreadConnection] = weakref.WeakSet()
        self._holders_lock = threading.Lock()
        # SQLite: this process's writers take turns here, so that one of them (not every
        # thread) polls for the file's write lock, and a thread is woken the moment the
        # one before it ends instead of at a poll.
        self._turn: threading.RLock | None = None if self.is_postgresql else threading.RLock()
        self._group = GroupCommit(self.hot_write)

    def close(self) -> None:
        with self._holders_lock:
            holders = list(self._holders)
        for holder in holders:
            holder.close()
        self.engine.dispose()

    def transaction_aborted(self, conn: Connection) -> bool:
        """PostgreSQL: whether a failed statement left ``conn``'s transaction aborted (every
        later statement fails, and COMMIT rolls back). SQLite rolls back the statement only."""
        if not self.is_postgresql:
            return False
        import psycopg

        driver: Any = conn.connection.driver_connection
        return bool(driver.info.transaction_status == psycopg.pq.TransactionStatus.INERROR)

    def connection(self) -> Connection:
        """This thread's connection, kept for the thread's life (a pool checkout per
        transaction costs more than the worker's statements); it returns to the pool
        when the thread ends, so short-lived threads do not exhaust the pool."""
        holder: ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is None or holder.conn.closed or holder.conn.invalidated:
            holder = ThreadConnection(self.engine.connect())
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
            holder = self._holder()
            with self._my_turn(holder.patience) as left:
                conn = holder.conn
                relaxed = not durable and not self.is_postgresql
                try:
                    # SQLAlchemy's begin (database.py) polls for what the turn left of the
                    # busy timeout (read once from the connection's info), then sets the
                    # whole back on the connection.
                    if not self.is_postgresql:
                        conn.info[PATIENCE_KEY] = left
                        holder.synchronous(full=not relaxed)
                    try:
                        with conn.begin():
                            yield conn
                    finally:
                        if not self.is_postgresql:  # begin set the whole back
                            holder.timeout_ms = holder.full_ms
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

    def _holder(self) -> ThreadConnection:
        holder: ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is None or holder.conn.closed or holder.conn.invalidated:
            self.connection()
            holder = self._thread_local.holder
        return holder

    @contextlib.contextmanager
    def hot_write(self, *, durable: bool = True) -> Iterator[Any]:
        """A write transaction for prepared statements only (``Statement.run``); yields
        the DBAPI connection.

        On SQLite it is begun and committed on the driver connection: SQLAlchemy sees
        an idle connection throughout. ``durable=False`` commits without the fsync (a
        process crash cannot undo it; see docs/OPERATIONS.md on taking a task). The
        write lock is waited for by short polls (``begin_immediate``), one thread of
        this process at a time. PostgreSQL takes the ordinary path.
        """
        if self.is_postgresql:
            with self.write() as conn:
                yield conn.connection.driver_connection
            return
        holder = self._holder()
        driver = holder.driver
        with self._my_turn(holder.patience) as patience:
            try:
                holder.synchronous(full=durable)
                holder.to_polling()
                begin_polling(driver, patience)
            except BaseException as exc:  # an interrupt too: never reuse it half begun
                self._drop_driver(driver)
                if isinstance(exc, self._translated):
                    self._raise_translated(exc)
                raise
            try:
                yield driver
                driver.execute("COMMIT")
            except BaseException as exc:
                if not isinstance(exc, Exception) and not driver.in_transaction:
                    # An interrupt raised the moment COMMIT returned (the driver does not
                    # look for signals inside it): the transaction is kept, say so.
                    mark_committed(exc)
                    raise
                self._roll_back(driver)
                self._forget_if_read_only(driver, exc)
                if isinstance(exc, self._translated):
                    self._raise_translated(exc)
                raise

    def shared_write(self, action: Callable[[Any], T]) -> T:
        """``action(connection)`` in a durable ``hot_write``, and its value. On SQLite the
        actions of other threads that come while it waits for the write lock share that
        transaction and its fsync (``group_commit``): SQLite takes one writer at a time
        anyway, and each would pay its own fsync and the wake-ups of waiting its turn.
        PostgreSQL commits them side by side."""
        if self.is_postgresql:
            with self.hot_write() as conn:
                return action(conn)
        return self._group.run(action)

    @contextlib.contextmanager
    def peek(self) -> Iterator[Any]:
        """SQLite: this thread's driver connection for one read outside any transaction
        (a statement in autocommit reads a snapshot and takes no write lock)."""
        with translated_errors(self.engine):
            yield self._holder().driver

    @contextlib.contextmanager
    def one_statement(self) -> Iterator[Any]:
        """One prepared write that is a transaction on its own: on SQLite the driver in
        autocommit (the statement takes the write lock, commits and syncs by itself,
        without a ``BEGIN``/``COMMIT`` of ours around it: two round trips fewer, for
        ``enqueue``); elsewhere an ordinary ``hot_write``."""
        if self.is_postgresql:
            with self.hot_write() as driver:
                yield driver
            return
        holder = self._holder()
        with self._my_turn(holder.patience) as left:
            driver = holder.driver
            try:
                holder.synchronous(full=True)
                holder.waiting(left)  # the statement waits for the lock with SQLite's handler
                yield driver
            except self._translated as exc:
                if driver.in_transaction:  # never left open: the next BEGIN would fail
                    self._roll_back(driver)
                self._forget_if_read_only(driver, exc)
                self._raise_translated(exc)

    @contextlib.contextmanager
    def _my_turn(self, patience: float) -> Iterator[float]:
        """This process's turn to write (SQLite), waited for within ``patience``; yields
        what is left of it for the file's lock, so that a writer fails after the busy
        timeout however many of this process's threads were ahead of it."""
        if self._turn is None:
            yield patience
            return
        started = time.monotonic()
        if not self._turn.acquire(timeout=patience):
            self._raise_translated(
                sqlite3.OperationalError(
                    "database is locked (this process's other writers waited for it "
                    "past the busy timeout)"
                )
            )
        try:
            yield max(0.0, patience - (time.monotonic() - started))
        finally:
            self._turn.release()

    def _forget_if_read_only(self, driver: Any, exc: BaseException) -> None:
        """A connection SQLite opened while the file was read-only stays read-only after
        the file is writable again: drop it, and the pool's idle ones (opened in the same
        period, maybe), so that the next try opens a fresh one. (The async worker's store
        retried on such a connection for good.)"""
        if isinstance(exc, self._driver_errors) and "readonly database" in str(exc):
            self._drop_driver(driver)
            with contextlib.suppress(Exception):
                self.engine.pool.dispose()

    def _raise_translated(self, exc: BaseException) -> None:
        with translated_errors(self.engine):
            raise exc

    def _drop_driver(self, driver: Any) -> None:
        holder: ThreadConnection | None = getattr(self._thread_local, "holder", None)
        if holder is not None and holder.driver is driver:
            self.drop(holder.conn)

    def _roll_back(self, driver: Any) -> None:
        try:
            driver.rollback()
        except self._driver_errors:
            self._drop_driver(driver)  # unknown state: never reuse it
