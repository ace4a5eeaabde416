"""The daemon's HTTP port over real HTTP: the page, /healthz, /status.json, /metrics with
and without prometheus-client, the dead-row actions with their guards, and what a
stranger's connections may take (idle and slow clients, a rebound host name)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from bridge import BridgeConfig, LocalQueue
from bridge.errors import BridgeConfigError
from bridge.ops.dashboard_app import ActionPolicy, DashboardApp
from bridge.ops.dashboard_server import DashboardLimits, DashboardServer
from bridge.ops.metrics import Metrics
from bridge.ops.operations import Operations
from bridge.storage.migrations import upgrade
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


def _serve(
    queue: LocalQueue,
    policy: ActionPolicy,
    metrics: bool = False,
    limits: DashboardLimits | None = None,
    host: str = "127.0.0.1",
) -> DashboardServer:
    operations = Operations(queue.store, BridgeConfig.load(env={}, db_url=queue.config.db_url))
    render = Metrics(operations).render if metrics else None
    app = DashboardApp(operations, policy, render)
    server = DashboardServer(app, host, 0, limits=limits or DashboardLimits())
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


def test_task_pages_off_loopback_answer_only_the_bearer_token(queue: LocalQueue):
    task = queue.enqueue("t.dash", {"secret_param": "shown-only-with-token"})
    server = _serve(queue, ActionPolicy.decide(True, TOKEN, "0.0.0.0"), host="0.0.0.0")
    base = f"http://127.0.0.1:{server.port}"
    try:
        for path in ("/tasks", f"/tasks/{task.id}"):
            bare = requests.get(base + path, timeout=10)
            assert bare.status_code == 403 and "shown-only-with-token" not in bare.text
            wrong = requests.get(base + path, headers={"Authorization": "Bearer x"}, timeout=10)
            assert wrong.status_code == 403
        right = requests.get(
            base + "/tasks", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert right.status_code == 200 and "t.dash" in right.text
        one = requests.get(
            f"{base}/tasks/{task.id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert one.status_code == 200 and "shown-only-with-token" in one.text
        assert requests.get(base + "/", timeout=10).status_code == 200
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


@pytest.mark.parametrize("hard", [100, 4096], ids=["short", "raised"])
def test_run_checks_its_open_file_limit_at_start(queue: LocalQueue, hard: int):
    """The check runs before the port is bound (a busy port ends the run right after)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip(f"the hard open-file limit here is below {hard}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "TASKMANAGER_API_KEY": "k", "BRIDGE_TYPES": "t.dash"}
        done = bridge_cli(
            "--db-url",
            queue.config.db_url,
            "run",
            "--metrics-port",
            str(port),
            env=env,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard)),
        )
    assert done.returncode == 2, done.stderr
    if hard == 100:
        assert "open-file limit too low" in done.stderr
        assert "its limit is 100 (hard limit 100)" in done.stderr
        assert "LimitNOFILE=" in done.stderr and "ulimit -n" in done.stderr
    else:
        assert "open-file limit raised from 100 to" in done.stderr
        assert "too low" not in done.stderr


# -- what a stranger's connections may take ----------------------------------------------
LIMITS = DashboardLimits(connections=8, request_seconds=1.0)
IDLE = 200  # far more connections than the cap


def _server_connections(port: int) -> int:
    """Descriptors of this process that are connections accepted on ``port`` (their
    local end is the port; the listening socket is not counted)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    local = f"0100007F:{port:04X}"  # 127.0.0.1:port as /proc/net/tcp writes it
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1] == local and row[3] != "0A" and row[9] in inodes)


def _closed_by_peer(client: socket.socket, wait: float) -> bool:
    """Whether the server closed this connection (EOF or reset) within ``wait`` seconds."""
    client.settimeout(wait)
    try:
        return client.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_connections_take_neither_threads_nor_descriptors_nor_the_probe(
    queue: LocalQueue,
):
    server = _serve(queue, ActionPolicy(enabled=False), limits=LIMITS)
    threads_before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        started = time.monotonic()
        with requests.get(server.url + "status.json", timeout=5) as probe:
            assert probe.status_code == 200, probe.text
        assert time.monotonic() - started < 2.0
        held = _server_connections(server.port)
        assert 0 < held <= LIMITS.connections, f"the server holds {held} connections"
        threads = threading.active_count() - threads_before
        assert threads <= LIMITS.connections, f"{threads} threads for idle connections"
        time.sleep(LIMITS.request_seconds)
        still_open = [c for c in idle if not _closed_by_peer(c, LIMITS.request_seconds)]
        assert still_open == [], f"{len(still_open)} idle connections never closed"
    finally:
        for client in idle:
            client.close()
        server.stop()


def test_a_client_trickling_its_headers_is_dropped(queue: LocalQueue):
    server = _serve(queue, ActionPolicy(enabled=False), limits=LIMITS)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            dropped_after = None
            while time.monotonic() - started < LIMITS.request_seconds * 4:
                try:
                    slow.sendall(b"X")  # one byte of a header, never its end
                except OSError:
                    dropped_after = time.monotonic() - started
                    break
                if _closed_by_peer(slow, 0.2):
                    dropped_after = time.monotonic() - started
                    break
            assert dropped_after is not None, "a trickling client kept its connection"
            assert dropped_after < LIMITS.request_seconds + 1.0
    finally:
        server.stop()


def test_a_kept_alive_connection_is_closed_once_idle(queue: LocalQueue):
    server = _serve(queue, ActionPolicy(enabled=False), limits=LIMITS)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            with client.makefile("rb") as answer:
                assert answer.readline().startswith(b"HTTP/1.1 200")
                headers = dict(
                    line.decode().split(": ", 1) for line in iter(answer.readline, b"\r\n")
                )
                answer.read(int(headers["Content-Length"].strip()))
            assert not _closed_by_peer(client, 0.1), "closed at once: no keep-alive at all"
            started = time.monotonic()
            assert _closed_by_peer(client, LIMITS.request_seconds * 3), "kept open while idle"
            assert time.monotonic() - started < LIMITS.request_seconds + 1.0
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["", "status.json", "metrics", "healthz"])
def test_a_rebound_name_reads_nothing_on_loopback(served: tuple[LocalQueue, str], path: str):
    _, url = served
    port = url.rstrip("/").rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.nip.io:{port}"):
        refused = requests.get(url + path, headers={"Host": host}, timeout=10)
        assert refused.status_code == 403, (host, refused.status_code)
        assert refused.text.count("\n") == 1 and "loopback" in refused.text
        assert "Tasks by type" not in refused.text and "outbox" not in refused.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        answered = requests.get(url + path, headers={"Host": host}, timeout=10)
        assert answered.status_code in (200, 503), (host, answered.status_code)  # 503: never ran
        assert "loopback" not in answered.text
