"""The server's limits, known to the client: stored sizes, the "Data too long" 500, type names.

The server keeps params, a result and a failure's error text in MariaDB TEXT columns
(65,535 bytes); over that its insert fails with a 500 that no resend can cure. A type
name is matched in the URL path without percent-decoding.
"""

from __future__ import annotations

import json

import pytest
import responses

from taskmanager import (
    TaskManagerClient,
    TaskManagerDataTooLongError,
    TaskManagerServerError,
    TaskManagerValidationError,
    php_json,
)
from taskmanager.protocol import Answer, interpret
from taskmanager.validation import (
    STORED_MAX_BYTES,
    check_stored_size,
    check_type_name,
    fit_error_text,
    stored_size,
    type_name_segment,
)

from .conftest import BASE, FakeTime, err, ok

pytestmark = pytest.mark.unit

TOO_LONG = (
    "SQLSTATE[22001]: String data, right truncated: 1406 Data too long for column "
    "'result_json' at row 1"
)


def test_stored_size_is_the_servers_compact_encoding_in_utf8_bytes():
    assert STORED_MAX_BYTES == 65_535
    # As measured on the server: 12,000 "é" are 24,008 bytes ({"t":"..."}: 8 bytes around).
    assert stored_size({"t": "\u00e9" * 12_000}) == 24_008
    value = {"url": "https://a/b", "n": 1.0, "list": {}, "sep": "\u2028"}
    assert (
        stored_size(value)
        == len(php_json(value).encode())
        == len('{"url":"https://a/b","n":1,"list":[],"sep":"\\u2028"}')
    )


def test_a_value_over_the_limit_is_refused_naming_field_size_and_limit():
    check_stored_size({"blob": "x" * 60_000}, "params", "params_json")  # fits
    with pytest.raises(TaskManagerDataTooLongError) as refused:
        check_stored_size({"blob": "x" * 70_000}, "results", "result_json")
    error = refused.value
    assert isinstance(error, TaskManagerValidationError)
    assert error.status_code is None
    assert (error.column, error.size, error.limit) == ("result_json", 70_011, 65_535)
    assert error.message.startswith("results: 70,011 bytes")
    assert "65,535" in error.message and "result_json" in error.message


def test_a_long_error_text_is_cut_to_fit_with_a_marker_never_refused():
    assert fit_error_text("short") == "short"
    exact = "e" * STORED_MAX_BYTES
    assert fit_error_text(exact) == exact
    long_text = "\u20ac" * 30_000  # 3 bytes each: 90,000 bytes, cut inside no character
    cut = fit_error_text(long_text)
    assert len(cut.encode()) <= STORED_MAX_BYTES
    assert cut.startswith("\u20ac" * 1000)
    assert cut.endswith("[cut: the error text was 90,000 bytes; the server stores 65,535]")
    assert fit_error_text(cut) == cut


def test_the_servers_data_too_long_500_is_a_permanent_typed_error():
    outcome = interpret(
        Answer(500, {"success": False, "error": TOO_LONG}, "", {}),
        None,
        method="POST",
        url=f"{BASE}/tasks/3/complete",
    )
    assert isinstance(outcome.error, TaskManagerDataTooLongError)
    assert isinstance(outcome.error, TaskManagerValidationError)
    assert not isinstance(outcome.error, TaskManagerServerError)
    assert outcome.retryable is False
    assert outcome.error.column == "result_json" and outcome.error.status_code == 500


def test_any_other_500_stays_a_server_error():
    outcome = interpret(
        Answer(500, {"success": False, "error": "boom"}, "", {}), None, method="GET", url=BASE
    )
    assert type(outcome.error) is TaskManagerServerError


def test_client_refuses_oversize_params_and_result_before_sending(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerDataTooLongError, match=r"^params: 70,01\d bytes"):
        client.create_task("t", {"blob": "x" * 70_000})
    with pytest.raises(TaskManagerDataTooLongError, match=r"^result: 70,01\d bytes"):
        client.complete_task(5, {"blob": "x" * 70_000}, worker_id="w-1")
    assert len(mocked.calls) == 0


def test_client_sends_a_failure_with_its_error_cut_to_fit(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(f"{BASE}/tasks/5/complete", json=ok({"id": "5", "status": "pending (retry)"}))
    client.fail_task(5, "Traceback: " + "y" * 100_000, worker_id="w-1")
    sent = json.loads(mocked.calls[0].request.body)
    assert len(sent["error"].encode()) <= STORED_MAX_BYTES
    assert sent["error"].startswith("Traceback: yyy") and "[cut: " in sent["error"]


def test_the_servers_500_is_raised_once_and_not_retried(
    mocked: responses.RequestsMock, client: TaskManagerClient, fake_time: FakeTime
):
    too_long = TOO_LONG.replace("result_json", "params_json")
    mocked.post(f"{BASE}/tasks", status=500, json=err(too_long))
    with pytest.raises(TaskManagerDataTooLongError) as refused:
        client.create_task("t", {"a": 1})
    assert refused.value.column == "params_json"
    assert len(mocked.calls) == 1 and fake_time.sleeps == []


PCHAR_NAME = "Adv:colon+plus@at(p)'q,c;s=e*s!d$a&m~t-._9"


def test_type_names_go_raw_where_a_path_allows_and_encoded_only_where_it_must():
    assert type_name_segment(PCHAR_NAME) == PCHAR_NAME
    assert type_name_segment("a b/c?d#e%f\u00e9") == "a%20b%2Fc%3Fd%23e%25f%C3%A9"


@pytest.mark.parametrize(
    "name", ["a b", "a/b", "a?b", "a#b", "100%", "caf\u00e9", "tab\t", ".", "..", ""]
)
def test_register_refuses_a_name_the_server_can_never_look_up(
    name: str, mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerValidationError, match="task type name"):
        check_type_name(name)
    with pytest.raises(TaskManagerValidationError, match="task type name"):
        client.register_task_type(name, "1", {"type": "object"})
    assert len(mocked.calls) == 0


def test_register_accepts_every_name_made_of_path_characters(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/task-types/register",
        json=ok({"id": "4", "name": PCHAR_NAME, "version": "1", "created": True}),
    )
    assert client.register_task_type(PCHAR_NAME, "1", {"type": "object"}).id == 4
