"""Contract scenarios that need fault injection (emulator only): lost answers, outages,
hangs, 5xx bursts, HTML pages, rate limits and size limits."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable

import pytest

from taskmanager import (
    TaskManagerClient,
    TaskManagerConnectionError,
    TaskManagerNotFoundError,
    TaskManagerProtocolError,
    TaskManagerRequestTooLargeError,
    TaskManagerTimeoutError,
    TaskType,
)
from taskmanager.emulator import EmulatorServer

pytestmark = pytest.mark.contract


def test_lost_answer_on_create_retry_dedupes(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    emulator.faults.drop_after_commit(path="/tasks", method="POST")
    task_id = client.create_task(name, {"channel_url": "lost"})
    assert [t.id for t in client.list_tasks(task_type=name)] == [task_id]
    statuses = [r.status for r in emulator.requests if (r.method, r.path) == ("POST", "/tasks")]
    assert statuses == ["dropped", 200]


def test_lost_answer_on_complete_settled_as_delivered(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "lost-complete"})
    task = client.claim_task(task_type=name)
    assert task is not None
    emulator.faults.drop_after_commit(path="/tasks/*/complete")
    done = client.complete_task(task.id, {"ok": True})
    assert (done.status, done.settled_by_read) == ("completed", True)
    assert client.get_task(task.id).result == {"ok": True}


def test_lost_answer_on_fail_settled(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "lost-fail"})
    task = client.claim_task(task_type=name)
    assert task is not None
    emulator.faults.drop_after_commit(path="/tasks/*/complete")
    done = client.fail_task(task.id, "it broke")
    assert (done.status, done.settled_by_read) == ("pending (retry)", True)


def test_lost_answer_on_claim_leaves_orphan_visible_by_worker_id(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    first = client.create_task(name, {"channel_url": "o1"})
    second = client.create_task(name, {"channel_url": "o2"})
    emulator.faults.drop_after_commit(path="/tasks/claim")
    got = client.claim_task(task_type=name)
    assert got is not None and got.id == second  # the retry claimed the next one
    orphans = [
        t
        for t in client.list_tasks(status="claimed", task_type=name)
        if t.claimed_by == client.worker_id
    ]
    assert sorted(t.id for t in orphans) == sorted([first, second])


def test_lost_answer_on_progress_is_retried(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "p"})
    task = client.claim_task(task_type=name)
    assert task is not None
    emulator.faults.drop_after_commit(path="/tasks/*/progress")
    client.update_progress(task.id, 70)
    assert client.get_task(task.id).progress == 70


def test_lost_answer_on_register_is_retried(emulator: EmulatorServer, client: TaskManagerClient):
    emulator.faults.drop_after_commit(path="/task-types/register")
    registered = client.register_task_type("Contract.lost.register", "1", {"type": "object"})
    assert client.get_task_type("Contract.lost.register").id == registered.id


def test_deadlock_is_rolled_back_and_the_client_retry_completes_once(
    target, emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    client.create_task(name, {"channel_url": "deadlock"})
    task = client.claim_task(task_type=name)
    assert task is not None
    emulator.faults.deadlock(path="/tasks/*/complete")
    raw = target.raw(
        "POST", f"/tasks/{task.id}/complete", json={"worker_id": client.worker_id, "success": True}
    )
    body = raw.json()
    assert raw.status_code == 500 and sorted(body) == ["error", "success", "timestamp"]
    assert body["success"] is False and "SQLSTATE[40001]" in body["error"]
    row = client.get_task(task.id)  # rolled back: still ours, nothing recorded
    assert (row.status, row.claimed_by, row.attempts) == ("claimed", client.worker_id, 1)

    emulator.reset_requests()
    emulator.faults.deadlock(2, path="/tasks/*/complete")
    done = client.complete_task(task.id, {"ok": True})
    # Had a deadlocked attempt been applied, the next would meet "not in claimed state"
    # and be settled by reading the task back.
    assert (done.status, done.settled_by_read) == ("completed", False)
    statuses = [r.status for r in emulator.requests if r.path.endswith("/complete")]
    assert statuses == [500, 500, 200]
    assert client.get_task(task.id).result == {"ok": True}


def test_outage_then_recovery_on_same_port(
    emulator: EmulatorServer, target, fresh_type: Callable[..., TaskType]
):
    with target.client(retry_attempts=1) as client:
        name = fresh_type().name
        port = emulator.port
        with emulator.outage():
            assert emulator.is_up is False
            assert client.health_check() is False
            with pytest.raises(TaskManagerConnectionError):
                client.create_task(name, {"channel_url": "down"})
        assert emulator.port == port
        task_id = client.create_task(name, {"channel_url": "down"})
        assert client.get_task(task_id).status == "pending"


def test_outage_cuts_keep_alive_connections(emulator: EmulatorServer, target):
    with target.client(retry_attempts=0) as client:
        assert client.health_check() is True  # opens a pooled connection
        emulator.go_down()
        try:
            with pytest.raises(TaskManagerConnectionError):
                client.get_task(1)
        finally:
            emulator.come_back()


def test_hanging_server_times_out(emulator: EmulatorServer, target):
    emulator.faults.hang_next(2, path="/tasks/*")
    with target.client(timeout=0.3, retry_attempts=1) as client:
        started = time.monotonic()
        with pytest.raises(TaskManagerTimeoutError):
            client.get_task(1)
        assert time.monotonic() - started < 5
    emulator.faults.release_hangs()


def test_5xx_burst_is_retried(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    emulator.faults.fail_next(2, status=503, path="/tasks")
    assert isinstance(client.create_task(name, {"channel_url": "burst"}), int)
    posts = [r.status for r in emulator.requests if (r.method, r.path) == ("POST", "/tasks")]
    assert posts == [503, 503, 200]


def test_injected_429_storm_carries_retry_after_and_the_client_waits_it_out(
    emulator: EmulatorServer, target
):
    emulator.faults.fail_next(2, status=429, path="/tasks/*", headers={"Retry-After": "1"})
    with (
        target.client(retry_attempts=3, retry_deadline=10) as client,
        pytest.raises(TaskManagerNotFoundError),
    ):
        client.get_task(987654)
    answers = [r for r in emulator.requests if r.path == "/tasks/987654"]
    assert [r.status for r in answers] == [429, 429, 200]
    for refused, following in itertools.pairwise(answers):
        assert following.at - refused.at >= 0.95  # nothing sent before Retry-After ran out


def test_hold_after_commit_commits_then_answers_nothing_until_released(
    emulator: EmulatorServer, client: TaskManagerClient, fresh_type: Callable[..., TaskType]
):
    name = fresh_type().name
    emulator.faults.hold_after_commit(path="/tasks", method="POST")
    outcome: list[object] = []
    sender = threading.Thread(
        target=lambda: outcome.append(client.create_task(name, {"channel_url": "held"}))
    )
    sender.start()
    assert _eventually(lambda: any(r.status == "held" for r in emulator.requests))
    time.sleep(0.2)
    assert outcome == [] and sender.is_alive()  # committed, and the client still waits
    assert len(list(client.list_tasks(task_type=name))) == 1
    emulator.faults.release_hangs()
    sender.join(10)
    # The answer was dropped; the client's retry is deduplicated onto the same task.
    assert outcome == [task.id for task in client.list_tasks(task_type=name)]


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_html_gateway_page_is_protocol_error(emulator: EmulatorServer, client: TaskManagerClient):
    emulator.faults.fail_next(
        10, status=502, path="/tasks/*", body="<html><body><h1>502 Bad Gateway</h1></body></html>"
    )
    with pytest.raises(TaskManagerProtocolError, match="502 Bad Gateway") as info:
        client.get_task(5)
    assert info.value.status_code == 502


def test_latency_is_added(emulator: EmulatorServer, client: TaskManagerClient):
    emulator.faults.latency = 0.2
    started = time.monotonic()
    client.health_check()
    assert time.monotonic() - started >= 0.2


def test_rate_limit_429_shape_and_client_waits_retry_after():
    with EmulatorServer(rate_limit=2, rate_window=1.0) as server, server.client() as client:
        # The exact answer, seen from another client IP (the limit is per IP and path).
        raw = [
            server.app.handle("GET", "/api/tasks/1", {"x-api-key": server.api_key}, b"", "10.9.9.9")
            for _ in range(3)
        ]
        assert [r.status for r in raw] == [200, 200, 429]
        assert raw[0].headers["X-RateLimit-Remaining"] == "1"
        assert raw[2].headers["Retry-After"] == "1"
        body = json.loads(raw[2].body)
        assert "success" not in body and body["error"] == "Too Many Requests"
        assert (body["retry_after"], body["limit"], body["window"]) == (1, 2, 1)
        # The client: the third call in the window is refused, waits, then goes through.
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(TaskManagerNotFoundError):
                client.get_task(1)
        assert time.monotonic() - started >= 0.5
        assert [r.status for r in server.requests] == [200, 200, 429, 200]
        assert client.rate_limit is not None and client.rate_limit.limit == 2


def test_every_answer_carries_the_rate_limit_headers_when_the_limit_is_on():
    """Successes, application errors and the security layer's own answers (401, 413):
    a client can slow down from any of them before it is refused."""
    with EmulatorServer(rate_limit=100, max_body_bytes=100) as server:
        key = {"x-api-key": server.api_key}
        answers = {
            "ok": server.app.handle("GET", "/api/health", {}, b"", "10.1.1.1"),
            "404": server.app.handle("GET", "/api/nowhere", key, b"", "10.1.1.1"),
            "401": server.app.handle("GET", "/api/tasks/1", {}, b"", "10.1.1.1"),
            "413": server.app.handle("POST", "/api/tasks", key, b"x" * 200, "10.1.1.1"),
        }
        assert {name: answer.status for name, answer in answers.items()} == {
            "ok": 200,
            "404": 404,
            "401": 401,
            "413": 413,
        }
        for name, answer in answers.items():
            assert answer.headers.get("X-RateLimit-Limit") == "100", name
            assert "X-RateLimit-Remaining" in answer.headers, name


def test_request_too_large_413():
    with EmulatorServer(max_body_bytes=2000) as server, server.client() as client:
        client.register_task_type("Big", "1", {"type": "object"})
        with pytest.raises(TaskManagerRequestTooLargeError) as info:
            client.create_task("Big", {"blob": "x" * 5000})
        assert info.value.status_code == 413
        assert [r.status for r in server.requests if r.path == "/tasks"] == [413]
