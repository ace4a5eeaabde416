"""The daemon, workers and CLI as real processes against the emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.storage import WORKER_ID_KEY
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from .helpers import wait_until

pytestmark = pytest.mark.acceptance
TYPE = "proc.work"


def write_config(folder: Path, server: EmulatorServer, db_url: str) -> Path:
    path = folder / "bridge.toml"
    path.write_text(
        f'db_url = "{db_url}"\ntypes = ["{TYPE}"]\nprefetch = 50\nworkers = 2\n'
        "poll_min_seconds = 0.1\npoll_max_seconds = 0.5\npush_interval_seconds = 0.1\n"
        "push_backoff_max_seconds = 0.5\nreap_interval_seconds = 0.2\n"
        "reconcile_interval_seconds = 1\nshutdown_push_seconds = 5\n"
        f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 2\nretry_attempts = 0\n'
    )
    return path


def cli(
    config: Path,
    *args: str,
    server: EmulatorServer,
    env_extra: dict[str, str] | None = None,
    **kwargs,
) -> subprocess.Popen[str]:
    env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


@pytest.fixture
def setup(db_url: str, tmp_path):
    upgrade(db_url)
    with EmulatorServer() as server:
        client = server.client()
        client.register_task_type(TYPE, "1", {"type": "object"})
        yield server, client, write_config(tmp_path, server, db_url), db_url


def test_sigkill_restart_resumes_outbox_and_reconciles_orphans(setup):
    server, client, config, _db_url = setup
    ids = [client.create_task(TYPE, {"n": i}) for i in range(6)]
    daemon = cli(config, "run", server=server)
    with LocalQueue(config=BridgeConfig.load(config)) as queue:
        assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 6, 20)
        worker_id = queue.store.get_state(WORKER_ID_KEY)
        server.go_down()
        while (task := queue.dequeue()) is not None:  # results made while the server is away
            queue.complete(task, {"n": task.params["n"], "by": "test"})
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        server.come_back()
        extra = [client.create_task(TYPE, {"n": 100 + i}) for i in range(2)]
        for _ in extra:  # as a kill between the server's commit and the local insert leaves them
            queue.store.open_claim_intent(TYPE, queue.clock())
            assert client.claim_task(task_type=TYPE, worker_id=worker_id) is not None
        restarted = cli(config, "run", server=server)
        try:
            assert wait_until(
                lambda: all(client.get_task(i).status == "completed" for i in ids), 20
            )
            assert wait_until(
                lambda: all(queue.store.get_task_by_remote_id(i) for i in extra), 20
            ), "orphan claims were not reconciled"
        finally:
            restarted.send_signal(signal.SIGTERM)
            _out, err = restarted.communicate(timeout=20)
        assert restarted.returncode == 0, err
        assert "reconciled 2 orphan claim(s)" in err
        assert [client.get_task(i).result["by"] for i in ids] == ["test"] * 6
        assert queue.status().outbox.get("pending", 0) == 0


def stop_outside_a_write(daemon: subprocess.Popen[bytes], queue: LocalQueue) -> None:
    """SIGSTOP the daemon while it holds no write transaction: stopped inside one it would
    keep SQLite's lock (or PostgreSQL's row locks), and the test's own writes would wait
    for it in vain. The test takes the write lock itself first, so the daemon is between
    writes (or waiting for the lock) when it stops."""
    status = Path(f"/proc/{daemon.pid}/status")
    with queue.store.db.write():
        daemon.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: "\tT (stopped)" in status.read_text(), 10)


def test_sigterm_stops_claiming_pushes_and_exits_zero(setup):
    server, client, config, _ = setup
    ids = [client.create_task(TYPE, {"n": i}) for i in range(3)]
    daemon = cli(config, "run", server=server)
    with LocalQueue(config=BridgeConfig.load(config)) as queue:
        assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 3, 20)
        stop_outside_a_write(daemon, queue)  # completions are queued while it cannot push
        for _ in ids:
            queue.complete(queue.dequeue(), {"ok": True})
        daemon.send_signal(signal.SIGTERM)
        daemon.send_signal(signal.SIGCONT)
        _out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert "bridge stopped; 0 outbox row(s) pending" in err
    assert [client.get_task(i).status for i in ids] == ["completed"] * 3


def test_schema_dropped_under_the_running_daemon_stops_it_naming_the_fix(setup):
    from bridge.storage.migrations import downgrade

    server, client, config, db_url = setup
    client.create_task(TYPE, {"n": 1})
    daemon = cli(config, "run", server=server)
    try:
        with LocalQueue(config=BridgeConfig.load(config)) as queue:
            assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 1, 20)
        downgrade(db_url)  # e.g. an operator's mistake: the tables are gone
        _out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 1, err
    assert "the queue database changed under the daemon" in err
    assert "taskmanager-bridge db upgrade" in err
    assert err.count("Traceback") <= 1  # one clear stop, not a traceback every tick


def test_worker_process_runs_a_handler_and_stops_on_sigterm(setup):
    server, client, config, _ = setup
    remote = client.create_task(TYPE, {"n": 7})
    daemon = cli(config, "run", server=server)
    worker = cli(
        config,
        "worker",
        "--handler",
        "tests.integration.test_worker:square",
        "--type",
        TYPE,
        server=server,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        # square() needs "x": the handler fails, and the failure reaches the server
        assert wait_until(lambda: client.get_task(remote).error_message is not None, 20)
        assert "KeyError" in client.get_task(remote).error_message
    finally:
        for process in (worker, daemon):
            process.send_signal(signal.SIGTERM)
        for process in (worker, daemon):
            process.communicate(timeout=20)
    assert worker.returncode == 0 and daemon.returncode == 0


def test_status_outbox_and_register_types_commands(setup, tmp_path):
    server, client, config, _ = setup
    types_file = tmp_path / "types.toml"
    types_file.write_text(
        '[[types]]\nname = "cli.a"\nversion = "1"\n'
        'param_schema = { type = "object", required = ["u"] }\n'
    )
    done = cli(config, "register-types", str(types_file), server=server)
    out, err = done.communicate(timeout=30)
    assert done.returncode == 0, err
    assert "registered cli.a v1" in out and client.get_task_type("cli.a").version == "1"
    offline = tmp_path / "offline.json"
    offline.write_text(
        json.dumps([{"name": "cli.b", "version": "2", "param_schema": {"type": "object"}}])
    )
    with server.outage():
        queued = cli(config, "register-types", str(offline), server=server)
        out, _ = queued.communicate(timeout=30)
    assert queued.returncode == 0 and "queued cli.b v2 in the outbox" in out
    status = cli(config, "status", "--json", server=server)
    doc = json.loads(status.communicate(timeout=30)[0])
    expected = {"pending": 1, "delivered": 1, "superseded": 0, "obsolete": 0, "dead": 0}
    assert doc["outbox"] == expected
    assert doc["oldest_pending_outbox_age_seconds"] >= 0 and doc["in_outage"] is False
    assert server.api_key not in json.dumps(doc)
    listing = cli(config, "outbox", "list", "--status", "pending", server=server)
    out, _ = listing.communicate(timeout=30)
    assert "register_type" in out and "pending" in out
    human = cli(config, "status", server=server)
    out, _ = human.communicate(timeout=30)
    assert "outbox: pending 1, delivered 1, superseded 0, obsolete 0, dead 0" in out


def test_outbox_retry_makes_dead_rows_pending(setup):
    server, _client, config, _db_url = setup
    with LocalQueue(config=BridgeConfig.load(config)) as queue:
        entry = queue.create_remote_task(TYPE, {"x": 1})
        queue.store.settle_outbox(entry.id, "dead", "test", queue.clock())
    retried = cli(config, "outbox", "retry", "--dead", server=server)
    out, _ = retried.communicate(timeout=30)
    assert "1 dead row(s) made pending again" in out
    nothing = cli(config, "outbox", "retry", server=server)
    _, err = nothing.communicate(timeout=30)
    assert nothing.returncode == 2 and "give row ids" in err


def test_run_without_types_names_the_setting(tmp_path):
    config = tmp_path / "bridge.toml"
    config.write_text(f'db_url = "{tmp_path / "q.db"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "types:" in done.stderr and "Traceback" not in done.stderr


def test_demo_command_loses_nothing():
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--tasks", "16", "--outage-seconds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tasks completed remotely with their worker's result: 16/16" in done.stdout
    assert "lost: 0" in done.stdout and "network DOWN" in done.stdout
    assert "demo-key" not in done.stdout + done.stderr


def test_second_signal_exits_at_once_and_loses_nothing(setup):
    server, client, config, _ = setup
    remote = client.create_task(TYPE, {"n": 1})
    daemon = cli(config, "run", server=server)
    with LocalQueue(config=BridgeConfig.load(config)) as queue:
        assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 1, 20)
        stop_outside_a_write(daemon, queue)
        queue.complete(queue.dequeue(), {"kept": True})
        daemon.send_signal(signal.SIGTERM)  # two different signals stay pending together
        daemon.send_signal(signal.SIGINT)
        daemon.send_signal(signal.SIGCONT)
        _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 1 and "second signal: exiting now" in err
        assert queue.status().tasks == {(TYPE, "done"): 1}  # the result is still here
    rerun = cli(config, "run", server=server)
    try:
        assert wait_until(lambda: client.get_task(remote).status == "completed", 20)
    finally:
        rerun.send_signal(signal.SIGTERM)
        rerun.communicate(timeout=30)
