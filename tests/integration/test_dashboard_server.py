"""The daemon's HTTP port over real HTTP: the page, /healthz, /status.json, /metrics with
and without prometheus-client, and the dead-row actions with their guards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from bridge import BridgeConfig, LocalQueue
from bridge.dashboard_server import ActionPolicy, DashboardApp, DashboardServer
from bridge.errors import BridgeConfigError
from bridge.metrics import Metrics
from bridge.migrate import upgrade
from bridge.operations import Operations
from taskmanager.emulator import EmulatorServer

from .helpers import bridge_cli, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = (sys.executable, "-m", "bridge")
TOKEN = "s3cret-dashboard-token"


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[LocalQueue]:
    url = str(tmp_path / "dash.db")
    upgrade(url)
    with LocalQueue(url) as q:
        yield q


def _dead_row(queue: LocalQueue) -> int:
    entry = queue.create_remote_task("t.dash", {"n": 1})
    queue.store.settle_outbox(entry.id, "dead", "API Error 404: Task type not found", _now())
    return entry.id


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _serve(queue: LocalQueue, policy: ActionPolicy, metrics: bool = False) -> DashboardServer:
    operations = Operations(queue.store, BridgeConfig.load(env={}, db_url=queue.config.db_url))
    render = Metrics(operations).render if metrics else None
    server = DashboardServer(DashboardApp(operations, policy, render), "127.0.0.1", 0)
    server.start()
    return server


@pytest.fixture
def served(queue: LocalQueue) -> Iterator[tuple[LocalQueue, str]]:
    server = _serve(queue, ActionPolicy(enabled=False), metrics=True)
    try:
        yield queue, server.url
    finally:
        server.stop()


def test_page_healthz_status_and_metrics(served: tuple[LocalQueue, str]):
    queue, url = served
    queue.enqueue("t.dash", {"n": 1})
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'data-metric="tasks.t.dash.queued" data-value="1"' in page.text
    health = requests.get(url + "healthz", timeout=10)
    assert health.status_code == 503 and "never run" in health.text
    status = requests.get(url + "status.json", timeout=10).json()
    assert status["tasks"]["t.dash"]["queued"] == 1
    metrics = requests.get(url + "metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'taskmanager_bridge_tasks{status="queued",type="t.dash"} 1.0' in metrics.text
    assert requests.get(url + "nope", timeout=10).status_code == 404


def test_actions_off_by_default(served: tuple[LocalQueue, str]):
    queue, url = served
    row = _dead_row(queue)
    page = requests.get(url, timeout=10).text
    assert "<button" not in page and "outbox retry ID" in page
    refused = requests.post(url + "actions", data={"retry": row}, timeout=10)
    assert refused.status_code == 403 and "actions are off" in refused.text
    entry = queue.store.outbox_entry(row)
    assert entry is not None and entry.status == "dead"


def test_loopback_actions_retry_and_discard_from_the_page_only(queue: LocalQueue):
    first, second = _dead_row(queue), _dead_row(queue)
    server = _serve(queue, ActionPolicy(enabled=True))
    try:
        page = requests.get(server.url, timeout=10).text
        assert f'name="retry" value="{first}"' in page and "password" not in page
        foreign = requests.post(
            server.url + "actions",
            data={"retry": first},
            headers={"Origin": "http://evil.example"},
            timeout=10,
            allow_redirects=False,
        )
        assert foreign.status_code == 403
        rebound = requests.post(
            server.url + "actions",
            data={"retry": first},
            headers={"Host": f"evil.example:{server.port}"},
            timeout=10,
            allow_redirects=False,
        )
        assert rebound.status_code == 403
        entry = queue.store.outbox_entry(first)
        assert entry is not None and entry.status == "dead"
        done = requests.post(
            server.url + "actions",
            data={"retry": first},
            headers={"Origin": server.url.rstrip("/")},
            timeout=10,
            allow_redirects=False,
        )
        assert done.status_code == 303
        shown = requests.get(server.url + done.headers["Location"].lstrip("/"), timeout=10).text
        assert f"outbox row {first}: pending again" in shown
        gone = requests.post(server.url + "actions", data={"discard": second}, timeout=10)
        assert gone.status_code == 200  # after the redirect
        assert [queue.store.outbox_entry(i).status for i in (first, second)] == [  # type: ignore[union-attr]
            "pending",
            "superseded",
        ]
        again = requests.post(server.url + "actions", data={"retry": first}, timeout=10)
        assert again.status_code == 400 and "not dead" in again.text
        forged = requests.get(server.url + "?note=<script>alert(1)</script>", timeout=10).text
        assert "<script>alert" not in forged
    finally:
        server.stop()


def test_token_guards_actions_and_never_reaches_the_page(queue: LocalQueue):
    with pytest.raises(BridgeConfigError, match="BRIDGE_DASHBOARD_TOKEN"):
        ActionPolicy.decide(True, None, "0.0.0.0")
    row = _dead_row(queue)
    server = _serve(queue, ActionPolicy.decide(True, TOKEN, "0.0.0.0"))
    try:
        page = requests.get(server.url, timeout=10).text
        assert 'type="password"' in page and TOKEN not in page
        wrong = requests.post(server.url + "actions", data={"retry": row, "token": "x"}, timeout=10)
        assert wrong.status_code == 403 and TOKEN not in wrong.text
        right = requests.post(
            server.url + "actions",
            data={"retry": row},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
            allow_redirects=False,
        )
        assert right.status_code == 303
        entry = queue.store.outbox_entry(row)
        assert entry is not None and entry.status == "pending"
    finally:
        server.stop()


def test_run_serves_the_page_without_prometheus_client(tmp_path: Path, queue: LocalQueue):
    blocker = tmp_path / "no_prometheus" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    port = free_port()
    with EmulatorServer() as server:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{queue.config.db_url}"\ntypes = ["t.dash"]\n'
            f'[taskmanager]\napi_url = "{server.url}"\n'
        )
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": server.api_key,
            "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(ROOT)]),
        }
        daemon = subprocess.Popen(
            [*BRIDGE, "--config", str(config), "run", "--metrics-port", str(port)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:

            def healthy() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
                except requests.RequestException:
                    return False

            assert wait_until(healthy, 30), "the daemon's /healthz never answered 200"
            page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
            assert page.status_code == 200 and "Tasks by type" in page.text
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert metrics.status_code == 404 and "prometheus-client" in metrics.text
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err
        assert "no /metrics: prometheus-client is not installed" in err


def test_run_on_a_busy_port_is_one_line(tmp_path: Path, queue: LocalQueue):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "TASKMANAGER_API_KEY": "k", "BRIDGE_TYPES": "t.dash"}
        done = bridge_cli(
            "--db-url", queue.config.db_url, "run", "--metrics-port", str(port), env=env
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in done.stderr
