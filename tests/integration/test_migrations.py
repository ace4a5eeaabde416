"""Migrations: upgrade on empty, no drift from the models, down and up again; refusals."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from bridge import DatabaseError, LocalQueue, SchemaError
from bridge.storage.engine import open_engine
from bridge.storage.migrations import current, downgrade, head_revision, known_revisions, upgrade
from bridge.storage.revisions import migrations_dir
from bridge.storage.schema import Base

TABLES = {"tasks", "outbox", "task_types", "bridge_state"}


SCHEMA_REVISION = head_revision()


def test_revisions_come_from_the_scripts():
    """One source: the ids the code checks are the ones in migrations/versions/."""
    in_files = {path.name.split("_", 1)[0] for path in (migrations_dir() / "versions").glob("*.py")}
    assert set(known_revisions()) == in_files


def test_upgrade_compare_downgrade_upgrade(db_url: str):
    upgrade(db_url)
    assert current(db_url) == SCHEMA_REVISION
    engine = open_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            if conn.dialect.name == "sqlite":
                # Alembic cannot reflect DESC in a SQLite index (it warns so) and reports the
                # dequeue index as removed + added; the index itself is checked just below.
                diff = [
                    d
                    for d in diff
                    if not (
                        d[0] in ("add_index", "remove_index") and d[1].name == "ix_tasks_queued"
                    )
                ]
                ddl = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = 'ix_tasks_queued'")
                ).scalar()
                assert "priority DESC" in ddl and "WHERE status = 'queued'" in ddl
            assert diff == []
            assert set(inspect(conn).get_table_names()) >= TABLES
        downgrade(db_url)
        with engine.connect() as conn:
            assert not TABLES & set(inspect(conn).get_table_names())
        assert current(db_url) is None
        upgrade(db_url)
        assert current(db_url) == SCHEMA_REVISION
    finally:
        engine.dispose()


def test_missing_schema_names_the_fix(db_url: str):
    with pytest.raises(SchemaError, match="taskmanager-bridge db upgrade"):
        LocalQueue(db_url)


def test_newer_schema_refused(migrated_url: str):
    engine = open_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer version; upgrade taskmanager-bridge"):
        LocalQueue(migrated_url)


def test_older_schema_refused_with_upgrade_command(migrated_url: str):
    downgrade(migrated_url, "0001")
    head = head_revision()
    expected = rf"behind {head}\. Upgrade it with: taskmanager-bridge db"
    with pytest.raises(SchemaError, match=expected):
        LocalQueue(migrated_url)


def test_0002_moves_locally_ended_progress_to_obsolete_and_back(db_url: str):
    upgrade(db_url, "0001")
    engine = open_engine(db_url)
    insert = text(
        "INSERT INTO outbox (kind, payload, status, attempts, created_at, last_error) "
        "VALUES ('progress', '{}', 'superseded', 0, '2026-11-28 12:00:00', :reason)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"reason": "task ended locally (complete) before this was sent"})
            conn.execute(insert, {"reason": "task no longer ours to report on: 403"})
        upgrade(db_url, "0002")
        statuses = "SELECT status FROM outbox ORDER BY id"
        with engine.connect() as conn:
            assert conn.execute(text(statuses)).scalars().all() == ["obsolete", "superseded"]
        downgrade(db_url, "0001")
        with engine.connect() as conn:
            assert conn.execute(text(statuses)).scalars().all() == ["superseded", "superseded"]
    finally:
        engine.dispose()


def test_other_applications_sqlite_file_refused(tmp_path):
    path = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tasks (id INTEGER, title TEXT)")
    with pytest.raises(SchemaError, match="no taskmanager-bridge schema"):
        LocalQueue(str(path))


def test_corrupt_file_is_a_clear_database_error(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(DatabaseError, match="not a usable SQLite database"):
        LocalQueue(str(path))
    assert path.read_bytes().startswith(b"this is not a database")  # left untouched


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        LocalQueue(str(tmp_path / "nope" / "queue.db"))


def test_sqlite_hot_statements_use_their_indexes(tmp_path):
    """The statements the queue really runs (compiled, with their parameters) are index
    lookups: no scan of the whole table and no sort of the backlog."""
    from datetime import datetime, timezone

    from sqlalchemy import or_, select

    from bridge.storage.schema import IS_PENDING, IS_PENDING_CREATE, IS_QUEUED, outbox, tasks
    from bridge.storage.statements import Prepared

    path = tmp_path / "plan.db"
    upgrade(str(path))
    engine = open_engine(str(path))
    prepared = Prepared(engine.dialect)

    def assert_indexed(name: str, plan_rows: list[tuple]) -> None:
        lines = [str(row[-1]) for row in plan_rows]
        bad = [
            line
            for line in lines
            if "TEMP B-TREE" in line or (line.startswith("SCAN") and "USING" not in line)
        ]
        assert not bad, f"{name}: {' | '.join(lines)}"

    now = datetime.now(timezone.utc)
    plain = {
        "pending outbox": select(outbox.c.id)
        .where(IS_PENDING, or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now))
        .order_by(outbox.c.id)
        .limit(10),
        "pending create": select(outbox.c.id).where(IS_PENDING_CREATE, outbox.c.dedupe_key == "k"),
        "queued count": select(tasks.c.id).where(IS_QUEUED, tasks.c.type == "t"),
    }
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            checks = {
                "dequeue": prepared.dequeue(0),
                "dequeue typed": prepared.dequeue(2),
                "supersede progress": prepared.obsolete_progress,
                "replace progress": prepared.replace_progress,
                "finish": prepared.finish_done,
            }
            for name, statement in checks.items():
                unbound = dict.fromkeys(statement.names)
                plan = raw.execute(f"EXPLAIN QUERY PLAN {statement.sql}", unbound).fetchall()
                assert_indexed(name, plan)
            for name, query in plain.items():
                compiled = query.compile(dialect=engine.dialect)
                params = [compiled.construct_params()[k] for k in compiled.positiontup]
                params = [v.isoformat(" ") if isinstance(v, datetime) else v for v in params]
                plan = raw.execute(f"EXPLAIN QUERY PLAN {compiled.string}", params).fetchall()
                assert_indexed(name, plan)
    finally:
        engine.dispose()
