"""Contract: claim, progress, complete, fail, leases and concurrent claimers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from taskmanager import (
    TaskManagerClient,
    TaskManagerConflictError,
    TaskManagerNotFoundError,
    TaskManagerValidationError,
    TaskType,
)
from taskmanager.emulator import EmulatorServer

from .conftest import Target

pytestmark = pytest.mark.contract


def test_claim_by_name_gets_params_and_attempt(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "c", "top_n": 2})
    with target.client() as fresh_client:  # resolves the name itself
        task = fresh_client.claim_task(task_type=name, worker_id="youtube-worker-001")
    assert task is not None
    assert (task["id"], task["type"], task["params"]) == (
        task_id,
        name,
        {"channel_url": "c", "top_n": 2},
    )
    assert task.attempts == 1 and task.priority == 0
    row = client.get_task(task_id)
    assert (row.status, row.claimed_by, row.attempts) == ("claimed", "youtube-worker-001", 1)


def test_empty_queue_is_none(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    registered = fresh_type()
    assert client.claim_task(task_type=registered.name) is None
    raw = target.raw("POST", "/tasks/claim", json={"worker_id": "w", "task_type_id": registered.id})
    # The deployed server's double rollback: 500, not the intended 404.
    assert raw.status_code in (404, 500)
    if target.is_emulator:
        assert (raw.status_code, raw.json()["error"]) == (500, "There is no active transaction")


def test_empty_queue_intended_404_when_quirks_off():
    with EmulatorServer(quirks=False) as server, server.client() as client:
        registered = client.register_task_type("Q.fixed", "1", {"type": "object"})
        raw = server.app.handle(
            "POST",
            "/api/tasks/claim",
            {"x-api-key": server.api_key},
            b'{"worker_id":"w","task_type_id":%d}' % registered.id,
            "127.0.0.1",
        )
        assert raw.status == 404 and b"No available tasks" in raw.body
        assert client.claim_task(task_type="Q.fixed") is None
        assert [t.name for t in client.list_task_types()] == ["Q.fixed"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"worker_id": "w"}, "Missing required field: task_type_id"),
        ({"worker_id": "w", "task_type_id": -3}, "task_type_id must be a positive integer"),
        ({"worker_id": "w", "task_type_id": "abc"}, "task_type_id must be a positive integer"),
    ],
)
def test_claim_needs_numeric_type_id(target: Target, body, error):
    answer = target.raw("POST", "/tasks/claim", json=body)
    assert answer.status_code == 400 and answer.json()["error"] == error


def test_claim_order_oldest_first(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    ids = []
    for i in range(3):
        if ids:
            target.let_a_second_pass()  # ties within one second have no guaranteed order
        ids.append(client.create_task(name, {"channel_url": f"o{i}"}))
    claimed = [client.claim_task(task_type=name) for _ in ids]
    assert [t.id for t in claimed if t] == ids


def test_progress_then_complete(client: TaskManagerClient, fresh_type: Callable[..., TaskType]):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "p"})
    task = client.claim_task(task_type=name)
    assert task is not None
    client.update_progress(task.id, 40, "scraping")
    assert client.get_task(task.id).progress == 40
    done = client.complete_task(task_id=task["id"], result={"ideas_found": 4}, status="completed")
    assert (done.id, done.status, done.settled_by_read) == (task.id, "completed", False)
    row = client.get_task(task.id)
    assert (row.status, row.result) == ("completed", {"ideas_found": 4})
    assert row.completed_at is not None


def test_progress_errors(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "e"})
    with pytest.raises(TaskManagerConflictError) as not_claimed:
        client.update_progress(task_id, 10)
    assert not_claimed.value.status_code == 400
    task = client.claim_task(task_type=name, worker_id="holder")
    assert task is not None
    with pytest.raises(TaskManagerConflictError) as other:
        client.update_progress(task_id, 10, worker_id="someone-else")
    assert other.value.status_code == 403
    out_of_range = target.raw(
        "POST", f"/tasks/{task_id}/progress", json={"worker_id": "holder", "progress": 101}
    )
    assert out_of_range.status_code == 400
    with pytest.raises(TaskManagerNotFoundError):
        client.update_progress(999999999, 10)


def test_replayed_completion_is_settled_not_an_error(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "r"})
    task = client.claim_task(task_type=name)
    assert task is not None
    client.complete_task(task.id, {"n": 1, "nested": {}})
    raw = target.raw(
        "POST",
        f"/tasks/{task.id}/complete",
        json={"worker_id": task.worker_id, "success": True, "result": {"n": 1}},
    )
    assert raw.status_code == 400 and raw.json()["error"] == "Task is not in claimed state"
    replay = client.complete_task(task.id, {"nested": {}, "n": 1}, worker_id=task.worker_id)
    assert (replay.status, replay.settled_by_read) == ("completed", True)


def test_completion_with_different_result_after_done_is_conflict(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "d"})
    task = client.claim_task(task_type=name)
    assert task is not None
    client.complete_task(task.id, {"n": 1})
    with pytest.raises(TaskManagerConflictError) as info:
        client.complete_task(task.id, {"n": 2}, worker_id=task.worker_id)
    assert info.value.current_task.status == "completed"


def test_failure_retries_until_three_attempts(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "f"})
    statuses = []
    for attempt in (1, 2, 3):
        task = client.claim_task(task_type=name)
        assert task is not None and task.id == task_id and task.attempts == attempt
        statuses.append(
            client.complete_task(task.id, {"error": f"boom {attempt}"}, status="failed").status
        )
    assert statuses == ["pending (retry)", "pending (retry)", "failed"]
    row = client.get_task(task_id)
    assert (row.status, row.error_message, row.attempts) == ("failed", "boom 3", 3)
    assert client.claim_task(task_type=name) is None


def test_replayed_failure_is_settled(
    client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "rf"})
    task = client.claim_task(task_type=name)
    assert task is not None
    first = client.fail_task(task.id, "network down", worker_id=task.worker_id)
    again = client.fail_task(task.id, "network down", worker_id=task.worker_id)
    assert (first.status, again.status, again.settled_by_read) == (
        "pending (retry)",
        "pending (retry)",
        True,
    )


def test_lease_expiry_reclaim_by_other_worker(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    task_id = client.create_task(name, {"channel_url": "lease"})
    first = client.claim_task(task_type=name, worker_id="slow-worker")
    assert first is not None
    assert client.claim_task(task_type=name, worker_id="other") is None  # lease holds
    client.update_progress(task_id, 50, worker_id="slow-worker")  # does not renew
    target.expire_leases()
    second = client.claim_task(task_type=name, worker_id="fast-worker")
    assert second is not None and second.id == task_id and second.attempts == 2
    with pytest.raises(TaskManagerConflictError) as stolen:
        client.complete_task(task_id, {"by": "slow"}, worker_id="slow-worker")
    assert stolen.value.status_code == 403
    assert stolen.value.current_task.claimed_by == "fast-worker"
    assert client.complete_task(task_id, {"by": "fast"}, worker_id="fast-worker").status == (
        "completed"
    )


def test_expired_lease_still_completable_until_reclaimed(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "late"})
    task = client.claim_task(task_type=name)
    assert task is not None
    target.expire_leases()
    assert client.complete_task(task.id, {"late": True}).status == "completed"


def test_concurrent_claimers_never_share_a_task(
    target: Target, fresh_type: Callable[..., TaskType]
):
    with target.client() as setup:
        name = fresh_type().name
        created = {setup.create_task(name, {"channel_url": f"c{i}"}) for i in range(200)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(index: int) -> None:
        with target.client(worker_id=f"parallel-{index}") as own:
            while (task := own.claim_task(task_type=name)) is not None:
                with lock:
                    claimed.append(task.id)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(claimed) == 200 and set(claimed) == created


def test_claim_validation_local(target: Target):
    from .conftest import SentRequests

    sent = SentRequests()
    with target.client(observer=sent) as client, pytest.raises(TaskManagerValidationError) as info:
        client.claim_task(task_type_id=1, sort_by="nonsense")
    assert sent.calls == [] and info.value.status_code is None  # refused before sending


def test_raw_answer_shapes(
    target: Target, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    """The server's own types, before the client normalises them."""
    import re

    name = fresh_type({"type": "object"}).name
    created = target.raw(
        "POST", "/tasks", json={"type": name, "params": {"a": {}, "x": 1.0, "u": "é/"}}
    )
    data = created.json()["data"]
    assert isinstance(data["id"], str) and data["status"] == "pending"
    assert re.fullmatch(r"[0-9a-f]{64}", data["dedupe_key"])
    task_id = int(data["id"])
    claim = target.raw(
        "POST",
        "/tasks/claim",
        json={"worker_id": "raw-w", "task_type_id": client.task_type_id(name)},
    )
    claimed = claim.json()["data"]
    assert claimed["id"] == task_id and isinstance(claimed["id"], int)
    assert claimed["params"] == {"a": [], "x": 1, "u": "é/"}  # PHP's re-encoding
    progress = target.raw(
        "POST", f"/tasks/{task_id}/progress", json={"worker_id": "raw-w", "progress": 50}
    )
    assert progress.json()["data"] == {
        "id": str(task_id),
        "progress": 50,
        "message": "Task progress updated successfully",
    }
    done = target.raw(
        "POST",
        f"/tasks/{task_id}/complete",
        json={"worker_id": "raw-w", "success": True, "result": {"k": 1}},
    )
    assert done.json()["data"]["id"] == str(task_id)
    assert done.json()["data"]["status"] == "completed"
    row = target.raw("GET", f"/tasks/{task_id}").json()["data"]["items"][0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row["created_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row["completed_at"])
    listing = target.raw("GET", "/tasks", params={"type": name, "limit": 5}).json()["data"]
    assert listing["count"] == 1 and "params" not in listing["items"][0]
    again = target.raw(
        "POST", "/tasks", json={"type": name, "params": {"a": {}, "x": 1.0, "u": "é/"}}
    )
    assert again.json()["data"] == {
        "id": task_id,
        "status": "completed",
        "deduplicated": True,
        "message": "Task already exists (deduplicated)",
    }


def test_reregistering_reactivates_a_type(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    emulator.store.set_type_active(name, False)
    assert client.get_task_type(name).is_active is False
    client.register_task_type(name, "1.1", {"type": "object"})
    assert client.get_task_type(name).is_active is True
    assert isinstance(client.create_task(name, {"any": 1}), int)


def test_one_client_shared_by_threads(target: Target, fresh_type: Callable[..., TaskType]):
    """One client (one session) used from 8 threads: the worker-with-threads case."""
    with target.client(worker_id="shared") as shared:
        name = fresh_type({"type": "object"}).name
        created: list[int] = []
        claimed: list[int] = []
        lock = threading.Lock()

        def work(index: int) -> None:
            for n in range(25):
                task_id = shared.create_task(name, {"t": index, "n": n})
                with lock:
                    created.append(task_id)
            while (task := shared.claim_task(task_type=name)) is not None:
                shared.complete_task(task.id, {"by": index})
                with lock:
                    claimed.append(task.id)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(set(created)) == 200
        assert sorted(claimed) == sorted(created)
        assert all(
            t.status == "completed" for t in shared.list_tasks(task_type=name, page_size=100)
        )
