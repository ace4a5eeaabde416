"""Idle pickup against the emulator with the server's rate limit on (100 a minute per
client and path), the bridge's clock and the server's moved together: ten simulated
minutes in a second or two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from .conftest import Clock

TYPES = [f"idle.type{i}" for i in range(10)]


@pytest.fixture
def idle_rig(tmp_path) -> Iterator[tuple[EmulatorServer, LocalQueue, DaemonJobs, Clock]]:
    db = str(tmp_path / "q.db")
    upgrade(db)
    clock = Clock()
    with (
        EmulatorServer(rate_limit=100, rate_window=60) as server,
        LocalQueue(db, clock=clock) as queue,
    ):
        admin = server.client()
        for name in TYPES:
            admin.register_task_type(name, "1", {"type": "object"})
        config = BridgeConfig.load(env={}, db_url=db, types=TYPES)  # the defaults
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, retry_attempts=0
            ),
            now=clock,
        )
        yield server, queue, DaemonJobs(queue.store, client, config), clock


def _tick(server: EmulatorServer, bridge: DaemonJobs, clock: Clock, seconds: float) -> int:
    clock.advance(seconds)
    server.advance_clock(seconds)
    return bridge.pull_tick(clock.now)


def test_ten_idle_types_for_ten_minutes_stay_within_the_claim_budget(idle_rig):
    server, _queue, bridge, clock = idle_rig
    before = server.request_counts()
    for _ in range(int(600 / bridge.config.poll_min_seconds)):
        _tick(server, bridge, clock, bridge.config.poll_min_seconds)
    by_path = server.request_counts() - before
    answers = Counter(r.status for r in server.requests)
    assert by_path["POST /tasks/claim"] <= 10 * 10, by_path  # 10 % of 100 a minute
    assert by_path["POST /tasks/claim"] >= 10 * 9, by_path  # and probes do run
    assert by_path["GET /tasks"] <= 601, by_path  # one look a second for all ten types
    assert answers[429] == 0, answers


def test_a_task_created_after_a_long_idle_period_is_claimed_within_a_second(idle_rig):
    server, queue, bridge, clock = idle_rig
    for _ in range(1200):  # ten idle minutes
        _tick(server, bridge, clock, 0.5)
    remote_id = server.client().create_task(TYPES[7], {"n": 1})
    created = clock.now
    while queue.store.get_task_by_remote_id(remote_id) is None:
        assert clock.now - created < timedelta(seconds=5), "not claimed"
        _tick(server, bridge, clock, 0.5)
    assert clock.now - created <= timedelta(seconds=bridge.config.watch_interval_seconds)
    task = queue.dequeue()
    assert task is not None and task.remote_id == remote_id


def test_a_task_whose_lease_ran_out_is_claimed_again_within_the_probe_bound(idle_rig):
    """Expired leases are invisible to the list (the task stays ``claimed``): the probe
    finds it within max(poll_max_seconds, 60 s x types / (share x limit)) = 60 s here."""
    server, queue, bridge, clock = idle_rig
    admin = server.client()
    remote_id = admin.create_task(TYPES[3], {"n": 1})
    assert admin.claim_task(task_type=TYPES[3], worker_id="a-host-that-dies") is not None
    for _ in range(20):
        _tick(server, bridge, clock, 0.5)
    server.advance_clock(300)  # its lease runs out on the server
    expired = clock.now
    while queue.store.get_task_by_remote_id(remote_id) is None:
        assert clock.now - expired <= timedelta(seconds=61), "the probe never found it"
        _tick(server, bridge, clock, 0.5)
