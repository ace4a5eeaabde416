"""Type names on the wire, exactly as the server matches them, with every transport.

The server matches ``/task-types/{name}`` without percent-decoding: a name must go out
raw wherever a URL path allows its characters, encoded only where it must. Both HTTP
libraries rewrite URLs on their own (requests re-quotes, yarl normalises), so what goes
on the wire is read from the socket: the request line a real HTTP server received.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from bridge import BridgeConfig, BridgeConfigError, LocalQueue, ValidationError
from bridge.ops.operations import Operations
from taskmanager import TaskManagerConfig, TaskManagerNotFoundError
from taskmanager.emulator import EmulatorServer

from ..both_clients import CLIENT_KINDS, LOOP, STDLIB, make_client
from ..scripted_server import ScriptedServer

pytestmark = pytest.mark.integration

KINDS = (*CLIENT_KINDS, LOOP, STDLIB)
# Every character RFC 3986 lets stand raw in a path segment besides letters and digits.
RAW = ":@+()',;=*!$&~-._"
# What must be encoded: space, "/", "?", "#", "%" and non-ASCII (UTF-8, then %XX).
ENCODED = ("a b/c?d#e%f\u00e9", "a%20b%2Fc%3Fd%23e%25f%C3%A9")


@pytest.mark.parametrize("kind", KINDS)
def test_the_request_line_carries_the_name_as_the_server_matches_it(kind: str):
    raw_name = f"Adv{RAW}end"
    with ScriptedServer() as server:
        config = TaskManagerConfig(api_url=server.url, api_key="k", retry_attempts=0)
        with make_client(kind, config) as client:
            for name in (raw_name, ENCODED[0]):
                with pytest.raises(TaskManagerNotFoundError):  # unscripted: 404
                    client.get_task_type(name)
        sent = [r.path for r in server.calls("GET")]
    assert sent == [f"/api/task-types/{raw_name}", f"/api/task-types/{ENCODED[1]}"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_name_with_colon_and_plus_is_claimable_by_name(kind: str):
    name = f"Adv:colon+plus({RAW}){uuid.uuid4().hex[:6]}"
    with EmulatorServer() as server:
        config = TaskManagerConfig(api_url=server.url, api_key=server.api_key, worker_id="w")
        with server.client() as admin:
            admin.register_task_type(name, "1", {"type": "object"})
            created = admin.create_task(name, {"n": 1})
        with make_client(kind, config) as client:  # a new client: it looks the name up
            claimed = client.claim_task(task_type=name)
    assert claimed is not None and claimed.id == created and claimed.type == name


def test_the_bridge_refuses_to_register_or_claim_a_name_that_can_never_be_claimed(tmp_path):
    db = str(tmp_path / "q.db")
    with LocalQueue(db, migrate=True) as queue:
        with pytest.raises(ValidationError, match="task type name 'scrape videos'"):
            queue.register_task_type("scrape videos", "1", {"type": "object"})
        assert queue.outbox() == []
        queue.register_task_type("scrape:videos+v2", "1", {"type": "object"})
    bad = [{"name": "caf\u00e9", "version": "1", "param_schema": {"type": "object"}}]
    with Operations.open(BridgeConfig.load(env={}, db_url=db)) as operations:
        with pytest.raises(ValidationError, match="task type name 'caf\u00e9'"):
            list(operations.register_types(bad, None, datetime.now(timezone.utc)))
        assert len(operations.store.outbox_entries()) == 1  # the good one above only
    with pytest.raises(BridgeConfigError, match=r"types.*'caf\u00e9/menu'"):
        BridgeConfig.load(env={}, db_url=db, types=["ok:name", "caf\u00e9/menu"])
    assert BridgeConfig.load(env={}, db_url=db, types=["ok:name+1"]).types == ["ok:name+1"]
