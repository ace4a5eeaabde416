"""Where the Alembic scripts are, the schema revisions they define, and whether a
database carries the one this version expects (``check_schema``).

The scripts are the single source of the schema's revisions: the code asks
Alembic's ``ScriptDirectory`` instead of keeping a copy of the revision ids
(a copy drifts the first time someone adds a migration and forgets one place).

The scripts live in the repository's top-level ``migrations/`` folder and are
installed as the package ``bridge.migrations`` (``package-dir`` in
pyproject.toml), so a wheel never adds a top-level ``migrations`` package that
would shadow a user's own Alembic project. ``importlib.resources`` finds them in
a built wheel and in an editable install alike.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from ..errors import BridgeError, SchemaError
from .db_errors import translated_errors
from .engine import display_url

MIGRATIONS_PACKAGE = "bridge.migrations"
FIX_COMMAND = "taskmanager-bridge db upgrade"


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (a real directory: Alembic needs one)."""
    location = files(MIGRATIONS_PACKAGE)
    path = Path(str(location))
    if not (path / "env.py").is_file():
        # A zipped install (zipapp, zipimport) has no directory Alembic could read.
        raise BridgeError(
            f"the migration scripts of {MIGRATIONS_PACKAGE} are not a directory on disk "
            f"({location}); install taskmanager-bridge unzipped"
        )
    return path


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


@functools.lru_cache(maxsize=1)
def known_revisions() -> tuple[str, ...]:
    """Every revision this version of the bridge ships, oldest first; the last is the head.

    Cached: the scripts do not change while a process runs, and reading them
    imports every revision module.
    """
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    if len(heads) != 1:
        raise BridgeError(f"the migrations must have exactly one head, found {heads}")
    newest_first = [revision.revision for revision in script.walk_revisions()]
    return tuple(reversed(newest_first))


def head_revision() -> str:
    """The schema revision this version of the bridge expects a database to be at."""
    return known_revisions()[-1]


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
