"""Retries, back-off, deadlines, malformed answers and logging, with time injected."""

from __future__ import annotations

import logging
import random

import pytest
import requests
import responses

from taskmanager import (
    TaskManagerClient,
    TaskManagerConfig,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerServerError,
    TaskManagerTimeoutError,
    TaskManagerValidationError,
)
from taskmanager.transport import backoff_delay, parse_retry_after

from .conftest import BASE, KEY, FakeTime, err, ok

CREATED = ok({"id": "7", "type": "t", "status": "pending", "dedupe_key": "0" * 64})
RATE_LIMITED = {
    "error": "Too Many Requests",
    "message": "Rate limit exceeded. Please try again in 60 seconds.",
    "retry_after": 60,
    "limit": 100,
    "window": 60,
}


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_retried_with_exponential_backoff(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime, status: int
):
    for _ in range(3):
        mocked.post(f"{BASE}/tasks", status=status, body="<html>Bad Gateway</html>")
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 1}) == 7
    assert len(fake_time.sleeps) == 3
    for nominal, slept in zip([1, 2, 4], fake_time.sleeps, strict=True):
        assert nominal * 0.8 <= slept <= nominal * 1.2


def test_gateway_errors_exhausted_raise_protocol_error_with_snippet(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks", status=502, body="<html><h1>502 Bad Gateway</h1></html>")
    with pytest.raises(TaskManagerProtocolError) as info:
        client.create_task("t", {"a": 1})
    assert info.value.status_code == 502
    assert "<h1>502 Bad Gateway" in str(info.value)
    assert len(mocked.calls) == 4  # 1 + retry_attempts(3)


def test_gateway_error_with_json_body_is_server_error(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks", status=503, json=err("Service unavailable"))
    with pytest.raises(TaskManagerServerError):
        client.create_task("t", {"a": 1})


@pytest.mark.parametrize(
    ("status", "error_name"),
    [
        (400, "TaskManagerValidationError"),
        (401, "TaskManagerAuthError"),
        (404, "TaskManagerNotFoundError"),
        (409, "TaskManagerValidationError"),
        (413, "TaskManagerRequestTooLargeError"),
        (422, "TaskManagerValidationError"),
    ],
)
def test_4xx_never_retried(
    mocked: responses.RequestsMock,
    client: TaskManagerClient,
    fake_time: FakeTime,
    status: int,
    error_name: str,
):
    import taskmanager

    error_type: type[TaskManagerError] = getattr(taskmanager, error_name)
    mocked.post(f"{BASE}/tasks", status=status, json=err("no"))
    with pytest.raises(error_type) as info:
        client.create_task("t", {"a": 1})
    assert type(info.value) is error_type and info.value.status_code == status
    assert len(mocked.calls) == 1 and fake_time.sleeps == []


def test_429_waits_retry_after_header(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(
        f"{BASE}/tasks",
        status=429,
        json=RATE_LIMITED,
        headers={
            "Retry-After": "7",
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1795869205",
        },
    )
    mocked.post(
        f"{BASE}/tasks",
        json=CREATED,
        headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99"},
    )
    assert client.create_task("t", {"a": 1}) == 7
    assert fake_time.sleeps == [7.0]
    assert client.rate_limit is not None and client.rate_limit.remaining == 99


def test_429_without_header_uses_body_retry_after(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    short = {**RATE_LIMITED, "retry_after": 3}
    mocked.post(f"{BASE}/tasks", status=429, json=short)
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 1}) == 7
    assert fake_time.sleeps == [3.0]


def test_429_longer_than_deadline_raises_rate_limit_error_at_once(
    mocked: responses.RequestsMock, fake_time: FakeTime
):
    config = TaskManagerConfig(api_url=BASE, api_key=KEY, retry_deadline=30)
    client = TaskManagerClient(config, sleep=fake_time.sleep, clock=fake_time.clock)
    mocked.post(f"{BASE}/tasks", status=429, json=RATE_LIMITED, headers={"Retry-After": "60"})
    with pytest.raises(TaskManagerRateLimitError) as info:
        client.create_task("t", {"a": 1})
    assert info.value.retry_after == 60.0
    assert fake_time.sleeps == []  # no request before Retry-After


def test_connection_errors_retried_then_typed(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks", body=requests.ConnectionError("refused"))
    with pytest.raises(TaskManagerConnectionError, match="connection failed") as info:
        client.create_task("t", {"a": 1})
    assert not isinstance(info.value, TaskManagerTimeoutError)
    assert len(mocked.calls) == 4 and len(fake_time.sleeps) == 3


def test_timeout_retried_then_timeout_error(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks", body=requests.ReadTimeout("slow"))
    mocked.post(f"{BASE}/tasks", body=requests.ReadTimeout("slow"))
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 1}) == 7
    assert len(fake_time.sleeps) == 2


def test_truncated_chunked_answer_is_retried(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks", body=requests.exceptions.ChunkedEncodingError("IncompleteRead"))
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 1}) == 7


def test_ssl_error_not_retried(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks", body=requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(TaskManagerConnectionError, match="TLS"):
        client.create_task("t", {"a": 1})
    assert fake_time.sleeps == []


def test_deadline_caps_total_retry_time(mocked: responses.RequestsMock, fake_time: FakeTime):
    config = TaskManagerConfig(api_url=BASE, api_key=KEY, retry_attempts=10, retry_deadline=5)
    client = TaskManagerClient(
        config, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(1)
    )
    mocked.post(f"{BASE}/tasks", status=503, json=err("down"))
    with pytest.raises(TaskManagerServerError):
        client.create_task("t", {"a": 1})
    assert sum(fake_time.sleeps) <= 5
    assert len(mocked.calls) < 11


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("", "(empty body)"),
        ("<!DOCTYPE html><html>Hosting error</html>", "<!DOCTYPE html>"),
        ('{"success": true, "data": {"id": "7"', '{"success": true'),
        ("[1, 2, 3]", "[1, 2, 3]"),
        ('{"unexpected": "shape"}', "unexpected"),
    ],
)
def test_non_envelope_200_is_protocol_error(
    mocked: responses.RequestsMock, client: TaskManagerClient, body: str, fragment: str
):
    mocked.post(f"{BASE}/tasks", status=200, body=body)
    with pytest.raises(TaskManagerProtocolError) as info:
        client.create_task("t", {"a": 1})
    assert info.value.status_code == 200
    assert fragment in str(info.value)


def test_html_404_from_wrong_base_url_is_protocol_not_not_found(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.get(f"{BASE}/tasks/1", status=404, body="<html>Page not found</html>")
    with pytest.raises(TaskManagerProtocolError):
        client.get_task(1)


def test_wrong_id_type_in_answer_is_protocol_error(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks", json=ok({"id": "seven", "status": "pending"}))
    with pytest.raises(TaskManagerProtocolError, match="not an integer"):
        client.create_task("t", {"a": 1})


def test_logging_has_method_path_status_and_never_the_key(
    mocked: responses.RequestsMock, client: TaskManagerClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="taskmanager")
    mocked.post(f"{BASE}/tasks", status=503, json=err("down"))
    mocked.post(f"{BASE}/tasks", json=CREATED)
    client.create_task("t", {"a": 1})
    text = caplog.text
    assert "POST /tasks -> 503; retry 1/3" in text
    assert "POST /tasks -> 200" in text
    assert KEY not in text
    assert KEY not in repr(client) and KEY not in repr(client.config)


def test_backoff_delay_is_exponential_capped_and_jittered():
    rng = random.Random(3)
    delays = [backoff_delay(n, 1.0, 5.0, rng) for n in range(6)]
    for n, delay in enumerate(delays):
        nominal = min(5.0, 2**n)
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert len(set(delays)) == len(delays)


def test_parse_retry_after_forms():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("  ") is None and parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    when = parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now=1795867200.0)
    assert when == pytest.approx(30.0)


def test_request_body_not_json_refused_before_sending(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerValidationError, match="not valid JSON"):
        client.complete_task(1, {"when": object()})
    assert len(mocked.calls) == 0


def test_environment_proxy_and_ca_settings_read_once_at_construction(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used for a request here")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = TaskManagerClient(TaskManagerConfig.from_env({}, api_url=BASE, api_key=KEY))
    session = client._transport.session
    assert session.proxies["https"] == "http://proxy.internal:3128"
    assert session.verify == str(bundle)
    assert session.trust_env is False  # requests no longer rescans os.environ per request
    monkeypatch.setenv("HTTPS_PROXY", "http://changed:1")
    assert session.proxies["https"] == "http://proxy.internal:3128"


def test_verify_off_overrides_environment_bundle(monkeypatch, caplog):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with caplog.at_level(logging.WARNING, logger="taskmanager"):
        client = TaskManagerClient(TaskManagerConfig.from_env({}, api_url=BASE, verify_tls=False))
    assert client._transport.session.verify is False
    assert "verification is OFF" in caplog.text


@pytest.mark.parametrize(
    ("header", "expected"),
    [("INFINITY", None), ("nan", None), ("-5", 0.0), ("1e12", 86_400.0), ("", None)],
)
def test_retry_after_values_are_sanitised(header: str, expected):
    assert parse_retry_after(header) == expected


def test_infinite_rate_limit_headers_are_ignored(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/tasks",
        json=CREATED,
        headers={"X-RateLimit-Limit": "INFINITY", "X-RateLimit-Remaining": "nan"},
    )
    assert client.create_task("t", {"a": 1}) == 7
    assert client.rate_limit is not None and client.rate_limit.limit is None


DEADLOCK_TEXT = (
    "SQLSTATE[40001]: Serialization failure: 1213 Deadlock found when trying to get lock; "
    "try restarting transaction"
)
# The exact body the deployed server sends (docs/SERVER_BEHAVIOUR.md, under load).
DEADLOCK = {"success": False, "error": DEADLOCK_TEXT, "timestamp": 1795869146}
COMPLETED = ok({"id": "5", "status": "completed", "message": "Task completed"})


def test_deadlock_500_retried_then_succeeds_once(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks/5/complete", status=500, json=DEADLOCK)
    mocked.post(f"{BASE}/tasks/5/complete", json=COMPLETED)
    done = client.complete_task(5, {"ok": True})
    assert (done.id, done.status, done.settled_by_read) == (5, "completed", False)
    assert len(mocked.calls) == 2 and len(fake_time.sleeps) == 1
    assert 0.025 <= fake_time.sleeps[0] <= 0.075  # soon: rolled back, not overloaded


def test_a_deadlock_met_again_backs_off_as_usual(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    for _ in range(2):
        mocked.post(f"{BASE}/tasks/5/complete", status=500, json=DEADLOCK)
    mocked.post(f"{BASE}/tasks/5/complete", json=COMPLETED)
    assert client.complete_task(5, {"ok": True}).status == "completed"
    assert len(fake_time.sleeps) == 2 and fake_time.sleeps[0] < 0.1
    assert 1.6 <= fake_time.sleeps[1] <= 2.4  # the back-off's second step


@pytest.mark.parametrize(
    "body",
    [
        {"success": False, "message": DEADLOCK_TEXT, "timestamp": 1795869146},
        {
            "success": False,
            "error": "Internal error",
            "message": "Deadlock found when trying to get lock",
        },
    ],
)
def test_deadlock_text_in_message_field_also_retried(
    mocked: responses.RequestsMock, client: TaskManagerClient, body: dict[str, object]
):
    mocked.post(f"{BASE}/tasks", status=500, json=body)
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 1}) == 7
    assert len(mocked.calls) == 2


def test_deadlock_forever_is_server_error_after_configured_attempts(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    mocked.post(f"{BASE}/tasks/5/complete", status=500, json=DEADLOCK)
    with pytest.raises(TaskManagerServerError) as info:
        client.complete_task(5, {"ok": True})
    assert info.value.status_code == 500 and "Deadlock found" in str(info.value)
    assert len(mocked.calls) == 4  # 1 + retry_attempts(3)
    assert len(fake_time.sleeps) == 3


@pytest.mark.parametrize(
    "message",
    ["Internal server error", "SQLSTATE[HY000]: General error: 2006 MySQL server has gone away"],
)
def test_other_500_not_retried(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime, message: str
):
    mocked.post(f"{BASE}/tasks/5/complete", status=500, json=err(message))
    with pytest.raises(TaskManagerServerError):
        client.complete_task(5, {"ok": True})
    assert len(mocked.calls) == 1 and fake_time.sleeps == []


def test_deadlock_text_on_a_non_500_is_not_a_deadlock_retry(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks", status=400, json=err(DEADLOCK_TEXT))
    with pytest.raises(TaskManagerValidationError):
        client.create_task("t", {"a": 1})
    assert len(mocked.calls) == 1


def test_after_a_429_no_call_on_that_path_is_sent_before_its_retry_after(
    mocked: responses.RequestsMock, fake_time: FakeTime
):
    """The server counts one window per path: a 429 one call got holds every later call on
    that path (from any thread sharing the client), and only that path."""
    config = TaskManagerConfig(api_url=BASE, api_key=KEY, retry_deadline=30)
    client = TaskManagerClient(config, sleep=fake_time.sleep, clock=fake_time.clock)
    mocked.post(f"{BASE}/tasks", status=429, json=RATE_LIMITED, headers={"Retry-After": "60"})
    with pytest.raises(TaskManagerRateLimitError):
        client.create_task("t", {"a": 1})
    mocked.get(f"{BASE}/tasks/3", json=ok({"items": [], "count": 0}))
    with pytest.raises(TaskManagerError):  # another path: sent at once (unknown id -> 404)
        client.get_task(3)
    assert len(mocked.calls) == 2 and fake_time.sleeps == []
    with pytest.raises(TaskManagerRateLimitError) as refused:  # same path: not even sent
        client.create_task("t", {"a": 2})
    assert len(mocked.calls) == 2 and refused.value.retry_after == pytest.approx(60.0)
    fake_time.now += 45
    mocked.post(f"{BASE}/tasks", json=CREATED)
    assert client.create_task("t", {"a": 3}) == 7  # 15 s left: waited out, then sent
    assert fake_time.sleeps == [pytest.approx(15.0)]


def test_rate_limit_figures_are_kept_for_shared_paths_not_per_task(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "50"}
    for task_id in (1, 2, 3):
        mocked.post(
            f"{BASE}/tasks/{task_id}/complete",
            json=ok({"id": str(task_id), "status": "completed"}),
            headers=headers,
        )
        client.complete_task(task_id, {"ok": True})
    mocked.get(f"{BASE}/tasks", json=ok({"items": [], "count": 0}), headers=headers)
    list(client.list_tasks(status="pending"))
    assert set(client._calls.requester.rate_limits) == {"/tasks"}  # not one entry per task
    assert client.rate_limit_for("/tasks") is not None and client.rate_limit is not None


def test_retries_are_logged_at_debug_while_the_caller_says_so(
    mocked: responses.RequestsMock, client: TaskManagerClient, caplog: pytest.LogCaptureFixture
):
    """The bridge's daemon says "outage began" once; each retry of each request during
    it would be one more warning beside it (30 in 40 s, measured)."""
    caplog.set_level(logging.DEBUG, logger="taskmanager")
    quiet = [True]
    client.quiet_retries_while(lambda: quiet[0])
    for _ in range(2):
        mocked.post(f"{BASE}/tasks", status=503, json=err("down"))
        mocked.post(f"{BASE}/tasks", json=CREATED)
        client.create_task("t", {"a": 1})
        quiet[0] = False
    retries = [r for r in caplog.records if "; retry 1/3" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.DEBUG, logging.WARNING]
