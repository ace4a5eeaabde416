"""The transport's decisions as pure functions: no network, no clock, no sleeping."""

from __future__ import annotations

import random

import pytest

from taskmanager import (
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerServerError,
    TaskManagerValidationError,
)
from taskmanager.protocol import (
    ATTEMPTS_EXHAUSTED,
    DEADLINE_PASSED,
    Answer,
    RateLimitInfo,
    RetryPolicy,
    decide_retry,
    interpret,
    rate_limit_info,
)

POLICY = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=30.0, deadline=60.0)


def answer(status: int, body: dict[str, object] | None, **headers: str) -> Answer:
    return Answer(status, body, "" if body is None else "{...}", headers)


def judge(status: int, body: dict[str, object] | None, **headers: str):
    return interpret(answer(status, body, **headers), None, method="POST", url="u", now=0.0)


def test_success_gives_data():
    outcome = judge(200, {"success": True, "data": {"id": 1}})
    assert (outcome.data, outcome.error, outcome.label) == ({"id": 1}, None, "200")


def test_nothing_predicate_turns_an_error_into_no_data():
    outcome = interpret(
        answer(500, {"success": False, "error": "There is no active transaction"}),
        lambda status, message: status == 500 and "no active transaction" in message,
        method="POST",
        url="u",
    )
    assert outcome.error is None and outcome.data is None


@pytest.mark.parametrize(("status", "retryable"), [(502, True), (503, True), (500, False)])
def test_non_envelope_is_protocol_error_retried_only_for_gateway_statuses(
    status: int, retryable: bool
):
    outcome = judge(status, None)
    assert isinstance(outcome.error, TaskManagerProtocolError)
    assert outcome.retryable is retryable


def test_rate_limit_carries_the_servers_wait():
    outcome = judge(429, {"error": "Too Many Requests", "retry_after": 60}, **{"Retry-After": "7"})
    assert isinstance(outcome.error, TaskManagerRateLimitError)
    assert (outcome.retryable, outcome.retry_after) == (True, 7.0)


def test_http_date_retry_after_is_read_against_the_given_now():
    outcome = interpret(
        answer(
            429, {"error": "Too Many Requests"}, **{"Retry-After": "Thu, 01 Jan 1970 00:00:30 GMT"}
        ),
        None,
        method="GET",
        url="u",
        now=10.0,
    )
    assert outcome.retry_after == 20.0


def test_client_errors_and_plain_500_not_retryable():
    assert not judge(400, {"success": False, "error": "Validation failed"}).retryable
    plain = judge(500, {"success": False, "error": "Something broke"})
    assert isinstance(plain.error, TaskManagerServerError) and not plain.retryable
    assert isinstance(
        judge(400, {"success": False, "error": "x"}).error, TaskManagerValidationError
    )


def test_retry_backs_off_exponentially_within_jitter():
    delays = [decide_retry(POLICY, n, 0.0, None, random.Random(1)).delay for n in range(3)]
    for nominal, delay in zip([1, 2, 4], delays, strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2


def test_a_first_deadlock_is_resent_soon_and_a_second_backs_off():
    body = {"success": False, "error": "SQLSTATE[40001]: Serialization failure: 1213 Deadlock"}
    outcome = judge(500, body)
    assert outcome.retryable and outcome.deadlock
    first = decide_retry(POLICY, 0, 0.0, None, random.Random(1), outcome.deadlock)
    assert first.retry and 0.025 <= first.delay <= 0.075
    second = decide_retry(POLICY, 1, 0.1, None, random.Random(1), outcome.deadlock)
    assert 1.6 <= second.delay <= 2.4  # the back-off's second step: it keeps meeting
    assert not judge(503, {"success": False, "error": "down"}).deadlock


def test_server_wait_beats_backoff():
    decision = decide_retry(POLICY, 0, 0.0, 12.0, random.Random(1))
    assert (decision.retry, decision.delay) == (True, 12.0)


def test_gives_up_after_the_configured_retries():
    decision = decide_retry(POLICY, 3, 0.0, None, random.Random(1))
    assert (decision.retry, decision.reason) == (False, ATTEMPTS_EXHAUSTED)


def test_gives_up_when_the_wait_would_pass_the_deadline():
    decision = decide_retry(POLICY, 0, 55.0, 10.0, random.Random(1))
    assert (decision.retry, decision.delay, decision.reason) == (False, 10.0, DEADLINE_PASSED)


def test_rate_limit_headers_read_when_present():
    info = rate_limit_info({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "nan"})
    assert info == RateLimitInfo(100, None, None)
    assert rate_limit_info({"Content-Type": "application/json"}) is None
