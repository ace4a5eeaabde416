"""health, prune, outbox discard, status --watch, JSON logs and Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from bridge import BridgeConfig, LocalQueue
from bridge.cli.common import parse_age
from bridge.daemon.jobs import DaemonJobs
from bridge.errors import BridgeError
from bridge.ops.metrics import Metrics
from bridge.ops.operations import Operations
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from .conftest import Clock
from .helpers import bridge_cli as cli
from .helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
TYPE = "obs.work"


@pytest.fixture
def db(tmp_path) -> str:
    url = str(tmp_path / "obs.db")
    upgrade(url)
    return url


def test_health_reports_daemon_and_outbox(db: str, clock: Clock):
    never = cli("--db-url", db, "health")
    assert never.returncode == 1 and "never run" in never.stdout
    with EmulatorServer() as server, LocalQueue(db, clock=clock) as queue:
        config = BridgeConfig.load(env={}, db_url=db, types=[TYPE])
        client = TaskManagerClient(
            TaskManagerConfig.from_env({}, api_url=server.url, api_key=server.api_key), now=clock
        )
        bridge = DaemonJobs(queue.store, client, config)
        from datetime import datetime, timezone

        bridge.reap_tick(datetime.now(timezone.utc))
        healthy = cli("--db-url", db, "health")
        assert healthy.returncode == 0 and healthy.stdout.strip() == "healthy"
        queue.create_remote_task(TYPE, {"n": 1})
        late = cli("--db-url", db, "health", "--max-outbox-age", "0")
        assert late.returncode == 1 and "oldest pending outbox row" in late.stdout
        stale = cli("--db-url", db, "health", "--max-tick-age", "0")
        assert stale.returncode == 1 and "last ticked" in stale.stdout


def test_prune_and_discard_keep_what_matters(db: str, clock: Clock):
    with LocalQueue(db, clock=clock) as queue:
        delivered = queue.create_remote_task(TYPE, {"n": 1})
        dead = queue.create_remote_task(TYPE, {"n": 2})
        pending = queue.create_remote_task(TYPE, {"n": 3})
        queue.store.settle_outbox(delivered.id, "delivered", None, clock.now - timedelta(days=9))
        queue.store.settle_outbox(dead.id, "dead", "400 Task type not found", clock.now)
    pruned = cli("--db-url", db, "prune", "--older-than", "7d")
    assert pruned.returncode == 0 and "pruned 1 settled outbox row(s)" in pruned.stdout
    discarded = cli("--db-url", db, "outbox", "discard", str(dead.id))
    assert "1 dead row(s) discarded" in discarded.stdout
    with LocalQueue(db) as queue:
        rows = {e.id: e for e in queue.outbox()}
    assert delivered.id not in rows
    assert rows[dead.id].status == "superseded"
    assert rows[dead.id].last_error.endswith("dead because: 400 Task type not found")
    assert rows[pending.id].status == "pending"
    bad = cli("--db-url", db, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than" in bad.stderr


def test_parse_age_units():
    assert parse_age("7d") == timedelta(days=7) and parse_age("90s") == timedelta(seconds=90)
    assert parse_age("1.5h") == timedelta(minutes=90) and parse_age("30m") == timedelta(minutes=30)
    assert parse_age("36500d") == timedelta(days=36500)


@pytest.mark.parametrize(
    "text", ["7", "90", "-3m", "0d", "inf", "infd", "nand", "1e3d", "36501d", "9" * 400 + "d", ""]
)
def test_parse_age_refuses_what_is_not_an_age_with_its_unit(text: str):
    with pytest.raises(BridgeError, match=r"--older-than must be a positive age with its unit"):
        parse_age(text)


def test_prune_without_a_unit_deletes_nothing(db: str, clock: Clock):
    with LocalQueue(db, clock=clock) as queue:
        delivered = queue.create_remote_task(TYPE, {"n": 1})
        queue.store.settle_outbox(delivered.id, "delivered", None, clock.now - timedelta(days=9))
    for text in ("7", "inf"):
        refused = cli("--db-url", db, "prune", "--older-than", text)
        assert refused.returncode == 2 and "with its unit" in refused.stderr
        assert "Traceback" not in refused.stderr
    with LocalQueue(db) as queue:
        assert [e.id for e in queue.outbox()] == [delivered.id]


def test_status_watch_refreshes_until_interrupted(db: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--db-url", db, "status", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    output: list[str] = []
    assert process.stdout is not None
    while not any("left" in line and "(pending)" in line for line in output):
        line = process.stdout.readline()
        if not line:  # end of output: the process is gone, it will print no more
            process.kill()
            _, err = process.communicate(timeout=20)
            pytest.fail(
                f"status --watch ended (exit {process.returncode}) before it showed rates:\n"
                f"{''.join(output)}{err}"
            )
        output.append(line)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=20)
    assert process.returncode == 130  # interrupted, as documented for every command
    text = "".join(output)
    assert "(Ctrl-C to stop)" in text and "over the last" in text
    assert "outbox: settling 0.0/min; nothing left (pending)" in text


def test_json_logs_carry_task_fields_and_no_key(db: str):
    with LocalQueue(db) as queue:
        task = queue.enqueue("t.fail", {"no_x": 1})
    env = {**os.environ, "TASKMANAGER_API_KEY": "super-secret-key"}
    done = cli(
        "--db-url",
        db,
        "--log-format",
        "json",
        "worker",
        "--handler",
        "tests.integration.test_worker:square",
        "--type",
        "t.fail",
        "--max-tasks",
        "1",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    failure = next(line for line in lines if "failed" in line["message"])
    assert failure["level"] == "WARNING" and failure["logger"] == "bridge.worker"
    assert failure["task_id"] == task.id and failure["task_type"] == "t.fail"
    assert "super-secret-key" not in done.stderr + done.stdout


def test_metrics_count_and_read_the_database(db: str, clock: Clock):
    with EmulatorServer() as server, LocalQueue(db, clock=clock) as queue:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        admin.create_task(TYPE, {"n": 1})
        config = BridgeConfig.load(env={}, db_url=db, types=[TYPE])
        metrics = Metrics(Operations(queue.store, config))
        client = TaskManagerClient(
            TaskManagerConfig.from_env({}, api_url=server.url, api_key=server.api_key),
            now=clock,
            observer=metrics.observe_request,
        )
        bridge = DaemonJobs(queue.store, client, config, metrics=metrics)
        bridge.pull_tick(clock.now)
        queue.complete(queue.dequeue(), {"ok": True})
        bridge.push_tick(clock.now)
        text = metrics.render().decode()
    assert f'taskmanager_bridge_claims_total{{type="{TYPE}"}} 1.0' in text
    assert 'taskmanager_bridge_outbox_settled_total{kind="complete",status="delivered"} 1.0' in text
    assert f'taskmanager_bridge_tasks{{status="done",type="{TYPE}"}} 1.0' in text
    assert 'taskmanager_bridge_outbox_rows{status="delivered"} 1.0' in text
    assert (
        'taskmanager_bridge_request_seconds_count{endpoint="/tasks/{id}/complete",'
        'method="POST",status="200"} 1.0'
    ) in text
    assert server.api_key not in text


def test_run_serves_metrics_on_loopback(tmp_path, db: str):
    port = free_port()
    with EmulatorServer() as server:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\n[taskmanager]\napi_url = "{server.url}"\n'
        )
        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key}
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge",
                "--config",
                str(config),
                "run",
                "--metrics-port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:

            def scraped() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).ok
                except requests.RequestException:
                    return False

            assert wait_until(scraped, 20)
            body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "taskmanager_bridge_seconds_since_contact" in body
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err
        assert f"metrics on http://127.0.0.1:{port}/metrics" in err
