"""Contract: health, auth, routing, task types, creation, dedupe, validation
(docs/SERVER_BEHAVIOUR.md)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taskmanager import (
    TaskManagerAuthError,
    TaskManagerClient,
    TaskManagerConfig,
    TaskManagerNotFoundError,
    TaskManagerServerError,
    TaskManagerValidationError,
    TaskType,
    dedupe_key,
)
from taskmanager.emulator import EmulatorServer

from .conftest import SentRequests, Target

pytestmark = pytest.mark.contract


def test_health_needs_no_key(target: Target):
    answer = target.raw("GET", "/health", key="")
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["status"] == "healthy" and data["database"] == "connected"
    assert isinstance(answer.json()["timestamp"], int)
    with target.client(api_key="") as keyless:
        assert keyless.health_check() is True


def test_health_check_false_when_nothing_listens():
    config = TaskManagerConfig.from_env({}, api_url="http://127.0.0.1:9/api", retry_attempts=0)
    with TaskManagerClient(config) as client:
        assert client.health_check() is False


@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_missing_or_wrong_key_401_security_shape(target: Target, key: str):
    answer = target.raw("GET", "/tasks/1", key=key)
    assert answer.status_code == 401
    body = answer.json()
    assert "success" not in body and body["error"] == "Unauthorized"
    assert body["message"].startswith("Invalid or missing API key")
    assert isinstance(body["timestamp"], str)
    with target.client(api_key=key or None) as bad, pytest.raises(TaskManagerAuthError) as info:
        bad.get_task(1)
    assert info.value.status_code == 401


def test_unknown_path_404_and_bad_json_400(target: Target):
    missing = target.raw("GET", "/no-such-endpoint")
    assert missing.status_code == 404 and missing.json()["error"] == "Endpoint not found"
    bad = target.raw(
        "POST", "/tasks", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "Invalid JSON in request body"


def test_trailing_slash_is_ignored(target: Target):
    assert target.raw("GET", "/health/").json()["data"]["status"] == "healthy"


def test_register_create_then_update_ids(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    created = fresh_type()
    assert isinstance(created.id, int) and created.created is True
    raw_create = target.raw(
        "POST",
        "/task-types/register",
        json={"name": created.name, "version": "2.0", "param_schema": {"type": "object"}},
    )
    data = raw_create.json()["data"]
    assert data["id"] == created.id and data["updated"] is True  # int on update
    updated = client.register_task_type(created.name, "3.0", {"type": "object"})
    assert updated.id == created.id and updated.created is None
    fetched = client.get_task_type(created.name)
    assert (fetched.version, fetched.is_active, fetched.param_schema) == (
        "3.0",
        True,
        {"type": "object"},
    )


def test_register_answer_id_is_string_on_create(target: Target):
    import uuid

    answer = target.raw(
        "POST",
        "/task-types/register",
        json={
            "name": f"Contract.raw.{uuid.uuid4().hex[:10]}",
            "version": "1",
            "param_schema": {"type": "object"},
        },
    )
    assert answer.status_code == 200
    assert isinstance(answer.json()["data"]["id"], str) and answer.json()["data"]["created"]


def test_register_missing_field_and_schema_without_type(target: Target):
    missing = target.raw(
        "POST", "/task-types/register", json={"version": "1", "param_schema": {"type": "object"}}
    )
    assert missing.status_code == 400
    assert missing.json()["error"] == "Missing required field: name"
    untyped = target.raw(
        "POST",
        "/task-types/register",
        json={"name": "Contract.x", "version": "1", "param_schema": {"properties": {}}},
    )
    assert untyped.status_code == 400


def test_get_task_type_items_wrapper_and_unknown_name(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    registered = fresh_type()
    raw = target.raw("GET", f"/task-types/{registered.name}").json()["data"]
    assert raw["count"] == 1 and raw["items"][0]["is_active"] == 1
    unknown = target.raw("GET", "/task-types/Contract.never.registered")
    assert unknown.status_code == 200
    assert unknown.json()["data"] == {"items": [], "count": 0}
    with pytest.raises(TaskManagerNotFoundError):
        client.get_task_type("Contract.never.registered")


def test_list_task_types_is_broken_upstream(client: TaskManagerClient):
    with pytest.raises(TaskManagerServerError, match="broken on the deployed"):
        client.list_task_types()


def test_create_new_then_deduplicated(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    task_type = fresh_type()
    first = client.create_task_detailed(task_type.name, {"channel_url": "u1", "top_n": 3})
    again = client.create_task_detailed(task_type.name, {"top_n": 3, "channel_url": "u1"})
    assert isinstance(first.id, int) and first.deduplicated is False
    assert first.status == "pending"
    assert (again.id, again.deduplicated) == (first.id, True)
    raw = target.raw(
        "POST", "/tasks", json={"type": task_type.name, "params": {"channel_url": "u1", "top_n": 3}}
    )
    assert raw.json()["data"]["id"] == first.id and isinstance(raw.json()["data"]["id"], int)


def test_server_dedupe_is_key_order_sensitive(target: Target, fresh_type: Callable[..., TaskType]):
    name = fresh_type({"type": "object"}).name
    one = target.raw("POST", "/tasks", data='{"type":"' + name + '","params":{"a":1,"b":2}}')
    two = target.raw("POST", "/tasks", data='{"type":"' + name + '","params":{"b":2,"a":1}}')
    assert one.json()["data"]["id"] != two.json()["data"]["id"]


@pytest.mark.parametrize(
    "params",
    [
        {"channel_url": "a", "x": 1.0},
        {"channel_url": "a", "x": 1e20, "y": 1.5e-7, "z": 0.1},
        {"channel_url": "a", "big": 12345678901234567890},
        {"channel_url": "ü/é 🎉 <>&'\"\\\n", "nested": {"empty": {}, "list": []}},
        {"channel_url": "a", "flags": [True, False, None]},
    ],
)
def test_local_dedupe_key_equals_server_key(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType], params
):
    name = fresh_type({"type": "object"}).name
    created = client.create_task_detailed(name, params)
    assert created.dedupe_key == dedupe_key(name, params) == client.dedupe_key(name, params)


def test_priority_is_accepted_and_ignored(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "p"}, priority=9)
    assert client.get_task(task_id).priority == 0


@pytest.mark.parametrize("params", [{}, [], [1]])
def test_empty_or_list_params_rejected(target: Target, fresh_type: Callable[..., TaskType], params):
    name = fresh_type({"type": "object"}).name
    answer = target.raw("POST", "/tasks", json={"type": name, "params": params})
    assert answer.status_code == 400
    assert answer.json()["error"] == "Validation failed"
    assert answer.json()["details"] == ["Field 'params' must be of type object"]


def test_client_refuses_empty_params_before_sending(target: Target, client: TaskManagerClient):
    with pytest.raises(TaskManagerValidationError, match="must not be empty"):
        client.create_task("anything", {})
    if target.emulator is not None:
        assert not any(r.path == "/tasks" for r in target.emulator.requests)


def test_unknown_type_404(client: TaskManagerClient):
    with pytest.raises(TaskManagerNotFoundError, match="Task type not found"):
        client.create_task("Contract.never.registered", {"a": 1})


def test_inactive_type_400(
    emulator, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    emulator.store.set_type_active(name, False)
    with pytest.raises(TaskManagerValidationError) as info:
        client.create_task(name, {"channel_url": "x"})
    assert info.value.status_code == 400


def test_server_param_validation_message(target: Target, fresh_type: Callable[..., TaskType]):
    name = fresh_type().name
    answer = target.raw("POST", "/tasks", json={"type": name, "params": {"top_n": "5"}})
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "Parameter validation failed: Missing required property: .channel_url, "
        "Type mismatch at top_n: expected integer, got string"
    )


def test_server_rejects_float_for_integer_and_client_agrees(
    target: Target, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    with (
        target.client(validate_params=False) as unchecked,
        pytest.raises(TaskManagerValidationError, match="Type mismatch at top_n") as info,
    ):
        unchecked.create_task(name, {"channel_url": "x", "top_n": 1.0})
    assert info.value.status_code == 400
    with target.client() as checking:
        checking.get_task_type(name)
        with pytest.raises(TaskManagerValidationError) as local:
            checking.create_task(name, {"channel_url": "x", "top_n": 1.0})
    assert local.value.status_code is None  # refused before sending


@pytest.mark.parametrize(
    ("schema", "params"),
    [
        ({"type": "object", "properties": {"s": {"type": "string", "minLength": 3}}}, {"s": "ab"}),
        ({"type": "object", "properties": {"s": {"type": "string", "maxLength": 2}}}, {"s": "abc"}),
        ({"type": "object", "properties": {"s": {"type": "string", "pattern": "^a"}}}, {"s": "b"}),
        ({"type": "object", "properties": {"n": {"type": "number", "minimum": 1}}}, {"n": 0}),
        ({"type": "object", "properties": {"n": {"type": "integer", "maximum": 1}}}, {"n": 2}),
        ({"type": "object", "properties": {"l": {"type": "array", "minItems": 2}}}, {"l": [1]}),
        ({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1}}}, {"l": [1, 2]}),
        (
            {"type": "object", "properties": {"l": {"type": "array", "items": {"type": "string"}}}},
            {"l": ["a", 1]},
        ),
        ({"type": "object", "properties": {"e": {"enum": ["x", "y"]}}}, {"e": "z"}),
    ],
)
def test_validator_keywords_rejected_by_server_and_client(
    target: Target, fresh_type: Callable[..., TaskType], schema, params
):
    name = fresh_type(schema).name
    answer = target.raw("POST", "/tasks", json={"type": name, "params": params})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Parameter validation failed: ")
    sent = SentRequests()
    with target.client(observer=sent) as checking:
        checking.get_task_type(name)
        sent.calls.clear()
        with pytest.raises(TaskManagerValidationError) as refused:
            checking.create_task(name, params)
    assert sent.calls == [] and refused.value.status_code is None  # refused before sending


def test_get_unknown_task_200_empty(target: Target, client: TaskManagerClient):
    answer = target.raw("GET", "/tasks/999999999")
    assert answer.status_code == 200 and answer.json()["data"] == {"items": [], "count": 0}
    with pytest.raises(TaskManagerNotFoundError):
        client.get_task(999999999)


def test_list_tasks_pages_and_filters(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    """Only what the server guarantees: newest second first, pages that neither
    overlap nor lose a task, filters. Tasks created within one second may come
    in any order (``created_at`` has one-second resolution)."""
    name = fresh_type().name
    older = [client.create_task(name, {"channel_url": f"u{i}"}) for i in range(6)]
    target.let_a_second_pass()
    newest = client.create_task(name, {"channel_url": "u-newest"})
    listed = [t.id for t in client.list_tasks(task_type=name, page_size=3)]
    assert listed[0] == newest
    assert sorted(listed) == sorted([*older, newest])  # 3 pages: no overlap, no loss
    rows = list(client.list_tasks(task_type=name, page_size=3))
    assert all(t.params is None and t.status == "pending" for t in rows)
    assert len(list(client.list_tasks(task_type=name, page_size=3, max_items=4))) == 4
    assert list(client.list_tasks(status="completed", task_type=name)) == []
    claimed = client.claim_task(task_type=name)
    assert claimed is not None
    assert [t.id for t in client.list_tasks(status="claimed", task_type=name)] == [claimed.id]


def test_list_order_within_one_second_is_ascending_ids_like_the_measured_server(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    """Not a server guarantee (emulator only): the emulator reproduces what was measured."""
    name = fresh_type().name
    emulator.advance_clock(1.0 - emulator.clock() % 1.0)  # at the start of a second
    same_second = [client.create_task(name, {"channel_url": f"s{i}"}) for i in range(4)]
    emulator.advance_clock(1.0)
    later = client.create_task(name, {"channel_url": "later"})
    listed = [t.id for t in client.list_tasks(task_type=name)]
    assert listed == [later, *sorted(same_second)]
    assert len({client.get_task(i).created_at for i in same_second}) == 1  # one second
