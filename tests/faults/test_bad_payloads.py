"""Bad results end to end: worker -> local queue -> outbox -> daemon -> emulator over HTTP.

What cannot be stored is refused at ``complete()`` with a ``ValidationError``
and nothing is written; what can be stored but not delivered (too large for the
server, nested deeper than its PHP decoder takes) ends ``dead`` with the
server's reason, without holding up the rows behind it; unicode of every kind
arrives intact.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge import BridgeConfig, LocalQueue, ValidationError
from bridge.daemon.jobs import DaemonJobs
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

pytestmark = pytest.mark.integration
TYPE = "payload.work"
UNICODE = {
    "text": "emoji \U0001f600, CJK \u6f22\u5b57, RTL \u05e9\u05dc\u05d5\u05dd, NUL \u0000, end",
    "\u043a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447\u0435\u043d\u0438\u0435",
    "lone surrogate escaped": "\\ud800",
}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_bad_results_are_refused_or_end_dead_and_the_rest_gets_through(tmp_path):
    db = str(tmp_path / "q.db")
    upgrade(db)
    with EmulatorServer(max_body_bytes=50_000) as server, LocalQueue(db) as queue:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        ids = [admin.create_task(TYPE, {"n": n}) for n in range(5)]
        config = BridgeConfig.load(env={}, db_url=db, types=[TYPE], prefetch=5)
        bridge = DaemonJobs(queue.store, server.client(), config)
        assert bridge.pull_tick(queue.clock()) == 5
        deep, huge, unicode, nan, unencodable = (queue.dequeue() for _ in range(5))

        # Refused before anything is stored: the task stays held, no outbox row.
        refusals = [
            (deep, nested(100_000), "nested too deeply"),
            (nan, {"x": float("nan")}, r"^results\.x: nan is not JSON"),
            (unencodable, {"s": {1, 2}}, r"^results\.s: set is not JSON"),
        ]
        for task, result, message in refusals:
            with pytest.raises(ValidationError, match=message):
                queue.complete(task, result)
            assert queue.get(task.id).status == "running"
        assert queue.outbox(None, 10) == []

        # Stored, then refused by the server: dead with its reason.
        queue.complete(deep, nested(600))  # PHP's json_decode stops at 512 levels
        queue.complete(huge, {"blob": "x" * 60_000})  # storable, above the body limit (413)
        # Delivered, behind the two that cannot be.
        queue.complete(unicode, UNICODE)
        queue.complete(nan, {"x": None})
        queue.fail(unencodable, "failed: \u2717 \U0001f4a5")
        for _ in range(3):
            bridge.push_tick(queue.clock())

        dead = {row.remote_id: row.last_error or "" for row in queue.outbox("dead", 10)}
        assert set(dead) == {deep.remote_id, huge.remote_id}
        assert "Invalid JSON" in dead[deep.remote_id]
        assert "413" in dead[huge.remote_id] or "Too Large" in dead[huge.remote_id]
        assert queue.outbox("pending", 10) == []
        assert len(queue.outbox("delivered", 10)) == 3
        remote = {task_id: admin.get_task(task_id) for task_id in ids}
        assert remote[unicode.remote_id].result == UNICODE
        assert remote[nan.remote_id].result == {"x": None}
        assert remote[unencodable.remote_id].error_message == "failed: \u2717 \U0001f4a5"
        # What the server refused is still claimed there, and kept here with the result.
        assert remote[deep.remote_id].status == "claimed"
        assert queue.get(huge.id).result == {"blob": "x" * 60_000}
