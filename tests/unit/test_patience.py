"""Patience: database trouble is retried, logged once per cause, ended by a gone schema."""

from __future__ import annotations

import logging
import threading

import pytest

from bridge.errors import DatabaseError, SchemaError
from bridge.storage.patience import GaveUp, Patience, SchemaGone


def failing(errors: list[Exception], value: str = "stored"):
    def action() -> str:
        if errors:
            raise errors.pop(0)
        return value

    return action


def test_trouble_is_retried_and_each_cause_logged_once(caplog: pytest.LogCaptureFixture):
    patience = Patience(lambda: None, backoff_max_seconds=0.001, clock=lambda: 10.0)
    locked = DatabaseError("q.db: the database is locked by another process (database is locked)")
    full = DatabaseError("q.db: the disk is full (database or disk is full)")
    errors: list[Exception] = [locked, locked, locked, full, full]
    with caplog.at_level(logging.WARNING, "bridge.worker"):
        assert patience.call("storing", failing(errors), threading.Event()) == "stored"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("database trouble while storing" in line for line in lines) == 2
    assert sum("database usable again" in line for line in lines) == 2
    assert patience.waits == 5


def test_a_set_give_up_event_ends_the_wait():
    patience = Patience(lambda: None, backoff_max_seconds=0.001)
    stop = threading.Event()
    stop.set()
    with pytest.raises(GaveUp, match="gave up taking a task"):
        patience.call("taking a task", failing([DatabaseError("x: down")] * 3), stop)


def test_a_schema_gone_is_not_waited_out():
    def check() -> None:
        raise SchemaError("q.db has no taskmanager-bridge schema. Create it with: ...")

    patience = Patience(check, backoff_max_seconds=0.001)
    with pytest.raises(SchemaGone, match="no taskmanager-bridge schema"):
        patience.call(
            "storing", failing([DatabaseError("x: no such table: tasks")]), threading.Event()
        )


def test_other_errors_go_to_the_caller():
    patience = Patience(lambda: None, backoff_max_seconds=0.001)
    with pytest.raises(ValueError):
        patience.call("storing", failing([ValueError("a bug")]), threading.Event())
