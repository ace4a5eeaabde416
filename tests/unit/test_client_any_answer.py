"""Whatever the server (or anything in front of it) answers, the client raises a typed
TaskManagerError or returns a valid model: never another exception type."""

from __future__ import annotations

import json
import random

import responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmanager import (
    ClaimedTask,
    CompletionResult,
    CreatedTask,
    Task,
    TaskManagerClient,
    TaskManagerConfig,
    TaskManagerError,
)

from .conftest import BASE, KEY, FakeTime

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
json_any = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=10,
)
envelope_like = st.fixed_dictionaries(
    {"success": st.one_of(st.booleans(), json_leaf)},
    optional={
        "data": st.one_of(
            json_any,
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.one_of(st.integers(), st.text(max_size=4), json_leaf),
                    "items": st.one_of(json_any, st.lists(json_any, max_size=2)),
                    "type": json_any,
                    "status": json_any,
                    "params": json_any,
                    "result": json_any,
                    "attempts": json_any,
                    "claimed_at": json_any,
                    "created_at": json_any,
                    "deduplicated": json_any,
                },
            ),
        ),
        "error": json_any,
        "message": json_any,
        "details": json_any,
        "retry_after": json_any,
    },
)
bodies = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    json_any.map(lambda v: json.dumps(v).encode()),
    envelope_like.map(lambda v: json.dumps(v).encode()),
    envelope_like.map(lambda v: json.dumps(v).encode()[: max(1, len(json.dumps(v)) // 2)]),
)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "Content-Type"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    max_size=3,
)
statuses = st.one_of(
    st.sampled_from([200, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504]),
    st.integers(min_value=200, max_value=599),
)

CALLS = {
    "get": (responses.GET, f"{BASE}/tasks/5", lambda c: c.get_task(5), (Task,)),
    "create": (
        responses.POST,
        f"{BASE}/tasks",
        lambda c: c.create_task_detailed("t", {"a": 1}),
        (CreatedTask,),
    ),
    "claim": (
        responses.POST,
        f"{BASE}/tasks/claim",
        lambda c: c.claim_task(task_type_id=1),
        (ClaimedTask, type(None)),
    ),
    "complete": (
        responses.POST,
        f"{BASE}/tasks/5/complete",
        lambda c: c.complete_task(5, {"r": 1}, worker_id="w"),
        (CompletionResult,),
    ),
    "type": (responses.GET, f"{BASE}/task-types/t", lambda c: c.get_task_type("t"), None),
    "list": (
        responses.GET,
        f"{BASE}/tasks",
        lambda c: list(c.list_tasks(page_size=2, max_items=4)),
        None,
    ),
}


@example(call="get", status=200, body=b'{"success": true, "data": {"items": "abc"}}', extra={})
@example(call="get", status=200, body=b'{"success": true, "data": {"items": [1]}}', extra={})
@example(call="claim", status=200, body=b'{"success": true, "data": ["id"]}', extra={})
@example(call="claim", status=200, body=b'{"success": true, "data": "str"}', extra={})
@example(call="create", status=200, body=b'{"success": true, "data": 5}', extra={})
@example(call="list", status=200, body=b'{"success": true, "data": {"items": "ab"}}', extra={})
@example(call="list", status=200, body=b'{"success": true, "data": {"items": [null]}}', extra={})
@example(
    call="get",
    status=200,
    body=b'{"success": true, "data": {"items": [{"id": 5, "type": "t", "status": "x", '
    b'"claimed_by": [1]}]}}',
    extra={},
)
@example(
    call="complete",
    status=200,
    body=b'{"success": true, "data": {"id": "5", "status": null}}',
    extra={},
)
@example(
    call="type",
    status=200,
    body=b'{"success": true, "data": {"items": [{"id": 1, "name": 7}]}}',
    extra={},
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(call=st.sampled_from(sorted(CALLS)), status=statuses, body=bodies, extra=headers)
def test_any_answer_gives_a_model_or_a_typed_error(call, status, body, extra):
    method, url, invoke, model_types = CALLS[call]
    fake = FakeTime()
    config = TaskManagerConfig.from_env(
        {}, api_url=BASE, api_key=KEY, retry_attempts=1, retry_deadline=5
    )
    client = TaskManagerClient(config, sleep=fake.sleep, clock=fake.clock, rng=random.Random(0))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add(method, url, body=body, status=status, headers=extra)
        mocked.add(responses.GET, f"{BASE}/tasks/5", body=body, status=status, headers=extra)
        try:
            value = invoke(client)
        except TaskManagerError as exc:
            assert KEY not in str(exc) and KEY not in repr(exc)
            return
    if model_types is not None:
        assert isinstance(value, model_types)
