"""The daemon's jobs, called as tick(now) against the emulator over real HTTP, on both databases."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.ops.operations import Operations
from bridge.storage.outbox import append_for_task
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.client import HttpLibrary
from taskmanager.emulator import EmulatorServer

from .conftest import Clock
from .helpers import bridge_cli, most_at_once

TYPE = "t.work"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@dataclass
class Rig:
    server: EmulatorServer
    queue: LocalQueue
    bridge: DaemonJobs
    clock: Clock
    admin: TaskManagerClient  # another client: seeds tasks, inspects the server

    def create(self, count: int, start: int = 0) -> list[int]:
        return [self.admin.create_task(TYPE, {"n": i}) for i in range(start, start + count)]

    def claims(self) -> int:
        return self.server.request_counts()["POST /tasks/claim"]


def make_bridge(
    queue: LocalQueue,
    server: EmulatorServer,
    clock: Clock,
    retry_attempts: int = 0,
    http: HttpLibrary = "stdlib",  # the daemon's own (http = "auto"): bursts in flight together
    **settings,
) -> DaemonJobs:
    values = {
        "types": [TYPE],
        "prefetch": 5,
        "workers": 2,
        "default_task_seconds": 1.0,
        "poll_min_seconds": 0.5,
        "poll_max_seconds": 8.0,
        **settings,
    }
    config = BridgeConfig.load(env={}, db_url=queue.config.db_url, **values)
    client = TaskManagerClient(
        TaskManagerConfig.from_env(
            {},
            api_url=server.url,
            api_key=server.api_key,
            worker_id="bridge-under-test",
            retry_attempts=retry_attempts,
            backoff_base=0.01,
            timeout=2,
        ),
        now=clock,
        clock=lambda: clock.now.timestamp(),  # the client's waits (Retry-After) on our time
        http=http,
    )
    return DaemonJobs(queue.store, client, config)


@pytest.fixture
def rig(migrated_url: str, clock: Clock) -> Iterator[Rig]:
    with (
        EmulatorServer() as server,
        LocalQueue(migrated_url, clock=clock) as queue,
        server.client() as admin,
    ):
        admin.register_task_type(TYPE, "1", SCHEMA)
        yield Rig(server, queue, make_bridge(queue, server, clock), clock, admin)


def test_claims_and_deliveries_go_out_together_from_the_ticking_thread_alone(
    migrated_url: str, clock: Clock
):
    """On the http.client transport (the daemon's default) a burst's requests are in
    flight at once with no thread of their own: one wake-up may bring several answers,
    and no thread waits for another to hand over the GIL."""
    with (
        EmulatorServer(service_seconds=0.1) as server,  # each request held 100 ms
        LocalQueue(migrated_url, clock=clock) as queue,
        server.client() as admin,
    ):
        admin.register_task_type(TYPE, "1", SCHEMA)
        created = [admin.create_task(TYPE, {"n": n}) for n in range(8)]
        bridge = make_bridge(queue, server, clock, connections=4, prefetch=8, workers=4)
        server.reset_requests()
        before = set(threading.enumerate())  # other tests' bridges may have left theirs
        assert bridge.pull_tick(clock.now) == 8
        for task in iter(queue.dequeue, None):
            queue.complete(task, {"n": task.params["n"]})
        assert bridge.push_tick(clock.now) == 8
        names = {thread.name for thread in set(threading.enumerate()) - before}
        bridge.close()
        assert not any(name.startswith(("bridge-claim", "bridge-push")) for name in names)
        assert most_at_once(server.requests, "/tasks/claim") == 4
        assert most_at_once(server.requests, "/tasks/*/complete") == 4
        assert {admin.get_task(i).status for i in created} == {"completed"}


def test_pull_fills_to_prefetch_then_as_room_appears(rig: Rig):
    rig.create(8)
    assert rig.bridge.pull_tick(rig.clock.now) == 5
    assert rig.queue.status().tasks == {(TYPE, "queued"): 5}
    claimed = [t for t in rig.admin.list_tasks(status="claimed")]
    assert len(claimed) == 5 and {t.claimed_by for t in claimed} == {rig.bridge.worker_id}
    assert rig.bridge.pull_tick(rig.clock.now) == 0  # no room
    for _ in range(3):
        rig.queue.complete(rig.queue.dequeue(), {"ok": True})
    assert rig.bridge.pull_tick(rig.clock.now) == 3


def _seconds_until_next_claim(rig: Rig, step: float = 0.25) -> float:
    """Tick every ``step`` seconds of the injected clock until the bridge asks for work."""
    asked, waited = rig.claims(), 0.0
    while rig.claims() == asked:
        assert waited < 60, "the bridge stopped asking for work"
        rig.clock.advance(step)
        waited += step
        rig.bridge.pull_tick(rig.clock.now)
    return waited


def test_watching_idle_bridge_probes_within_budget_and_claims_new_work_at_the_next_look(rig: Rig):
    """One list request a second covers the type; blind claims (for expired leases) come
    at the probe interval: max(poll_max_seconds, 60 s x types / 10 % of 100)."""
    assert rig.bridge.pull_tick(rig.clock.now) == 0  # nothing seen: the first probe
    looks = rig.server.request_counts()["GET /tasks"]
    idle = [_seconds_until_next_claim(rig) for _ in range(3)]
    assert idle == [8.0, 8.0, 8.0]
    assert rig.server.request_counts()["GET /tasks"] - looks in range(22, 26)  # ~1 a second
    (remote_id,) = rig.create(1)
    asked = rig.claims()
    rig.clock.advance(1.0)  # the next look sees it, and exactly one claim takes it
    assert rig.bridge.pull_tick(rig.clock.now) == 1
    assert rig.claims() == asked + 1
    assert rig.queue.store.get_task_by_remote_id(remote_id) is not None


def test_adaptive_polling_backs_off_when_idle(rig: Rig):
    rig.bridge = make_bridge(rig.queue, rig.server, rig.clock, watch_interval_seconds=0)
    config = rig.bridge.config
    assert (config.poll_min_seconds, config.poll_max_seconds) == (0.5, 8.0)
    assert rig.bridge.pull_tick(rig.clock.now) == 0
    asked = rig.claims()
    assert rig.bridge.pull_tick(rig.clock.now) == 0
    assert rig.claims() == asked  # not due yet
    idle = [_seconds_until_next_claim(rig) for _ in range(6)]
    assert idle == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # doubling from poll_min up to poll_max
    rig.create(1)
    assert _seconds_until_next_claim(rig) <= 8.0
    assert rig.queue.status().tasks == {(TYPE, "queued"): 1}
    # Work came: ask again at once, and the idle doubling starts over from poll_min.
    asked = rig.claims()
    rig.bridge.pull_tick(rig.clock.now)
    assert rig.claims() > asked, "no immediate claim after work appeared"
    after_work = [_seconds_until_next_claim(rig) for _ in range(3)]
    assert after_work == [1.0, 2.0, 4.0], after_work


def test_claim_limit_keeps_claims_startable_within_the_lease(migrated_url: str, clock: Clock):
    with (
        EmulatorServer() as server,
        LocalQueue(migrated_url, clock=clock) as queue,
        server.client() as admin,
    ):
        admin.register_task_type(TYPE, "1", SCHEMA)
        for i in range(12):
            admin.create_task(TYPE, {"n": i})
        bridge = make_bridge(
            queue,
            server,
            clock,
            workers=1,
            prefetch=20,
            lease_seconds=300,
            lease_margin_seconds=30,
            default_task_seconds=100,
        )
        assert bridge.claim_limit(TYPE) == 2  # 1 worker x 270 s usable / 100 s per task
        assert bridge.pull_tick(clock.now) == 2
        # What is queued counts against the limit: nothing more while 2 wait.
        assert bridge.claim_limit(TYPE) == 0
        task = queue.dequeue()
        assert bridge.claim_limit(TYPE) == 1  # one left the queue (running now)
        # A measured duration replaces the default: 30 s per task -> 9 startable.
        clock.advance(30)
        queue.complete(task, {"ok": True})
        assert queue.store.recent_duration(TYPE) == 30
        assert bridge.claim_limit(TYPE) == 9 - 1  # one still queued
        bridge._next_pull.clear()
        assert bridge.pull_tick(clock.now) == 8
        assert queue.status().tasks == {(TYPE, "queued"): 9, (TYPE, "done"): 1}


def test_pull_pauses_while_outbox_is_behind(migrated_url: str, clock: Clock):
    with EmulatorServer() as server, LocalQueue(migrated_url, clock=clock) as queue:
        bridge = make_bridge(queue, server, clock, outbox_pause_rows=2)
        for i in range(3):
            queue.create_remote_task(TYPE, {"n": i})
        assert bridge.pull_tick(clock.now) == 0
        assert server.request_counts()["POST /tasks/claim"] == 0


def test_completion_reaches_the_server(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    task = rig.queue.dequeue()
    rig.queue.progress(task, 50, "half")
    assert rig.bridge.push_tick(rig.clock.now) == 1
    assert rig.admin.get_task(remote_id).progress == 50
    rig.queue.complete(task, {"ideas": 7})
    assert rig.bridge.push_tick(rig.clock.now) == 1
    remote = rig.admin.get_task(remote_id)
    assert (remote.status, remote.result) == ("completed", {"ideas": 7})
    assert {e.status for e in rig.queue.outbox()} == {"delivered"}


def test_failure_reaches_the_server_as_retry(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.queue.fail(rig.queue.dequeue(), ValueError("bad page"))
    rig.bridge.push_tick(rig.clock.now)
    remote = rig.admin.get_task(remote_id)
    assert (remote.status, remote.error_message) == ("pending", "ValueError: bad page")
    [row] = rig.queue.outbox()
    assert row.status == "delivered" and "pending (retry)" in (row.last_error or "")


def test_outage_loses_nothing_and_backlog_drains(rig: Rig, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="bridge")
    ids = rig.create(3)
    rig.bridge.pull_tick(rig.clock.now)
    rig.server.go_down()
    for _ in range(3):
        rig.queue.complete(rig.queue.dequeue(), {"offline": True})
    assert rig.bridge.push_tick(rig.clock.now) == 0
    assert rig.bridge.in_outage and "outage began" in caplog.text
    assert rig.queue.status().outbox == {"pending": 3}
    assert all(e.attempts == 0 for e in rig.queue.outbox())  # an outage is not the rows' fault
    rig.server.come_back()
    assert rig.bridge.push_tick(rig.clock.now) == 0  # still backing off
    rig.clock.advance(5)
    assert rig.bridge.push_tick(rig.clock.now) == 3
    assert "outage ended" in caplog.text and not rig.bridge.in_outage
    assert [rig.admin.get_task(i).status for i in ids] == ["completed"] * 3


def test_answer_lost_after_commit_is_delivered(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.queue.complete(rig.queue.dequeue(), {"n": 1})
    rig.server.faults.drop_after_commit(path="/tasks/*/complete")
    rig.bridge.push_tick(rig.clock.now)  # the answer is lost: treated as an outage
    rig.clock.advance(5)
    assert rig.bridge.push_tick(rig.clock.now) == 1  # the replay gets 400, settled by reading
    [row] = rig.queue.outbox()
    assert row.status == "delivered" and "already applied" in (row.last_error or "")
    assert rig.admin.get_task(remote_id).result == {"n": 1}


def test_lease_taken_by_another_worker_is_superseded(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    task = rig.queue.dequeue()
    rig.server.advance_clock(301)
    rival = rig.admin.claim_task(task_type=TYPE, worker_id="rival-worker")
    assert rival is not None and rival.id == remote_id
    rig.queue.complete(task, {"by": "us"})
    rig.bridge.push_tick(rig.clock.now)
    [row] = rig.queue.outbox()
    assert row.status == "superseded"
    assert "rival-worker" in (row.last_error or "") and "kept locally" in (row.last_error or "")
    assert rig.queue.get(task.id).result == {"by": "us"}
    assert rig.queue.status().outbox == {"superseded": 1}
    # The operator sees it, with the reason, in `status` and `outbox list`.
    db = ["--db-url", rig.queue.config.db_url]
    status = bridge_cli(*db, "status")
    assert "superseded 1" in status.stdout, status.stdout + status.stderr
    listing = bridge_cli(*db, "outbox", "list", "--status", "superseded")
    assert "rival-worker" in listing.stdout, listing.stdout + listing.stderr


def test_rejected_row_goes_dead_and_later_rows_still_go(rig: Rig):
    rig.admin.register_task_type("t.off", "1", {"type": "object"})
    rig.server.store.set_type_active("t.off", False)
    rig.queue.create_remote_task("t.off", {"n": 1})  # the server answers 400: type not active
    rig.queue.create_remote_task(TYPE, {"m": "no n"})  # refused by the cached schema
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.queue.complete(rig.queue.dequeue(), {"ok": True})
    assert rig.bridge.push_tick(rig.clock.now) == 1
    inactive, invalid, delivered = rig.queue.outbox()
    assert inactive.status == "dead" and "400: Task type is not active" in (
        inactive.last_error or ""
    )
    assert invalid.status == "dead" and "'n' is a required property" in (invalid.last_error or "")
    assert delivered.status == "delivered"
    assert rig.admin.get_task(remote_id).status == "completed"


def test_a_row_the_server_could_never_store_goes_dead_at_once_not_retried(rig: Rig):
    """A completion stored before the bridge checked sizes (or by another writer) is
    refused by the client before sending: dead at once with the size, never 50 retries
    while claiming pauses behind it."""
    rig.create(2)
    rig.bridge.pull_tick(rig.clock.now)
    big, small = rig.queue.dequeue(), rig.queue.dequeue()
    with rig.queue.store.db.hot_write() as conn:  # as an older version stored it
        payload = {"result": {"videos": "v" * 70_000}}
        append_for_task(rig.queue.store.sql, conn, "complete", payload, rig.clock.now, big)
    rig.queue.complete(small, {"ok": True})
    assert rig.bridge.push_tick(rig.clock.now) == 1
    dead, delivered = rig.queue.outbox()
    assert (dead.status, dead.attempts, delivered.status) == ("dead", 1, "delivered")
    assert "result: 70,013 bytes" in (dead.last_error or "")
    assert "65,535" in (dead.last_error or "")
    assert not any(r.path == f"/tasks/{big.remote_id}/complete" for r in rig.server.requests)
    assert rig.admin.get_task(small.remote_id).status == "completed"
    assert rig.admin.get_task(big.remote_id).status == "claimed"  # its lease runs out there


def test_a_create_waiting_for_a_retry_or_refused_for_good_holds_up_no_other_create(rig: Rig):
    """Creates belong to no task. A create answered with a 500 waits for its retry, and one
    the server can never store ends dead; neither holds back the creates behind it, of its
    own type or another (the server deduplicates creates: they need no order)."""
    bridge = make_bridge(rig.queue, rig.server, rig.clock, connections=1)  # rows in order
    rig.admin.register_task_type("t.other", "1", {"type": "object"})
    rig.queue.create_remote_task(TYPE, {"n": 1})
    rig.queue.create_remote_task("t.other", {"k": 1})
    rig.queue.create_remote_task(TYPE, {"n": 2})
    rig.server.faults.fail_next(status=500, path="/tasks", method="POST")  # the first create
    assert bridge.push_tick(rig.clock.now) == 2
    waiting, other, same_type = rig.queue.outbox()
    assert (waiting.status, waiting.attempts, other.status, same_type.status) == (
        "pending",
        1,
        "delivered",
        "delivered",
    )
    # While it waits for its retry, later creates of both types still go at once.
    rig.queue.create_remote_task(TYPE, {"n": 3})
    rig.queue.create_remote_task("t.other", {"k": 2})
    assert bridge.push_tick(rig.clock.now) == 2
    # The server's "Data too long" is a verdict on that row alone: dead at once.
    rig.server.faults.data_too_long(column="params_json", path="/tasks", method="POST")
    rig.queue.create_remote_task(TYPE, {"n": 4})
    rig.queue.create_remote_task("t.other", {"k": 3})
    assert bridge.push_tick(rig.clock.now) == 1
    rows = {json.dumps(row.payload["params"]): row for row in rig.queue.outbox()}
    refused = rows['{"n": 4}']
    assert (refused.status, refused.attempts) == ("dead", 1)
    assert "Data too long for column 'params_json'" in (refused.last_error or "")
    assert rows['{"k": 3}'].status == "delivered"
    rig.clock.advance(5)
    assert bridge.push_tick(rig.clock.now) == 1  # the first create, on its retry
    assert [row.status for row in rig.queue.outbox(status="pending")] == []
    assert {t.status for t in rig.admin.list_tasks(task_type=TYPE)} == {"pending"}
    assert len(list(rig.admin.list_tasks(task_type=TYPE))) == 3


def test_a_registration_waiting_for_its_retry_holds_back_only_its_own_types_creates(rig: Rig):
    rig.queue.register_task_type("t.new", "1", {"type": "object"})
    rig.queue.create_remote_task("t.new", {"k": 1})  # needs the type on the server first
    rig.queue.create_remote_task(TYPE, {"n": 1})
    rig.server.faults.fail_next(status=500, path="/task-types/register")
    assert rig.bridge.push_tick(rig.clock.now) == 1  # the other type's create
    register, behind, other = rig.queue.outbox()
    assert (register.status, register.attempts, behind.attempts) == ("pending", 1, 0)
    assert other.status == "delivered"
    rig.queue.create_remote_task(TYPE, {"n": 2})
    assert rig.bridge.push_tick(rig.clock.now) == 1  # not the create behind the registration
    assert rig.queue.store.outbox_entry(behind.id).attempts == 0
    rig.clock.advance(5)
    assert rig.bridge.push_tick(rig.clock.now) == 2  # the registration, then its create
    assert [r.status for r in rig.queue.store.outbox_entries()] == ["delivered"] * 4
    assert [t.type for t in rig.admin.list_tasks(task_type="t.new")] == ["t.new"]


def test_429_pauses_its_job_until_retry_after_and_only_its_job(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.queue.complete(rig.queue.dequeue(), {"ok": True})
    body = json.dumps({"error": "Too Many Requests", "message": "slow down", "retry_after": 30})
    rig.server.faults.fail_next(status=429, body=body, content_type="application/json")
    assert rig.bridge.push_tick(rig.clock.now) == 0
    before = len(rig.server.requests)
    rig.clock.advance(10)
    assert rig.bridge.push_tick(rig.clock.now) == 0
    assert len(rig.server.requests) == before  # no delivery before Retry-After
    [more] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)  # claims have a window of their own: not paused
    assert rig.admin.get_task(more).status == "claimed"
    rig.clock.advance(21)
    assert rig.bridge.push_tick(rig.clock.now) == 1
    assert rig.admin.get_task(remote_id).status == "completed"


def test_5xx_row_is_retried_later_and_keeps_task_order(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    first = rig.queue.dequeue()
    rig.queue.fail(first, ValueError("attempt 1"))  # a "fail" row, not pushed yet
    # A second row of the same task behind it, put there by the store's own append (a
    # re-claim while the failure is pending no longer runs the task again to make one).
    with rig.queue.store.db.hot_write() as conn:
        result = {"result": {"attempt": 2}}
        append_for_task(rig.queue.store.sql, conn, "complete", result, rig.clock.now, first)
    fail_row, complete_row = rig.queue.outbox(status="pending")
    assert (fail_row.kind, complete_row.kind) == ("fail", "complete")
    assert fail_row.task_id == complete_row.task_id == first.id

    def sent() -> int:  # a fail is a POST to /complete too (with success false)
        return sum(r.path == f"/tasks/{remote_id}/complete" for r in rig.server.requests)

    rig.server.faults.fail_next(status=500, path="/tasks/*/complete")  # the first: the fail row
    assert rig.bridge.push_tick(rig.clock.now) == 0
    assert sent() == 1, "the later row went in the same tick as the earlier row's 5xx"
    fail_row, complete_row = rig.queue.outbox(status="pending")
    assert fail_row.attempts == 1 and fail_row.next_attempt_at is not None
    assert complete_row.attempts == 0
    assert rig.bridge.push_tick(rig.clock.now) == 0  # the failed row's retry is not due yet
    assert sent() == 1, "the later row went while the earlier one waited for its retry"
    rig.clock.advance(5)
    rig.bridge.push_tick(rig.clock.now)
    assert sent() == 3  # the fail again, then the complete
    fail_row, complete_row = rig.queue.outbox()
    assert fail_row.status == "delivered" and fail_row.attempts == 2
    # The server applied the fail first (the task is pending again), so the completion
    # behind it is refused: kept locally, as superseded. Sent in the other order, the
    # server would have completed the task and then refused the fail.
    assert complete_row.status == "superseded", complete_row.last_error
    assert rig.queue.outbox(status="pending") == []


def test_reap_expires_and_requeues(rig: Rig, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="bridge")
    rig.create(2)
    rig.bridge.pull_tick(rig.clock.now)
    running = rig.queue.dequeue(lock_seconds=5)
    rig.clock.advance(6)
    assert rig.bridge.reap_tick(rig.clock.now) == (0, 1, 0)
    rig.clock.advance(300)
    assert rig.bridge.reap_tick(rig.clock.now)[0] == 2
    assert rig.queue.get(running.id).status == "expired"
    assert "expired" in caplog.text


def test_reconcile_imports_orphan_claims(rig: Rig):
    ids = rig.create(2)
    rig.server.faults.drop_after_commit(path="/tasks/claim")  # one claim's answer is lost
    assert rig.bridge.pull_tick(rig.clock.now) <= 1  # the other may go through beside it
    # Claimed by us, not recorded: the lost answer's (the other task may not have been
    # claimed at all, when the burst stopped at the error before sending its claim).
    orphans = [
        i
        for i in ids
        if rig.queue.store.get_task_by_remote_id(i) is None
        and rig.admin.get_task(i).claimed_by == rig.bridge.worker_id
    ]
    assert len(orphans) == 1
    assert rig.bridge.reconcile_tick(rig.clock.now) == 1
    local = rig.queue.store.get_task_by_remote_id(orphans[0])
    assert local is not None and local.status == "queued"
    assert local.params == {"n": ids.index(orphans[0])}
    assert rig.bridge.reconcile_tick(rig.clock.now) == 0
    assert rig.queue.store.claim_intents() == []


def test_a_claim_answer_lost_and_retried_inside_the_client_is_still_imported(rig: Rig):
    ids = rig.create(3)
    rig.bridge = make_bridge(rig.queue, rig.server, rig.clock, retry_attempts=2)
    rig.server.faults.drop_after_commit(path="/tasks/claim")  # the client sends it again
    assert rig.bridge.pull_tick(rig.clock.now) == 2
    orphan = next(i for i in ids if rig.queue.store.get_task_by_remote_id(i) is None)
    assert rig.admin.get_task(orphan).claimed_by == rig.bridge.worker_id
    assert rig.bridge.reconcile_tick(rig.clock.now) == 1
    assert rig.queue.store.get_task_by_remote_id(orphan) is not None


def test_reconcile_leaves_claims_it_did_not_ask_for_and_reports_them(rig: Rig):
    """Another bridge with the same worker id: its claims are neither imported nor run."""
    ids = rig.create(2)
    foreign = rig.admin.claim_task(task_type=TYPE, worker_id=rig.bridge.worker_id)
    assert foreign is not None and foreign.id == ids[0]
    assert rig.bridge.reconcile_tick(rig.clock.now) == 0
    assert rig.queue.store.get_task_by_remote_id(foreign.id) is None
    with Operations.open(rig.bridge.config) as operations:
        snapshot = operations.snapshot(rig.clock.now)
        problems = operations.health_problems(rig.clock.now, 900, 1e9)
    assert snapshot.to_json()["foreign_claims"] == 1
    assert any("TASKMANAGER_WORKER_ID" in problem for problem in problems)
    rig.admin.complete_task(foreign.id, {"by": "the other bridge"}, worker_id=foreign.worker_id)
    rig.bridge.reconcile_tick(rig.clock.now)
    with Operations.open(rig.bridge.config) as operations:
        assert operations.snapshot(rig.clock.now).foreign_claims == 0


@pytest.mark.parametrize("skew", [600.0, -600.0])
def test_an_imported_claims_lease_runs_on_our_clock_whatever_the_servers(rig: Rig, skew: float):
    rig.server.advance_clock(skew)
    (remote_id,) = rig.create(1)
    rig.server.faults.drop_after_commit(path="/tasks/claim")
    asked_at = rig.clock.now
    rig.bridge.pull_tick(asked_at)
    rig.clock.advance(40)
    assert rig.bridge.reconcile_tick(rig.clock.now) == 1
    local = rig.queue.store.get_task_by_remote_id(remote_id)
    assert local is not None
    assert local.lease_expires_at == asked_at + timedelta(seconds=300)
    rig.clock.advance(300 - 40 - 30)  # the margin before the lease ends: no longer handed out
    assert rig.queue.dequeue() is None


def test_worker_id_is_stable_across_restarts(rig: Rig, clock: Clock):
    again = make_bridge(rig.queue, rig.server, clock)
    assert again.worker_id == rig.bridge.worker_id


def test_failing_tick_is_logged_and_does_not_escape(rig: Rig, caplog: pytest.LogCaptureFixture):
    def broken(_now):
        raise RuntimeError("boom")

    daemon = Daemon(rig.bridge, clock=rig.clock)
    daemon._guarded("pull", broken)()
    assert "pull tick failed" in caplog.text and "boom" in caplog.text
    daemon.scheduler.start(paused=True)  # job defaults apply when the scheduler starts
    try:
        for name in ("pull", "push", "reap", "reconcile"):
            job = daemon.scheduler.get_job(name)
            assert (job.max_instances, job.coalesce) == (1, True)
    finally:
        daemon.scheduler.shutdown(wait=False)


def test_register_type_delivery_caches_remote_id(rig: Rig):
    rig.queue.register_task_type("t.new", "2", {"type": "object"})
    rig.bridge.push_tick(rig.clock.now)
    cached = rig.queue.store.cached_task_type("t.new")
    assert cached is not None and cached.remote_id == rig.admin.get_task_type("t.new").id


def test_backoff_grows_while_outage_lasts(rig: Rig):
    rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.queue.complete(rig.queue.dequeue(), {"ok": True})
    rig.server.go_down()
    attempts_at = []
    for _ in range(60):
        before = rig.bridge._push_failures
        rig.bridge.push_tick(rig.clock.now)
        if rig.bridge._push_failures != before:
            attempts_at.append(rig.clock.now)
        rig.clock.advance(0.5)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(attempts_at)]
    assert len(gaps) >= 3 and gaps[-1] > gaps[0]
    assert max(gaps) <= rig.bridge.config.push_backoff_max_seconds * 1.2 + 0.5
    rig.server.come_back()
    # The next attempt waits for its back-off (at most the cap), then delivers the backlog.
    delivered_at = None
    for _ in range(int(rig.bridge.config.push_backoff_max_seconds * 1.2 / 0.5) + 3):
        rig.clock.advance(0.5)
        if rig.bridge.push_tick(rig.clock.now) == 1:
            delivered_at = rig.clock.now
            break
    assert delivered_at is not None, "the backlog was not delivered after the server came back"
    waited = (delivered_at - attempts_at[-1]).total_seconds()
    assert waited <= rig.bridge.config.push_backoff_max_seconds * 1.2 + 0.5
    assert not rig.bridge.in_outage and rig.queue.status().outbox == {"delivered": 1}


def test_lease_expiry_before_start_then_reclaimed_later(rig: Rig):
    [remote_id] = rig.create(1)
    rig.bridge.pull_tick(rig.clock.now)
    rig.clock.advance(300)  # our clock: the lease is gone before any worker started it
    assert rig.queue.dequeue() is None
    assert rig.bridge.reap_tick(rig.clock.now)[0] == 1
    rig.server.advance_clock(301)  # the server's clock: the claim timed out there too
    rig.bridge._next_pull.clear()
    assert rig.bridge.pull_tick(rig.clock.now) == 1  # offered again, claimed again
    task = rig.queue.dequeue()
    assert task is not None and task.remote_id == remote_id and task.remote_attempt == 2
    rig.queue.complete(task, {"second": "try"})
    rig.bridge.push_tick(rig.clock.now)
    remote = rig.admin.get_task(remote_id)
    assert (remote.status, remote.attempts, remote.result) == ("completed", 2, {"second": "try"})


def test_a_reclaimed_task_whose_result_we_hold_gets_that_result_not_a_new_run(rig: Rig):
    (remote_id,) = rig.create(1)
    assert rig.bridge.pull_tick(rig.clock.now) == 1
    task = rig.queue.dequeue()
    assert task is not None
    rig.queue.complete(task, {"ours": True})
    rig.server.advance_clock(301)  # our lease ran out before the result went out
    other = rig.admin.claim_task(task_type=TYPE, worker_id="other-host")
    assert other is not None and other.id == remote_id
    rig.bridge.push_tick(rig.clock.now)
    assert [row.status for row in rig.queue.outbox(None, 10)] == ["superseded"]
    rig.server.advance_clock(301)  # the other host died too: the task is claimable again
    rig.clock.advance(60)
    assert rig.bridge.pull_tick(rig.clock.now) == 1
    assert rig.queue.get(task.id).status == "done"  # kept, not queued to run again
    assert rig.queue.dequeue() is None
    assert rig.bridge.push_tick(rig.clock.now) == 1
    remote = rig.admin.get_task(remote_id)
    assert remote.status == "completed" and remote.result == {"ours": True}
    assert remote.attempts == 3
