"""Opening the local queue's database: engine, durability settings, schema check, errors.

SQLite (the default, one machine): WAL journal, ``synchronous=FULL`` (a commit
survives power loss), a busy timeout, and ``BEGIN IMMEDIATE`` for every write
transaction so that concurrent workers queue up on the write lock instead of
failing on a lock upgrade. The file and its WAL are created mode 0600.
PostgreSQL (a fleet sharing one queue): any ``postgresql://`` URL, driven by psycopg 3.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from taskmanager.redact import mask_url

from .errors import BridgeConfigError, DatabaseError, SchemaError
from .revisions import known_revisions

FIX_COMMAND = "taskmanager-bridge db upgrade"
DEFAULT_BUSY_TIMEOUT_SECONDS = 30.0
POOL_OVERFLOW = 64  # beyond the pool's 5: one connection per thread using the queue
SYNCHRONOUS_FULL = "PRAGMA synchronous = FULL"  # a commit waits for the disk
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


def normalise_url(url: str) -> str:
    """A plain path means a SQLite file; ``postgresql://`` means psycopg 3."""
    if "://" not in url:
        if url in ("", ":memory:"):
            raise BridgeConfigError(
                "db_url: an in-memory database cannot hold a durable queue; give a file path"
            )
        return "sqlite:///" + str(Path(url).expanduser().resolve())
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def display_url(url: str | URL) -> str:
    """The URL as SQLAlchemy writes it, its password masked by ``mask_url`` (the one
    masking, shared with api_url), for messages and logs."""
    try:
        return mask_url(make_url(url).render_as_string(hide_password=False))
    except ArgumentError:
        return "<unparseable database URL>"


def _create_private_file(path: str) -> None:
    """Create the SQLite file 0600 before SQLite does (its WAL copies the mode)."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise DatabaseError(f"cannot create the queue database {path}: {parent} does not exist")
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_engine(url: URL, busy_timeout: float) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise BridgeConfigError(
            "db_url: an in-memory database cannot hold a durable queue; give a file path"
        )
    _create_private_file(database)
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
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # A thread's hot connection keeps its busy timeout at 0 between transactions
        # (storage.connector): whoever takes it from the pool next gets the real one.
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

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


def open_engine(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> Engine:
    """An engine for the queue database (the schema is not checked here)."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError as exc:
        raise BridgeConfigError(f"db_url {mask_url(url)!r} is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout)
    if parsed.get_backend_name() == "postgresql":
        try:
            return create_engine(parsed, pool_pre_ping=True, max_overflow=POOL_OVERFLOW)
        except ImportError as exc:
            raise BridgeConfigError(
                f"db_url is PostgreSQL but its driver is missing ({exc}): "
                "pip install 'psycopg[binary]>=3.1' (the [postgres] extra)"
            ) from None
    raise BridgeConfigError(
        f"db_url {display_url(parsed)}: only SQLite and PostgreSQL are supported"
    )


def describe_failure(exc: BaseException) -> str:
    """A sentence naming the cause of a database failure (driver noise stripped)."""
    original = getattr(exc, "orig", None) or exc
    text_ = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    lowered = text_.lower()
    if "database is locked" in lowered or "database table is locked" in lowered:
        return f"the database is locked by another process and stayed locked ({text_})"
    if "readonly" in lowered or "read-only" in lowered:
        return f"the database file (or its folder) is read-only ({text_})"
    if "disk i/o error" in lowered:
        return (
            f"the disk refused a read or write ({text_}): the file may have been made "
            "read-only, or the disk is failing"
        )
    if "disk is full" in lowered or "no space" in lowered:
        return f"the disk is full ({text_})"
    if "not a database" in lowered or "malformed" in lowered:
        return f"the file is not a usable SQLite database: corrupt or not ours ({text_})"
    if "unable to open" in lowered:
        return f"the database file cannot be opened ({text_})"
    if "connection" in lowered and ("refused" in lowered or "failed" in lowered):
        return f"the database server cannot be reached ({text_})"
    return text_


def driver_errors(engine: Engine) -> tuple[type[BaseException], ...]:
    """The DBAPI's own error class: raised by statements run on the driver connection."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None) or engine.dialect.dbapi
    error = getattr(dbapi, "Error", None)
    return (error,) if isinstance(error, type) else ()


@contextlib.contextmanager
def translated_errors(engine: Engine) -> Iterator[None]:
    """Turn driver errors into one ``DatabaseError`` naming the database and the cause.

    Covers SQLAlchemy's wrapped errors and the driver's own (the hot path and the
    SQLite BEGIN run on the driver connection directly).
    """
    caught: tuple[type[BaseException], ...] = (OperationalError, DBAPIError, *driver_errors(engine))
    try:
        yield
    except caught as exc:
        raise DatabaseError(f"{display_url(engine.url)}: {describe_failure(exc)}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"{display_url(engine.url)}: {exc}") from exc


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or ``None`` when it has no schema."""
    with translated_errors(engine), engine.connect().execution_options(readonly=True) as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return str(revision) if revision is not None else None


def check_schema(engine: Engine) -> None:
    """Refuse a database that is missing, behind or ahead of the migrations' head.

    The revisions come from the migration scripts themselves (``known_revisions``),
    so adding a migration cannot leave this check expecting the old head.
    """
    where = display_url(engine.url)
    revision = schema_revision(engine)
    known = known_revisions()
    expected = known[-1]
    if revision == expected:
        return
    if revision is None:
        raise SchemaError(
            f"{where} has no taskmanager-bridge schema. Create it with: {FIX_COMMAND}"
        )
    if revision in known:
        raise SchemaError(
            f"{where} is at schema revision {revision}, behind {expected}. "
            f"Upgrade it with: {FIX_COMMAND}"
        )
    raise SchemaError(
        f"{where} is at schema revision {revision}, which this version of taskmanager-bridge "
        f"does not know (it expects {expected}): the database was written by a newer "
        "version; upgrade taskmanager-bridge"
    )
