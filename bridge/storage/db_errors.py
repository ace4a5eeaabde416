"""Database failures as the bridge reports them: one ``DatabaseError`` naming the
database and the cause in a sentence, whatever the driver raised."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from ..errors import DatabaseError
from .engine import display_url

# What says the database itself is in passing trouble (locked, full, unwritable, gone),
# as opposed to what a statement asked for (a missing table, a syntax error, a timeout
# of its own): the first is waited out, the second is the statement's author's.
_PASSING = (
    "database is locked",
    "database table is locked",
    "disk is full",
    "no space",
    "disk i/o error",
    "readonly",
    "read-only",
    "unable to open",
    "connection refused",
    "connection reset",
    "connection is closed",
    "connection timed out",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "the database system is shutting down",
)


def passing_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's own passing trouble (see ``_PASSING``)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).lower()
    return any(marker in text for marker in _PASSING)


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


def driver_errors(engine: Engine, name: str = "Error") -> tuple[type[BaseException], ...]:
    """The DBAPI's own error class ``name`` (``Error``, the base, by default): raised by
    statements run on the driver connection."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None) or engine.dialect.dbapi
    error = getattr(dbapi, name, None)
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
