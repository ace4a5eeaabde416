"""A result bigger than the server stores, end to end: handler -> worker -> daemon -> emulator.

The server keeps at most 65,535 bytes of a result; over that it answers a 500 that no
resend cures. Such a result must fail its task at once with the reason (for the handler's
author, in the task's error and in the logs), never become an outbox row that retries
while the daemon stops claiming. Run with each way a worker runs handlers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from bridge import BridgeConfig, LocalQueue, Worker
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import wait_until
from .handlers import descriptions, descriptions_async

pytestmark = pytest.mark.integration
TYPE = "scrape.channel"
REFUSED = "result refused: results: 73,702 bytes as the server stores them"


@pytest.fixture
def running(tmp_path) -> Iterator[tuple[EmulatorServer, LocalQueue, TaskManagerClient]]:
    """The emulator and a daemon (its real scheduler threads) serving one local queue."""
    db = str(tmp_path / "q.db")
    upgrade(db)
    with EmulatorServer() as server, LocalQueue(db) as queue, server.client() as admin:
        admin.register_task_type(TYPE, "1", {"type": "object"})
        config = BridgeConfig.load(
            env={},
            db_url=db,
            types=[TYPE],
            poll_min_seconds=0.05,
            poll_max_seconds=0.2,
            watch_interval_seconds=0,
            push_interval_seconds=0.05,
            reconcile_interval_seconds=600,
        )
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, timeout=2, retry_attempts=0
            )
        )
        daemon = Daemon(DaemonJobs(queue.store, client, config))
        daemon.start()
        try:
            yield server, queue, admin
        finally:
            daemon.stop()


@pytest.mark.parametrize("pool", ["thread", "async", "process"])
def test_a_result_the_server_cannot_store_fails_its_task_at_once_and_claiming_goes_on(
    running: tuple[EmulatorServer, LocalQueue, TaskManagerClient],
    pool: str,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.WARNING, logger="bridge")
    server, queue, admin = running
    handler = descriptions_async if pool == "async" else descriptions
    worker = Worker(
        queue,
        {TYPE: handler},
        concurrency=2,
        poll_seconds=0.05,
        pool="thread" if pool == "async" else pool,
    )
    running_worker = threading.Thread(target=worker.run, daemon=True)
    big = admin.create_task(TYPE, {"count": 200})
    small = [admin.create_task(TYPE, {"count": 3, "n": n}) for n in range(3)]
    running_worker.start()
    try:
        # The server retries a failure up to 3 attempts: each ends at once, saying why.
        assert wait_until(lambda: admin.get_task(big).status == "failed", 20), (
            admin.get_task(big),
            queue.outbox(None, 50),
        )
        assert (admin.get_task(big).error_message or "").startswith(REFUSED)
        assert "65,535 bytes per value (result_json)" in (admin.get_task(big).error_message or "")
        # The others complete (their deliveries may trail the big one's last failure by a
        # push: each goes out within 20 ms of its commit, not in the order of the tasks).
        assert wait_until(
            lambda: all(admin.get_task(task_id).status == "completed" for task_id in small), 20
        )
        # Claiming goes on: new work is claimed and done while the refusal is behind us.
        later = [admin.create_task(TYPE, {"count": 2, "later": n}) for n in range(3)]
        assert wait_until(
            lambda: all(admin.get_task(task_id).status == "completed" for task_id in later), 20
        )
    finally:
        worker.stop()
        running_worker.join(30)
    local = queue.store.get_task_by_remote_id(big)
    assert local is not None and local.status == "failed"
    assert (local.error or "").startswith(REFUSED)
    rows = queue.outbox(None, 100)
    # Every row went on its first attempt: none retried, none pending, none dead.
    assert {row.status for row in rows} == {"delivered"}, rows
    assert {row.attempts for row in rows} == {1}
    assert [row.kind for row in rows].count("fail") == 3
    assert not any(r.status == 500 and r.path.endswith("/complete") for r in server.requests)
    assert REFUSED in caplog.text  # the worker's log says it too
