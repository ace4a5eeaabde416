"""Keys, worker ids, settings and a locked database at start, against the running daemon.

A refused key is reported as such (never as an outage) and never shown; a key
that cannot be sent stops the command at start; two bridges sharing a worker id
run no task twice and say so; a lease shorter than the assumed task duration
still gets work done; an outage does not outlive a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import bridge_cli, wait_until

pytestmark = pytest.mark.acceptance
TYPE = "ident.work"
KEY = "tmk-Right-Key-0a1b2c3d"
WRONG = "tmk-Wrong-Key-9z8y7x6w"


def write_config(folder: Path, server: EmulatorServer, **extra: object) -> Path:
    db = folder / "queue.db"
    upgrade(str(db))
    settings = {
        "db_url": str(db),
        "types": [TYPE],
        "prefetch": 20,
        "poll_min_seconds": 0.1,
        "poll_max_seconds": 0.5,
        "push_interval_seconds": 0.1,
        "push_backoff_max_seconds": 0.5,
        "reap_interval_seconds": 0.2,
        "reconcile_interval_seconds": 1,
        "shutdown_push_seconds": 3,
        **extra,
    }
    lines = [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    lines += ["[taskmanager]", f'api_url = "{server.url}"', "timeout = 2", "retry_attempts = 0"]
    path = folder / "bridge.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def env_with(key: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMANAGER_", "BRIDGE_"))}
    if key is not None:
        env["TASKMANAGER_API_KEY"] = key
    return {**env, **extra}


def start_daemon(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    return err


def status(config: Path) -> dict[str, object]:
    done = bridge_cli("--config", str(config), "status", "--json", env=env_with(None))
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(api_key=KEY) as emulator:
        emulator.client().register_task_type(TYPE, "1", {"type": "object"})
        yield emulator


def test_a_refused_key_is_reported_as_such_and_never_shown(tmp_path: Path, server: EmulatorServer):
    admin = server.client()
    ids = [admin.create_task(TYPE, {"n": n}) for n in range(3)]
    config = write_config(tmp_path, server)
    daemon = start_daemon(config, env_with(WRONG))
    try:
        assert wait_until(
            lambda: status(config)["contact"]["state"] == "auth_failed",  # type: ignore[index]
            30,
        ), "the daemon never reported the refused key"
        doc = status(config)
        health = bridge_cli("--config", str(config), "health", env=env_with(None))
    finally:
        err = stop(daemon)
    assert doc["in_outage"] is False
    assert health.returncode == 1 and "refuses the API key" in health.stdout
    assert err.count("Check the API key (from the environment variable TASKMANAGER_API_KEY)") == 1
    assert "outage began" not in err
    assert all(admin.get_task(i).status == "pending" for i in ids)
    for text in (err, health.stdout, json.dumps(doc)):
        assert WRONG not in text and KEY not in text

    daemon = start_daemon(config, env_with(KEY))  # the key fixed: claims flow, state is fresh
    try:
        assert wait_until(lambda: status(config)["contact"]["state"] == "ok", 30)  # type: ignore[index]
        with LocalQueue(config=BridgeConfig.load(config, env={})) as queue:
            assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 3, 30)
    finally:
        stop(daemon)


def test_register_types_with_a_refused_key_fails(tmp_path: Path, server: EmulatorServer):
    config = write_config(tmp_path, server)
    types = tmp_path / "types.json"
    types.write_text(
        json.dumps([{"name": "x.t", "version": "1", "param_schema": {"type": "object"}}])
    )
    done = bridge_cli("--config", str(config), "register-types", str(types), env=env_with(WRONG))
    assert done.returncode == 1
    assert "refuses the API key" in done.stderr and "TASKMANAGER_API_KEY" in done.stderr
    assert WRONG not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "toml_key",
    ['"tmk-key-with-newline\\n"', '"tmk key with space"', '"tmk-ключ"', "12345", '["a", "b"]'],
)
def test_a_key_that_cannot_be_sent_stops_run_at_start(
    tmp_path: Path, server: EmulatorServer, toml_key: str
):
    config = write_config(tmp_path, server)
    with config.open("a", encoding="utf-8") as file:
        file.write(f"api_key = {toml_key}\n")
    done = bridge_cli("--config", str(config), "run", env=env_with(None))
    assert done.returncode == 2, done.stderr
    assert "api_key" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    for secret in ("tmk-key-with-newline", "tmk key with space", "ключ", "12345"):
        assert secret not in done.stderr


def test_two_bridges_with_one_worker_id_run_no_task_twice(tmp_path: Path, server: EmulatorServer):
    admin = server.client()
    ids = [admin.create_task(TYPE, {"n": n}) for n in range(10)]
    shared = env_with(KEY, TASKMANAGER_WORKER_ID="host-shared")
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name, server))
    daemons = [start_daemon(config, shared) for config in configs]
    try:

        def claimed_everything() -> bool:
            return all(admin.get_task(i).status == "claimed" for i in ids)

        assert wait_until(claimed_everything, 30)
        assert wait_until(lambda: any(status(c)["foreign_claims"] for c in configs), 30), (
            "no bridge noticed the shared worker id"
        )
        held = []
        for config in configs:
            with LocalQueue(config=BridgeConfig.load(config, env={})) as queue:
                held.append({i for i in ids if queue.store.get_task_by_remote_id(i) is not None})
        noticed = next(c for c in configs if status(c)["foreign_claims"])
        health = bridge_cli("--config", str(noticed), "health", env=env_with(None))
    finally:
        errors = [stop(daemon) for daemon in daemons]
    assert not held[0] & held[1], "a task was taken by both bridges"
    assert held[0] | held[1] == set(ids)
    assert health.returncode == 1 and "TASKMANAGER_WORKER_ID" in health.stdout
    assert any("must be unique per bridge" in err for err in errors)


def test_a_lease_shorter_than_the_assumed_duration_still_gets_work_done(tmp_path: Path):
    with EmulatorServer(api_key=KEY, claim_timeout=3) as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        ids = [admin.create_task(TYPE, {"n": n}) for n in range(20)]
        config = write_config(tmp_path, server, lease_seconds=3, lease_margin_seconds=1)
        daemon = start_daemon(config, env_with(KEY))
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "--config", str(config), "worker"),
                *("--handler", "tests.faults.handlers:compute", "--type", TYPE),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env_with(None, CRASH_RUN_LOG=str(tmp_path / "runs.log")),
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            done = wait_until(lambda: all(admin.get_task(i).status == "completed" for i in ids), 60)
        finally:
            stop(worker)
            err = stop(daemon)
        assert done, "tasks were not all completed: claiming stalled"
        assert "longer than lease_seconds - lease_margin_seconds" in err  # the start-up warning
        assert all(admin.get_task(i).attempts == 1 for i in ids)
        runs = [line.split() for line in (tmp_path / "runs.log").read_text().splitlines()]
        starts = sorted(int(n) for _pid, event, n, _at in runs if event == "start")
        assert starts == list(range(20))  # each task ran once


def test_an_outage_does_not_outlive_a_restart(tmp_path: Path, server: EmulatorServer):
    admin = server.client()
    config = write_config(tmp_path, server)
    server.go_down()
    daemon = start_daemon(config, env_with(KEY))
    try:
        assert wait_until(lambda: status(config)["in_outage"] is True, 30)
    finally:
        stop(daemon)
    server.come_back()
    for n in range(3):
        admin.create_task(TYPE, {"n": n})
    daemon = start_daemon(config, env_with(KEY))
    try:
        with LocalQueue(config=BridgeConfig.load(config, env={})) as queue:
            assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 3, 30)
        doc = status(config)
    finally:
        stop(daemon)
    assert doc["in_outage"] is False and doc["contact"]["state"] == "ok"  # type: ignore[index]


def test_the_daemon_starts_in_spite_of_a_write_lock_held_past_its_busy_timeout(
    tmp_path: Path, server: EmulatorServer
):
    import sqlite3

    admin = server.client()
    config = write_config(tmp_path, server, busy_timeout_seconds=0.5)
    locker = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    log = tmp_path / "daemon.log"
    with log.open("w") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--config", str(config), "run"],
            stderr=sink,
            env=env_with(KEY),
        )
    try:
        assert wait_until(lambda: "database trouble while starting" in log.read_text(), 60), (
            log.read_text()
        )
        assert daemon.poll() is None, "it gave up"
        locker.execute("ROLLBACK")
        remote_id = admin.create_task(TYPE, {"n": 1})
        assert wait_until(lambda: admin.get_task(remote_id).status == "claimed", 30)
    finally:
        locker.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    err = log.read_text()
    assert daemon.returncode == 0, err
    assert "database usable again" in err and "Traceback" not in err
