"""Opening the local queue's database: its URL, shown and normalised, and its engine.

SQLite (the default, one machine) is set up by ``sqlite_locking``; PostgreSQL (a
fleet sharing one queue) is any ``postgresql://`` URL, driven by psycopg 3.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from taskmanager.redact import mask_url

from ..errors import BridgeConfigError
from .sqlite_locking import POOL_OVERFLOW, sqlite_engine

DEFAULT_BUSY_TIMEOUT_SECONDS = 30.0


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


def open_engine(
    url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS, create: bool = False
) -> Engine:
    """An engine for the queue database (the schema is not checked here). A SQLite file
    that does not exist is created only with ``create`` (``migrations``, which creates
    the schema), else refused with ``SchemaError`` naming ``db upgrade``."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError as exc:
        raise BridgeConfigError(f"db_url {mask_url(url)!r} is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        return sqlite_engine(parsed, busy_timeout, create=create)
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
