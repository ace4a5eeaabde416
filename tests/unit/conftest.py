"""Fixtures for narrow client tests: exact HTTP shapes through ``responses``, no sleeping."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest
import responses

from taskmanager import TaskManagerClient, TaskManagerConfig

BASE = "https://tm.example.test/api"
KEY = "sekret-key-123"


@dataclass
class FakeTime:
    """A monotonic clock that only moves when the client sleeps."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def client(fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskManagerClient]:
    for name in ("API_URL", "API_KEY", "WORKER_ID", "TIMEOUT", "RETRY_ATTEMPTS"):
        monkeypatch.delenv(f"TASKMANAGER_{name}", raising=False)
    config = TaskManagerConfig(api_url=BASE, api_key=KEY, worker_id="w-1")
    with TaskManagerClient(
        config,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        rng=random.Random(7),
        now=lambda: datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc),
    ) as c:
        yield c


def ok(data: object) -> dict[str, object]:
    """The server's success envelope."""
    return {"success": True, "message": "Success", "data": data, "timestamp": 1795869145}


def err(message: str, **extra: object) -> dict[str, object]:
    """The server's application error envelope."""
    return {"success": False, "error": message, **extra, "timestamp": 1795869146}
