"""The emulator's route table, driven through ``EmulatorApp.handle`` (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskmanager.emulator import EmulatorApp, EmulatorSettings, EmulatorStore

KEY = {"x-api-key": "dev"}


@pytest.fixture
def app() -> EmulatorApp:
    return EmulatorApp(
        EmulatorSettings(quirks=False), EmulatorStore(clock=lambda: 1000.0), lambda: 1000.0
    )


def call(app: EmulatorApp, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    response = app.handle(method, "/api" + path, KEY, raw, "127.0.0.1")
    return response.status, json.loads(response.body)


def test_path_known_but_method_not_is_endpoint_not_found(app: EmulatorApp):
    assert call(app, "DELETE", "/tasks") == (
        404,
        {"success": False, "error": "Endpoint not found", "timestamp": 1000},
    )


def test_first_matching_route_wins(app: EmulatorApp):
    """POST /task-types/register registers; GET of the same path is a type named "register"."""
    status, registered = call(
        app,
        "POST",
        "/task-types/register/",
        {"name": "register", "version": "1", "param_schema": {"type": "object"}},
    )
    assert status == 200 and registered["data"]["created"] is True
    status, got = call(app, "GET", "/task-types/register")
    assert status == 200 and got["data"]["items"][0]["name"] == "register"


def test_handlers_get_query_and_path_values(app: EmulatorApp):
    call(
        app,
        "POST",
        "/task-types/register",
        {"name": "T", "version": "1", "param_schema": {"type": "object"}},
    )
    assert call(app, "GET", "/task-types?active_only=1")[1]["data"]["count"] == 1
    _, created = call(app, "POST", "/tasks", {"type": "T", "params": {"a": 1}})
    task_id = int(created["data"]["id"])
    assert call(app, "GET", f"/tasks/{task_id}")[1]["data"]["items"][0]["id"] == task_id
    assert call(app, "GET", "/tasks?limit=x")[0] == 400
    assert call(app, "GET", "/tasks?type=T&limit=1")[1]["data"]["count"] == 1


def too_long(column: str) -> dict[str, Any]:
    """The real server's answer when MariaDB refuses a value over its TEXT column's size."""
    return {
        "success": False,
        "error": f"SQLSTATE[22001]: String data, right truncated: 1406 Data too long for "
        f"column '{column}' at row 1",
        "timestamp": 1000,
    }


def test_a_type_name_is_matched_without_percent_decoding(app: EmulatorApp):
    register = {"name": "Adv:colon+plus", "version": "1", "param_schema": {"type": "object"}}
    call(app, "POST", "/task-types/register", register)
    status, raw = call(app, "GET", "/task-types/Adv:colon+plus")
    assert status == 200 and raw["data"]["items"][0]["name"] == "Adv:colon+plus"
    for encoded in ("Adv%3Acolon%2Bplus", "Adv:colon%2Bplus", "Adv%3Acolon+plus"):
        assert call(app, "GET", f"/task-types/{encoded}") == (
            200,
            {
                "success": True,
                "message": "Success",
                "data": {"items": [], "count": 0},
                "timestamp": 1000,
            },
        )


def test_stored_values_over_65535_bytes_are_refused_as_the_server_does(app: EmulatorApp):
    register = {"name": "T", "version": "1", "param_schema": {"type": "object"}}
    call(app, "POST", "/task-types/register", register)
    assert call(app, "POST", "/tasks", {"type": "T", "params": {"s": "p" * 60_000}})[0] == 200
    refused = call(app, "POST", "/tasks", {"type": "T", "params": {"s": "p" * 70_000}})
    assert refused == (500, too_long("params_json"))
    # 12,000 "é" are 24,008 bytes stored: the limit counts UTF-8 bytes, not characters.
    wide = call(app, "POST", "/tasks", {"type": "T", "params": {"s": "\u00e9" * 33_000}})
    assert wide == (500, too_long("params_json"))

    _, claimed = call(app, "POST", "/tasks/claim", {"worker_id": "w", "task_type_id": 1})
    task_id = claimed["data"]["id"]
    big = {"worker_id": "w", "success": True, "result": {"r": "r" * 70_000}}
    assert call(app, "POST", f"/tasks/{task_id}/complete", big) == (500, too_long("result_json"))
    long_error = {"worker_id": "w", "success": False, "error": "e" * 70_000}
    assert call(app, "POST", f"/tasks/{task_id}/complete", long_error) == (
        500,
        too_long("error_message"),
    )
    task = call(app, "GET", f"/tasks/{task_id}")[1]["data"]["items"][0]
    assert task["status"] == "claimed" and task["result"] is None
    fits = {"worker_id": "w", "success": True, "result": {"r": "r" * 60_000}}
    assert call(app, "POST", f"/tasks/{task_id}/complete", fits)[0] == 200
