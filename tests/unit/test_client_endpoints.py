"""Every endpoint against the exact bodies measured on the real server
(docs/SERVER_BEHAVIOUR.md)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import requests
import responses

from taskmanager import (
    ClaimedTask,
    TaskManagerAuthError,
    TaskManagerClient,
    TaskManagerConflictError,
    TaskManagerNotFoundError,
    TaskManagerRequestTooLargeError,
    TaskManagerServerError,
    TaskManagerValidationError,
)

from .conftest import BASE, KEY, FakeTime, err, ok

SCHEMA = {
    "type": "object",
    "properties": {"channel_url": {"type": "string"}, "top_n": {"type": "integer"}},
    "required": ["channel_url"],
}
TYPE_ROW = {
    "id": 3,
    "name": "youtube_channel_scrape",
    "version": "1.0",
    "param_schema": SCHEMA,
    "is_active": 1,
    "created_at": "2026-11-28 12:32:26",
    "updated_at": "2026-11-28 12:32:26",
}


def body_of(call: responses.Call) -> dict[str, object]:
    raw = call.request.body
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def test_health_check_true_without_key(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.get(
        f"{BASE}/health",
        json=ok({"status": "healthy", "timestamp": 1795869145, "database": "connected"}),
    )
    assert client.health_check() is True
    assert "X-API-Key" not in mocked.calls[0].request.headers


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": ok({"status": "degraded"})},
        {"status": 503, "body": "<html>down</html>"},
        {"body": requests.ConnectionError("refused")},
        {"body": OSError("adapter broke")},
    ],
)
def test_health_check_false_and_never_raises(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime, kwargs
):
    mocked.get(f"{BASE}/health", **kwargs)
    assert client.health_check() is False
    assert fake_time.sleeps == []  # a probe is not retried


def test_register_created_answer_has_string_id(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/task-types/register",
        json=ok({"id": "1", "name": "t", "version": "1.0", "created": True}),
    )
    registered = client.register_task_type("t", "1.0", SCHEMA)
    assert registered.id == 1 and isinstance(registered.id, int)
    assert registered["id"] == 1 and registered.created is True
    assert body_of(mocked.calls[0]) == {"name": "t", "version": "1.0", "param_schema": SCHEMA}
    assert mocked.calls[0].request.headers["X-API-Key"] == KEY


def test_register_update_answer_has_int_id(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/task-types/register",
        json=ok({"id": 1, "name": "t", "version": "2.0", "updated": True}),
    )
    registered = client.register_task_type("t", "2.0", SCHEMA)
    assert (registered.id, registered.version, registered.created) == (1, "2.0", None)


def test_register_rejects_schema_without_type_before_sending(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerValidationError, match="top-level 'type'"):
        client.register_task_type("t", "1", {"properties": {}})
    assert len(mocked.calls) == 0


def test_register_missing_field_answer_is_validation_error(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/task-types/register", status=400, json=err("Missing required field: name"))
    with pytest.raises(TaskManagerValidationError) as info:  # "" is refused before sending
        client.register_task_type("t", "1", SCHEMA)
    assert info.value.status_code == 400
    assert "Missing required field: name" in str(info.value)
    assert str(info.value).endswith(f"on POST {BASE}/task-types/register")


def test_get_task_type_unwraps_items_and_normalises(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.get(
        f"{BASE}/task-types/youtube_channel_scrape", json=ok({"items": [TYPE_ROW], "count": 1})
    )
    task_type = client.get_task_type("youtube_channel_scrape")
    assert task_type.id == 3 and task_type.is_active is True
    assert task_type.param_schema == SCHEMA
    assert task_type.created_at == datetime(2026, 11, 28, 12, 32, 26, tzinfo=timezone.utc)


def test_inactive_flag_zero_is_false(mocked: responses.RequestsMock, client: TaskManagerClient):
    row = {**TYPE_ROW, "is_active": 0}
    mocked.get(f"{BASE}/task-types/youtube_channel_scrape", json=ok({"items": [row], "count": 1}))
    assert client.get_task_type("youtube_channel_scrape").is_active is False


def test_unknown_task_type_200_empty_items_is_not_found(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.get(f"{BASE}/task-types/nope", json=ok({"items": [], "count": 0}))
    with pytest.raises(TaskManagerNotFoundError, match="task type 'nope' not found"):
        client.get_task_type("nope")


def test_list_task_types_500_says_endpoint_broken(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.get(
        f"{BASE}/task-types",
        status=500,
        json=err("Invalid select field: COALESCE(t.usage_count, 0) as usage_count"),
    )
    with pytest.raises(TaskManagerServerError, match="broken on the deployed") as info:
        client.list_task_types()
    assert info.value.status_code == 500
    assert fake_time.sleeps == []  # 500 is not retried
    assert len(mocked.calls) == 1


def test_create_new_task_string_id_and_sorted_params(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks",
        json=ok(
            {
                "id": "7",
                "type": "t",
                "status": "pending",
                "dedupe_key": "ab" * 32,
                "message": "Task created successfully",
            }
        ),
    )
    task_id = client.create_task("t", {"b": 2, "a": {"d": 1, "c": 2}})
    assert task_id == 7 and isinstance(task_id, int)
    raw = mocked.calls[0].request.body
    assert raw == b'{"type":"t","params":{"a":{"c":2,"d":1},"b":2},"priority":0}'


def test_create_deduplicated_answer(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.post(
        f"{BASE}/tasks",
        json=ok(
            {
                "id": 7,
                "status": "completed",
                "deduplicated": True,
                "message": "Task already exists (deduplicated)",
            }
        ),
    )
    created = client.create_task_detailed("t", {"a": 1})
    assert (created.id, created.status, created.deduplicated) == (7, "completed", True)


def test_create_empty_params_refused_before_sending(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerValidationError, match="must not be empty"):
        client.create_task("t", {})
    with pytest.raises(TaskManagerValidationError, match="JSON object"):
        client.create_task("t", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TaskManagerValidationError, match="not JSON serialisable"):
        client.create_task("t", {"x": float("nan")})
    assert len(mocked.calls) == 0


def test_create_server_validation_details_are_kept(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks",
        status=400,
        json=err("Validation failed", details=["Field 'params' must be of type object"]),
    )
    with pytest.raises(TaskManagerValidationError) as info:
        client.create_task("t", {"a": 1})
    assert info.value.details == ["Field 'params' must be of type object"]


def test_create_validates_against_cached_schema(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.get(
        f"{BASE}/task-types/youtube_channel_scrape", json=ok({"items": [TYPE_ROW], "count": 1})
    )
    client.get_task_type("youtube_channel_scrape")
    with pytest.raises(TaskManagerValidationError) as info:
        client.create_task("youtube_channel_scrape", {"top_n": 1.0})
    # Both failures in one message; 1.0 is not an integer for the server.
    assert "'channel_url' is a required property" in str(info.value)
    assert "top_n" in str(info.value)
    assert len(mocked.calls) == 1  # only the type lookup


def test_create_unknown_type_is_not_found(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks", status=404, json=err("Task type not found"))
    with pytest.raises(TaskManagerNotFoundError, match="Task type not found"):
        client.create_task("nope", {"a": 1})


def test_claim_by_name_resolves_id_once(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.get(
        f"{BASE}/task-types/youtube_channel_scrape", json=ok({"items": [TYPE_ROW], "count": 1})
    )
    claim = {
        "id": 12,
        "type": "youtube_channel_scrape",
        "params": {"channel_url": "u"},
        "attempts": 1,
        "priority": 0,
        "message": "Task claimed successfully",
    }
    mocked.post(f"{BASE}/tasks/claim", json=ok(claim))
    first = client.claim_task(task_type="youtube_channel_scrape", worker_id="youtube-worker-001")
    second = client.claim_task(task_type="youtube_channel_scrape")
    assert isinstance(first, ClaimedTask) and second is not None
    assert (first["id"], first["type"], first["params"]) == (
        12,
        "youtube_channel_scrape",
        {"channel_url": "u"},
    )
    assert first.worker_id == "youtube-worker-001" and second.worker_id == "w-1"
    assert [c.request.method for c in mocked.calls] == ["GET", "POST", "POST"]
    assert body_of(mocked.calls[1]) == {"worker_id": "youtube-worker-001", "task_type_id": 3}


@pytest.mark.parametrize(
    ("status", "message"),
    [(404, "No available tasks"), (500, "There is no active transaction")],
)
def test_empty_claim_queue_is_none_without_retry(
    mocked: responses.RequestsMock,
    client: TaskManagerClient,
    fake_time: FakeTime,
    status: int,
    message: str,
):
    mocked.post(f"{BASE}/tasks/claim", status=status, json=err(message))
    assert client.claim_task(task_type_id=3) is None
    assert len(mocked.calls) == 1 and fake_time.sleeps == []


def test_claim_params_empty_list_becomes_dict(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/claim",
        json=ok({"id": 1, "type": "t", "params": [], "attempts": 2, "priority": 0}),
    )
    task = client.claim_task(task_type_id=3)
    assert task is not None and task.params == {} and task.attempts == 2


def test_claim_without_type_is_refused(client: TaskManagerClient):
    with pytest.raises(TaskManagerValidationError, match="task_type"):
        client.claim_task()


def test_claim_other_500_is_server_error(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.post(f"{BASE}/tasks/claim", status=500, json=err("Database error"))
    with pytest.raises(TaskManagerServerError):
        client.claim_task(task_type_id=3)


def test_progress_body_and_string_id_answer(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/12/progress",
        json=ok({"id": "12", "progress": 50, "message": "Task progress updated successfully"}),
    )
    client.update_progress(12, 50, "half", worker_id="w-9")
    assert body_of(mocked.calls[0]) == {"worker_id": "w-9", "progress": 50, "message": "half"}


@pytest.mark.parametrize("value", [-1, 101, 5.5, True])
def test_progress_out_of_range_refused_before_sending(
    mocked: responses.RequestsMock, client: TaskManagerClient, value
):
    with pytest.raises(TaskManagerValidationError, match=r"0\.\.100"):
        client.update_progress(12, value)
    assert len(mocked.calls) == 0


def test_progress_claimed_by_other_is_conflict(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/12/progress", status=403, json=err("Task is claimed by another worker")
    )
    with pytest.raises(TaskManagerConflictError):
        client.update_progress(12, 10)


def test_complete_uses_claiming_worker_and_reads_string_id(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/claim",
        json=ok({"id": 12, "type": "t", "params": {"a": 1}, "attempts": 1, "priority": 0}),
    )
    mocked.post(
        f"{BASE}/tasks/12/complete",
        json=ok({"id": "12", "status": "completed", "message": "Task completed"}),
    )
    task = client.claim_task(task_type_id=3, worker_id="claimer-7")
    assert task is not None
    done = client.complete_task(task_id=task["id"], result={"ideas_found": 3}, status="completed")
    assert (done.id, done.status, done.settled_by_read) == (12, "completed", False)
    assert body_of(mocked.calls[1]) == {
        "worker_id": "claimer-7",
        "success": True,
        "result": {"ideas_found": 3},
    }


def test_fail_reports_error_and_pending_retry(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/12/complete",
        json=ok({"id": "12", "status": "pending (retry)", "message": "Task completed"}),
    )
    done = client.complete_task(12, result={"error": "boom"}, status="failed")
    assert done.will_retry is True
    assert body_of(mocked.calls[0]) == {
        "worker_id": "w-1",
        "success": False,
        "result": {"error": "boom"},
        "error": "boom",
    }


def test_complete_rejects_unknown_status(client: TaskManagerClient):
    with pytest.raises(TaskManagerValidationError, match="status must be one of"):
        client.complete_task(1, {}, status="done")


def _task_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 12,
        "type": "t",
        "status": "completed",
        "params": {"a": 1},
        "result": {"n": 1},
        "error_message": None,
        "priority": 0,
        "progress": 100,
        "attempts": 1,
        "claimed_by": "w-1",
        "claimed_at": "2026-11-28 12:00:00",
        "completed_at": "2026-11-28 12:01:00",
        "created_at": "2026-11-28 11:59:00",
    }
    row.update(overrides)
    return row


def test_replayed_completion_400_settled_by_reading_task(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks/12/complete", status=400, json=err("Task is not in claimed state"))
    mocked.get(f"{BASE}/tasks/12", json=ok({"items": [_task_row()], "count": 1}))
    done = client.complete_task(12, {"n": 1})
    assert (done.status, done.settled_by_read) == ("completed", True)


def test_replayed_failure_settled_when_task_went_back_to_pending(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks/12/complete", status=400, json=err("Task is not in claimed state"))
    row = _task_row(status="pending", result=None, error_message="boom", claimed_by=None)
    mocked.get(f"{BASE}/tasks/12", json=ok({"items": [row], "count": 1}))
    done = client.fail_task(12, "boom")
    assert (done.status, done.settled_by_read, done.will_retry) == ("pending (retry)", True, True)


def test_completion_403_other_worker_raises_conflict_with_task(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks/12/complete", status=403, json=err("Task is claimed by another worker")
    )
    row = _task_row(status="claimed", result=None, claimed_by="w-2", attempts=2)
    mocked.get(f"{BASE}/tasks/12", json=ok({"items": [row], "count": 1}))
    with pytest.raises(TaskManagerConflictError) as info:
        client.complete_task(12, {"n": 1})
    assert info.value.status_code == 403
    assert info.value.current_task.claimed_by == "w-2"


def test_completion_400_with_other_result_is_conflict(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks/12/complete", status=400, json=err("Task is not in claimed state"))
    mocked.get(f"{BASE}/tasks/12", json=ok({"items": [_task_row(result={"n": 2})], "count": 1}))
    with pytest.raises(TaskManagerConflictError, match="not in claimed state"):
        client.complete_task(12, {"n": 1})


def test_complete_unknown_task_is_not_found(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks/99/complete", status=404, json=err("Task not found"))
    with pytest.raises(TaskManagerNotFoundError):
        client.complete_task(99, {"n": 1})


def test_get_task_normalises_row(mocked: responses.RequestsMock, client: TaskManagerClient):
    row = _task_row(params='{"a": 1}', result="[]", attempts="2")
    mocked.get(f"{BASE}/tasks/12", json=ok({"items": [row], "count": 1}))
    task = client.get_task_status(12)
    assert task.params == {"a": 1} and task.result == {} and task.attempts == 2
    assert task["status"] == "completed"
    assert task.completed_at == datetime(2026, 11, 28, 12, 1, tzinfo=timezone.utc)


def test_get_unknown_task_200_empty_items_is_not_found(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.get(f"{BASE}/tasks/404404", json=ok({"items": [], "count": 0}))
    with pytest.raises(TaskManagerNotFoundError) as info:
        client.get_task(404404)
    assert info.value.status_code == 404


def test_list_tasks_pages_until_short_page(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    def rows(ids: range) -> list[dict[str, object]]:
        return [
            {
                "id": i,
                "type": "t",
                "status": "claimed",
                "priority": 0,
                "progress": 0,
                "attempts": 1,
                "claimed_by": "w-1",
                "created_at": "2026-11-28 12:00:00",
                "completed_at": None,
            }
            for i in ids
        ]

    mocked.get(
        f"{BASE}/tasks",
        match=[
            responses.matchers.query_param_matcher(
                {"limit": "2", "offset": "0", "status": "claimed"}
            )
        ],
        json=ok({"items": rows(range(5, 3, -1)), "count": 2}),
    )
    mocked.get(
        f"{BASE}/tasks",
        match=[
            responses.matchers.query_param_matcher(
                {"limit": "2", "offset": "2", "status": "claimed"}
            )
        ],
        json=ok({"items": rows(range(3, 2, -1)), "count": 1}),
    )
    tasks = list(client.list_tasks(status="claimed", page_size=2))
    assert [t.id for t in tasks] == [5, 4, 3]
    assert tasks[0].params is None
    assert len(mocked.calls) == 2


def test_401_security_shape_is_auth_error(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks",
        status=401,
        json={
            "error": "Unauthorized",
            "message": "Invalid or missing API key. Include X-API-Key header with your request.",
            "timestamp": "2026-11-28T12:32:26+00:00",
        },
    )
    with pytest.raises(TaskManagerAuthError) as info:
        client.create_task("t", {"a": 1})
    assert info.value.status_code == 401
    assert "Invalid or missing API key" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_403_ip_block_is_auth_error(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.get(
        f"{BASE}/tasks/1",
        status=403,
        json={"error": "Forbidden", "message": "IP blocked", "timestamp": "x"},
    )
    with pytest.raises(TaskManagerAuthError):
        client.get_task(1)


def test_413_is_request_too_large(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.post(
        f"{BASE}/tasks",
        status=413,
        json={
            "error": "Request Too Large",
            "message": "Request body exceeds 1048576 bytes",
            "timestamp": "2026-11-28T12:32:26+00:00",
        },
    )
    with pytest.raises(TaskManagerRequestTooLargeError) as info:
        client.create_task("t", {"a": "x"})
    assert isinstance(info.value, TaskManagerValidationError)  # never retried, row goes dead


def test_unknown_path_404(mocked: responses.RequestsMock, client: TaskManagerClient):
    mocked.get(f"{BASE}/tasks/1", status=404, json=err("Endpoint not found"))
    with pytest.raises(TaskManagerNotFoundError, match="Endpoint not found"):
        client.get_task(1)


def test_user_agent_names_the_installed_version(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    from importlib.metadata import version

    import taskmanager

    mocked.get(f"{BASE}/health", json=ok({"status": "healthy"}))
    client.health_check()
    agent = mocked.calls[0].request.headers["User-Agent"]
    assert agent.startswith(f"taskmanager-bridge/{version('taskmanager-bridge')} ")
    assert taskmanager.__version__ == version("taskmanager-bridge")


def test_list_tasks_asks_for_no_page_beyond_max_items(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    row = {"id": 1, "type": "t", "status": "pending", "attempts": 0, "claimed_by": None}
    mocked.get(f"{BASE}/tasks", json=ok({"items": [row, {**row, "id": 2}], "count": 2}))
    assert [t.id for t in client.list_tasks(status="pending", page_size=2, max_items=2)] == [1, 2]
    assert len(mocked.calls) == 1  # a full page, and all that was asked: no second request
