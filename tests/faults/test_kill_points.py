"""The crash harness's kill points, each forced rather than hit by chance.

The emulator commits a request and then holds its answer back
(``faults.hold_after_commit``): the daemon process is SIGKILLed inside that
window, when the server has changed state and the bridge cannot know it.
Restarted, the bridge must converge: the claim imported by reconcile, the
completion or failure replayed and recognised as already done. Runs on a SQLite
file and on PostgreSQL.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.storage import WORKER_ID_KEY
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import wait_until
from ..integration.test_daemon_processes import TYPE, cli, write_config

pytestmark = pytest.mark.integration


def held(server: EmulatorServer, path_end: str) -> bool:
    return any(r.status == "held" and r.path.endswith(path_end) for r in server.requests)


def reconciled(server: EmulatorServer) -> bool:
    """The daemon's reconcile has listed the server's claimed tasks at least once."""
    return any((r.method, r.path, r.status) == ("GET", "/tasks", 200) for r in server.requests)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return err


@pytest.fixture
def setup(db_url: str, tmp_path):
    upgrade(db_url)
    # One attempt: a failure is final, so no claim can follow it while the test looks.
    with EmulatorServer(max_attempts=1) as server:
        client = server.client()
        client.register_task_type(TYPE, "1", {"type": "object"})
        config = write_config(tmp_path, server, db_url)
        with LocalQueue(config=BridgeConfig.load(config)) as queue:
            yield server, client, config, queue


def test_killed_between_the_remote_claim_and_the_local_insert(setup):
    server, client, config, queue = setup
    # Reconcile would import the claim while its answer is held (the server already
    # lists it as ours): only the start-up run, done before the task exists.
    daemon = cli(
        config, "run", server=server, env_extra={"BRIDGE_RECONCILE_INTERVAL_SECONDS": "600"}
    )
    try:
        assert wait_until(lambda: reconciled(server), 20)
        server.faults.hold_after_commit(1, path="/tasks/claim")
        task_id = client.create_task(TYPE, {"n": 1})
        assert wait_until(lambda: held(server, "/tasks/claim"), 20)
        assert client.get_task(task_id).status == "claimed"  # the server committed the claim
        assert queue.store.get_task_by_remote_id(task_id) is None  # the bridge has nothing
    finally:
        kill(daemon)
    server.faults.clear()
    worker_id = queue.store.get_state(WORKER_ID_KEY)
    assert client.get_task(task_id).claimed_by == worker_id

    restarted = cli(config, "run", server=server)
    try:
        assert wait_until(lambda: queue.store.get_task_by_remote_id(task_id) is not None, 20)
        task = queue.dequeue()
        assert task is not None and task.remote_id == task_id
        queue.complete(task, {"n": 1, "by": "the worker"})
        assert wait_until(lambda: client.get_task(task_id).status == "completed", 20)
    finally:
        err = stop(restarted)
    assert "reconciled 1 orphan claim(s)" in err
    remote = client.get_task(task_id)
    assert remote.result == {"n": 1, "by": "the worker"}
    assert remote.attempts == 1  # imported, not claimed again after its lease ran out


@pytest.mark.parametrize("action", ["complete", "fail"])
def test_killed_during_delivery_after_the_server_committed(setup, action):
    server, client, config, queue = setup
    task_id = client.create_task(TYPE, {"n": 2})
    daemon = cli(config, "run", server=server)
    try:
        assert wait_until(lambda: queue.store.get_task_by_remote_id(task_id) is not None, 20)
        server.faults.hold_after_commit(1, path="/tasks/*/complete")  # fail is a complete too
        task = queue.dequeue()
        assert task is not None
        if action == "complete":
            queue.complete(task, {"n": 2})
        else:
            queue.fail(task, "broken input")
        assert wait_until(lambda: held(server, "/complete"), 20)
    finally:
        kill(daemon)
    server.faults.clear()
    committed = client.get_task(task_id)
    assert committed.status == ("completed" if action == "complete" else "failed")
    assert [row.kind for row in queue.outbox("pending", 10)] == [action]  # still unsettled

    restarted = cli(config, "run", server=server)
    try:
        assert wait_until(lambda: not queue.outbox("pending", 10), 20)
    finally:
        stop(restarted)
    delivered = queue.outbox("delivered", 10)
    assert [row.kind for row in delivered] == [action]
    assert queue.outbox("dead", 10) == []
    final = client.get_task(task_id)
    # The replay changed nothing on the server: same state, one attempt.
    assert (final.status, final.attempts, final.result) == (
        committed.status,
        committed.attempts,
        committed.result,
    )
    accepted = [
        r for r in server.requests if r.path.endswith("/complete") and r.status in (200, "held")
    ]
    assert len(accepted) == 1, accepted
