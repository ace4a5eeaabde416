"""Creating and upgrading the queue's schema through Alembic (the only way it changes)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations

from .database import open_engine, schema_revision, translated_errors

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _run(db_url: str, action: str, revision: str) -> None:
    engine = open_engine(db_url)
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
