"""Times in the queue: any aware datetime in, the same instant out as aware UTC.

On SQLite the store converts datetimes itself (one C call each way, see
``schema.UTCDateTime``); these tests hold that path to SQLAlchemy's own format
and to the PostgreSQL behaviour.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from bridge import LocalQueue
from bridge.storage.schema import tasks

from .conftest import Clock

PLUS_TWO = timezone(timedelta(hours=2))


def test_an_instant_given_in_another_zone_reads_back_as_the_same_utc_instant(
    migrated_url: str,
) -> None:
    local_noon = datetime(2026, 11, 28, 14, 0, 0, 123456, tzinfo=PLUS_TWO)
    with LocalQueue(migrated_url, clock=lambda: local_noon) as queue:
        task = queue.enqueue("t", {})
        assert task.created_at == local_noon
        assert task.created_at.tzinfo is timezone.utc
        assert task.created_at.hour == 12
        # The generic SQLAlchemy path reads what the fast path wrote, and the other way.
        with queue.store.engine.connect() as conn:
            stored = conn.execute(select(tasks.c.created_at).where(tasks.c.id == task.id))
            assert stored.scalar_one() == local_noon
            later = local_noon + timedelta(minutes=5)
            conn.execute(update(tasks).where(tasks.c.id == task.id).values(created_at=later))
            conn.commit()
        reread = queue.get(task.id)
        assert reread is not None and reread.created_at == later


def test_sqlite_stores_utc_text_in_sqlalchemys_own_format(tmp_path) -> None:
    from bridge.storage.migrations import upgrade

    url = str(tmp_path / "q.db")
    upgrade(url)
    at = datetime(2026, 1, 2, 5, 6, 7, tzinfo=PLUS_TWO)
    with LocalQueue(url, clock=lambda: at) as queue:
        task = queue.enqueue("t", {})
        with queue.store.engine.connect() as conn:
            raw = conn.exec_driver_sql(
                "SELECT created_at FROM tasks WHERE id = ?", (task.id,)
            ).scalar_one()
    assert raw == "2026-01-02 03:06:07.000000"


def test_a_naive_datetime_is_refused_and_nothing_is_written(
    migrated_url: str, clock: Clock
) -> None:
    naive = datetime(2026, 11, 28, 12, 0)
    with (
        LocalQueue(migrated_url, clock=lambda: naive) as queue,
        pytest.raises(ValueError, match="naive datetime"),
    ):
        queue.enqueue("t", {})
    with LocalQueue(migrated_url, clock=clock) as queue:
        assert queue.status().tasks == {}


def test_times_converted_from_many_threads_at_once_each_get_their_own_text() -> None:
    """The hot statements share one converter that remembers its latest values by
    identity; threads converting their own instants at once never get another's text."""
    from sqlalchemy.dialects import sqlite

    from bridge.storage.schema import UTCDateTime
    from bridge.storage.statements import time_converter

    convert = time_converter(sqlite.dialect())
    reference = UTCDateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
    assert convert is not None and reference is not None
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    wrong: list[tuple[datetime, str]] = []

    def convert_own(offset: int) -> None:
        instants = [start + timedelta(seconds=offset * 1000 + i) for i in range(5)]
        for round_ in range(4000):
            instant = instants[round_ % 5]  # more than the converter remembers
            for _ in range(2):  # and the same object again, as a task's statements do
                text = convert(instant)
                if text != reference(instant):
                    wrong.append((instant, text))

    threads = [threading.Thread(target=convert_own, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-01-02 03:04:05.000006", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)),
        ("2026-01-02 03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02 05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02 03:04:05.5+00:00", datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=timezone.utc)),
    ],
)
def test_times_another_tool_wrote_read_as_their_instant_in_utc(
    tmp_path, clock: Clock, text: str, instant: datetime
) -> None:
    """SQLite keeps text: a row changed by hand or by another program may carry an
    offset of its own, or a date alone."""
    from bridge.storage.migrations import upgrade

    url = str(tmp_path / "q.db")
    upgrade(url)
    with LocalQueue(url, clock=clock) as queue:
        task = queue.enqueue("t", {})
        with queue.store.engine.connect() as conn:
            conn.exec_driver_sql("UPDATE tasks SET created_at = ? WHERE id = ?", (text, task.id))
            conn.commit()
        read = queue.get(task.id)
    assert read is not None
    assert read.created_at == instant and read.created_at.tzinfo is timezone.utc


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc),
        datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2026, 1, 1, 1, 30, tzinfo=PLUS_TWO),  # the day before, in UTC
        datetime(2026, 6, 1, 12, 0, 0, 500, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    ],
)
def test_a_time_is_written_as_sqlalchemys_own_sqlite_text(instant: datetime) -> None:
    """The fast path writes the text SQLAlchemy's generic SQLite DATETIME writes for the
    same instant in UTC, field by field (years under 1000 padded, microseconds always)."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from bridge.storage.schema import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    generic = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and generic is not None
    assert ours(instant) == generic(instant.astimezone(timezone.utc).replace(tzinfo=None))
