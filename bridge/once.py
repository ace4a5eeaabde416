"""Writes to a database of your own, once per task: ``record_once`` and its table.

A handler that writes somewhere other than the queue's database cannot commit with
its result, so a worker killed after that commit and before the result is stored runs
the task again and writes again. ``record_once(connection, context.idempotency_key)``,
inside the handler's own transaction, records the task's key in a small table of that
database and says whether this is the first time: write only when it is, and the key
and the rows commit (or vanish) together. Any database with such a connection works:
a SQLAlchemy ``Connection``, or a DB-API connection of ``sqlite3`` or ``psycopg``.

The table, created when missing (or by you, beforehand)::

    CREATE TABLE IF NOT EXISTS taskmanager_bridge_once (
        key VARCHAR(200) PRIMARY KEY,
        recorded_at TIMESTAMP NOT NULL  -- UTC
    );

On PostgreSQL a second transaction recording the same key waits for the first: when
it commits the second sees ``False``, when it rolls back the second records it.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError

TABLE = "taskmanager_bridge_once"
MAX_KEY_LENGTH = 200
DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(key VARCHAR(200) PRIMARY KEY, recorded_at TIMESTAMP NOT NULL)"
)
# Two first calls at once on PostgreSQL would race to create the table: one waits.
_PG_CREATE_LOCK = 0x7461736B6F6E6365  # "taskonce"


class _Runner:
    """One way of running SQL on the caller's connection, whatever it is."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        dialect = getattr(connection, "dialect", None)
        module = type(connection).__module__
        if dialect is not None:  # a SQLAlchemy Connection
            self.sqlalchemy = True
            self.postgresql = dialect.name == "postgresql"
            level = connection.get_execution_options().get("isolation_level")
            autocommit = level == "AUTOCOMMIT"
        elif isinstance(connection, sqlite3.Connection):
            self.sqlalchemy, self.postgresql = False, False
            autocommit = connection.isolation_level is None and not connection.in_transaction
            autocommit = autocommit or getattr(connection, "autocommit", False) is True
        elif module.startswith(("psycopg", "psycopg2")):
            self.sqlalchemy, self.postgresql = False, True
            autocommit = bool(getattr(connection, "autocommit", False))
        else:
            raise ValidationError(
                "record_once needs a SQLAlchemy Connection, or a sqlite3, psycopg or psycopg2 "
                f"connection, got {type(connection).__name__}"
            )
        if autocommit:
            raise ValidationError(
                "record_once needs the connection inside a transaction (it commits every "
                "statement on its own now, so the key would be kept without your rows): "
                "turn autocommit off, or begin a transaction first"
            )

    def run(self, sql: str, *values: Any) -> Any:
        """``sql`` with ``?`` placeholders; a cursor or result (``rowcount``, ``fetchone``)."""
        if self.sqlalchemy:
            from sqlalchemy import text

            names = {f"p{i}": value for i, value in enumerate(values)}
            for name in names:
                sql = sql.replace("?", f":{name}", 1)
            return self.connection.execute(text(sql), names)
        if self.postgresql:
            sql = sql.replace("?", "%s")
        cursor = self.connection.cursor()  # DB-API: sqlite3, psycopg, psycopg2 alike
        cursor.execute(sql, values)
        return cursor

    def moment(self, when: datetime) -> Any:
        """A UTC time as the column keeps it: a timestamp on PostgreSQL, fixed-width
        ISO text on SQLite (which compares as text)."""
        naive = when.astimezone(timezone.utc).replace(tzinfo=None)
        return naive if self.postgresql else naive.strftime("%Y-%m-%d %H:%M:%S.%f")


def _ensure_table(runner: _Runner) -> None:
    if runner.postgresql:
        if runner.run(f"SELECT to_regclass('{TABLE}')").fetchone()[0] is not None:
            return
        runner.run(f"SELECT pg_advisory_xact_lock({_PG_CREATE_LOCK})")
    runner.run(DDL)


def _checked(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"record_once: the key must be a non-empty text of at most {MAX_KEY_LENGTH} "
            f"characters (context.idempotency_key is one), got {key!r:.80}"
        )
    return key


def record_once(connection: Any, key: str) -> bool:
    """Record ``key`` in the caller's current transaction: ``True`` the first time,
    ``False`` when a committed transaction recorded it already. Write your rows only
    when it is ``True``, in the same transaction, and commit as usual."""
    runner = _Runner(connection)
    _ensure_table(runner)
    now = runner.moment(datetime.now(timezone.utc))
    if runner.postgresql:
        statement = f"INSERT INTO {TABLE} (key, recorded_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
    else:
        statement = f"INSERT OR IGNORE INTO {TABLE} (key, recorded_at) VALUES (?, ?)"
    return bool(runner.run(statement, _checked(key), now).rowcount == 1)


def forget_once_keys(connection: Any, older_than: timedelta) -> int:
    """Delete the keys recorded more than ``older_than`` ago; how many went. Prune only
    keys whose tasks can no longer run: a key pruned while its task may still run again
    (its remote lease, the server's retries, a result the bridge sends again) lets that
    run write its rows a second time. Weeks are safe; minutes are not."""
    runner = _Runner(connection)
    _ensure_table(runner)
    cutoff = runner.moment(datetime.now(timezone.utc) - older_than)
    return int(runner.run(f"DELETE FROM {TABLE} WHERE recorded_at < ?", cutoff).rowcount)
