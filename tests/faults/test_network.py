"""The running daemon (real scheduler threads) against network faults."""

from __future__ import annotations

import logging

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.ops.metrics import Metrics
from bridge.ops.operations import Operations
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import wait_until

pytestmark = pytest.mark.integration
TYPE = "net.work"


def test_hanging_claims_do_not_stop_deliveries(tmp_path, caplog):
    """Claims hang (timeouts fire); the push job, on its own thread, still delivers; the
    pull runs skipped meanwhile are counted and summarised, not logged one by one."""
    caplog.set_level(logging.INFO)
    db = str(tmp_path / "q.db")
    upgrade(db)
    with EmulatorServer() as server, LocalQueue(db) as queue:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        ids = [admin.create_task(TYPE, {"n": i}) for i in range(3)]
        config = BridgeConfig.load(
            env={},
            db_url=db,
            types=[TYPE],
            poll_min_seconds=0.05,
            poll_max_seconds=0.2,
            push_interval_seconds=0.05,
            reconcile_interval_seconds=600,
        )
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, timeout=0.5, retry_attempts=0
            )
        )
        metrics = Metrics(Operations(queue.store, config))
        daemon = Daemon(DaemonJobs(queue.store, client, config, metrics=metrics))
        daemon.start()
        try:
            assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 3, 10)
            server.faults.hang_next(1000, path="/tasks/claim")
            more = admin.create_task(TYPE, {"n": 99})  # would be claimed, but claims hang
            for _ in ids:
                queue.complete(queue.dequeue(), {"ok": True})
            assert wait_until(
                lambda: all(admin.get_task(i).status == "completed" for i in ids), 10
            ), "deliveries stopped while claims hung"

            def hung() -> int:
                return sum(1 for r in server.requests if r.status == "hung")

            assert wait_until(lambda: hung() >= 2, 10)  # pull kept trying, each one timing out
            assert admin.get_task(more).status == "pending"
        finally:
            server.faults.clear()
            daemon.stop()
    skipped = metrics.render().decode()
    assert 'taskmanager_bridge_job_runs_skipped_total{job="pull"}' in skipped
    assert "maximum number of running instances" not in caplog.text
    summaries = [r for r in caplog.records if "runs skipped in the last" in r.getMessage()]
    assert len(summaries) == 1 and "pull" in summaries[0].getMessage()  # one, at stop
