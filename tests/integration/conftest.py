"""Database fixtures: every queue test runs on a SQLite file AND on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from bridge import LocalQueue
from bridge.storage.migrations import upgrade

from .helpers import pg_base_url, pg_execute, pg_unreachable_reason, postgres_decision

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


@dataclass
class Clock:
    """A settable clock for the queue (``tick(now)`` style, no sleeping)."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _postgres_url() -> Iterator[str]:
    action, reason = postgres_decision(os.environ, pg_unreachable_reason())
    if action == "fail":
        pytest.fail(reason, pytrace=False)
    if action == "skip":
        pytest.skip(reason)
    schema = f"bq_{uuid.uuid4().hex[:12]}"
    pg_execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg_base_url()}?options=-csearch_path%3D{schema}"
    finally:
        pg_execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "queue.db")
    else:
        yield from _postgres_url()


@pytest.fixture
def migrated_url(db_url: str) -> str:
    upgrade(db_url)
    return db_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(migrated_url: str, clock: Clock) -> Iterator[LocalQueue]:
    with LocalQueue(migrated_url, locked_by="worker-a", clock=clock) as q:
        yield q
