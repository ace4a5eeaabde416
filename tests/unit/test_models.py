"""Model normalisation of the server's types."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from taskmanager import ClaimedTask, CreatedTask, Task, TaskManagerProtocolError, TaskType
from taskmanager.models import to_datetime, to_int


@pytest.mark.parametrize(("raw", "value"), [("1", 1), (1, 1), (" 42 ", 42), (3.0, 3), ("-2", -2)])
def test_ids_normalised_to_int(raw, value):
    assert to_int(raw) == value


@pytest.mark.parametrize("raw", [True, "x", 1.5, None, [1]])
def test_bad_ids_are_protocol_errors(raw):
    with pytest.raises(TaskManagerProtocolError):
        to_int(raw)


def test_naive_server_timestamp_is_utc():
    assert to_datetime("2026-11-28 12:32:26") == datetime(
        2026, 11, 28, 12, 32, 26, tzinfo=timezone.utc
    )
    assert to_datetime(1795869145).tzinfo is timezone.utc
    assert to_datetime(None) is None
    with pytest.raises(TaskManagerProtocolError):
        to_datetime("yesterday")


def test_task_type_from_register_and_get():
    t = TaskType.from_json(
        {
            "id": "4",
            "name": "n",
            "version": "1",
            "param_schema": '{"type":"object"}',
            "is_active": "0",
        }
    )
    assert (t.id, t.is_active, t.param_schema) == (4, False, {"type": "object"})


def test_missing_field_is_protocol_error():
    with pytest.raises(TaskManagerProtocolError, match="no 'status'"):
        Task.from_json({"id": 1, "type": "t"})


def test_item_access_only_for_fields():
    claimed = ClaimedTask.from_json(
        {"id": "5", "type": "t", "params": {"a": 1}},
        worker_id="w",
        claimed_at=datetime.now(timezone.utc),
    )
    assert claimed["priority"] == 0 and claimed["attempts"] == 1
    assert claimed.get("nope", "dflt") == "dflt"
    with pytest.raises(KeyError):
        claimed["nope"]


def test_created_task_dedup_flag():
    assert CreatedTask.from_json({"id": 7, "status": "claimed", "deduplicated": True}).deduplicated
    assert not CreatedTask.from_json({"id": "7", "status": "pending"}).deduplicated
