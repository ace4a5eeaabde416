"""Alembic environment: the URL comes from the bridge, never from alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from bridge.config import resolve_db_url
from bridge.storage.engine import open_engine
from bridge.storage.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over by bridge.migrate
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db_url") or resolve_db_url()
    engine = open_engine(url, create=True)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
