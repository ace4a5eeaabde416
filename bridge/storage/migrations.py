"""Creating and upgrading the queue's schema through Alembic (the only way it changes)."""

from __future__ import annotations

from alembic import command

from .db_errors import translated_errors
from .engine import open_engine
from .revisions import alembic_config, head_revision, known_revisions, schema_revision

__all__ = ["alembic_config", "current", "downgrade", "head_revision", "known_revisions", "upgrade"]


def _run(db_url: str, action: str, revision: str) -> None:
    engine = open_engine(db_url, create=True)
    try:
        with translated_errors(engine), engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade(db_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (creating the schema on an empty database)."""
    _run(db_url, "upgrade", revision)


def downgrade(db_url: str, revision: str = "base") -> None:
    _run(db_url, "downgrade", revision)


def current(db_url: str) -> str | None:
    """The revision the database is at; ``None`` when it has no schema."""
    engine = open_engine(db_url)
    try:
        return schema_revision(engine)
    finally:
        engine.dispose()
