"""Contract: what the server can store (65,535 bytes per value) and find (raw type names).

Sent raw (``Target.raw``) where the server's own answer is the point, so that a real
deployment is checked, not our client's refusal before sending.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taskmanager import TaskManagerClient, TaskManagerDataTooLongError, TaskType
from taskmanager.validation import STORED_MAX_BYTES

from .conftest import SentRequests, Target

pytestmark = pytest.mark.contract


def too_long(column: str) -> str:
    return (
        "SQLSTATE[22001]: String data, right truncated: 1406 Data too long for column "
        f"'{column}' at row 1"
    )


def test_params_of_60000_chars_are_stored_70000_refused_with_data_too_long(
    target: Target, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    fits = target.raw(
        "POST", "/tasks", json={"type": name, "params": {"channel_url": "a" * 60_000}}
    )
    assert fits.status_code == 200, fits.text
    over = target.raw(
        "POST", "/tasks", json={"type": name, "params": {"channel_url": "b" * 70_000}}
    )
    assert over.status_code == 500
    assert over.json()["success"] is False and over.json()["error"] == too_long("params_json")


def test_a_result_of_70000_chars_is_refused_and_the_task_stays_claimed(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "c"})
    claimed = client.claim_task(task_type=name)
    assert claimed is not None and claimed.id == task_id
    body = {"worker_id": client.worker_id, "success": True, "result": {"r": "r" * 70_000}}
    answer = target.raw("POST", f"/tasks/{task_id}/complete", json=body)
    assert answer.status_code == 500 and answer.json()["error"] == too_long("result_json")
    task = client.get_task(task_id)
    assert (task.status, task.claimed_by, task.result) == ("claimed", client.worker_id, None)
    client.complete_task(task_id, {"r": "r" * 60_000})  # what fits is still accepted
    assert client.get_task(task_id).status == "completed"


def test_the_client_refuses_what_cannot_be_stored_before_sending(
    target: Target, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    sent = SentRequests()
    with target.client(observer=sent) as client:
        with pytest.raises(TaskManagerDataTooLongError, match=r"params: 70,0\d\d bytes"):
            client.create_task(name, {"channel_url": "x" * 70_000})
        with pytest.raises(TaskManagerDataTooLongError, match=r"result: 70,0\d\d bytes"):
            client.complete_task(1, {"r": "r" * 70_000})
    assert sent.calls == []


def test_a_failure_with_an_overlong_error_is_cut_to_fit_and_stored(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "c"})
    assert client.claim_task(task_type=name) is not None
    assert client.fail_task(task_id, "Traceback " + "e" * 70_000).status == "pending (retry)"
    error = client.get_task(task_id).error_message or ""
    assert error.startswith("Traceback eee") and "[cut: the error text was 70,010 bytes" in error
    assert len(error.encode()) <= STORED_MAX_BYTES


def test_a_type_name_with_colon_and_plus_is_claimable_by_name(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type(prefix="Contract:colon+plus@(v2)").name
    task_id = client.create_task(name, {"channel_url": "c"})
    with target.client() as fresh_client:  # looks the name up: GET /task-types/{name}
        assert fresh_client.get_task_type(name).name == name
        claimed = fresh_client.claim_task(task_type=name)
    assert claimed is not None and (claimed.id, claimed.type) == (task_id, name)
    encoded = name.replace(":", "%3A").replace("+", "%2B")
    answer = target.raw("GET", f"/task-types/{encoded}")  # the server does not decode it
    assert answer.status_code == 200 and answer.json()["data"]["items"] == []
