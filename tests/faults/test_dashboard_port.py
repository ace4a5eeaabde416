"""Strangers at the daemon's HTTP port cannot stop its work.

The daemon runs as a process with an open-file limit of exactly what it computes it
needs, a worker beside it; then twice that many connections are opened to its
dashboard port and held without a byte sent. Each once cost the daemon a descriptor
and a thread for ever: at its limit its requests to the server failed with "Too many
open files", it reported an outage of a healthy server and claimed nothing. Now the
tasks created while they are held are claimed and completed, the probe answers, and
the daemon's descriptors stay under its limit.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from bridge import BridgeConfig
from bridge.daemon.descriptors import descriptor_need
from bridge.ops.dashboard_server import DashboardLimits
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TYPE = "port.work"
TASKS = 12


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_at_the_descriptor_limit_do_not_stop_claims(tmp_path: Path):
    db = str(tmp_path / "queue.db")
    upgrade(db)
    config = tmp_path / "bridge.toml"
    with EmulatorServer() as server:
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\n'
            "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
            "push_backoff_max_seconds = 0.3\n"
            f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 2\n'
        )
        limit = descriptor_need(BridgeConfig.load(config, env={}), DashboardLimits().connections)
        idle_count = 2 * limit.total
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < idle_count + 100:
            pytest.skip(f"this test opens {idle_count} sockets; raise `ulimit -n`")
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": server.api_key,
            "CRASH_RUN_LOG": str(tmp_path / "runs.log"),
        }
        base = [sys.executable, "-m", "bridge", "--config", str(config)]
        port = free_port()
        log = tmp_path / "daemon.out"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [*base, "run", "--metrics-port", str(port)],
                stdout=out,
                stderr=out,
                env=env,
                cwd=ROOT,
                preexec_fn=lambda: resource.setrlimit(
                    resource.RLIMIT_NOFILE, (limit.total, limit.total)
                ),
            )
        worker = subprocess.Popen(
            [*base, "worker", "--handler", "tests.faults.handlers:compute", "--type", TYPE],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        idle: list[socket.socket] = []
        try:

            def answers() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
                except requests.RequestException:
                    return False

            assert wait_until(answers, 30), "the daemon's /healthz never answered 200"
            for _ in range(idle_count):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break  # the port takes no more connections (its backlog is full)
            admin = server.client()
            for n in range(TASKS):
                admin.create_task(TYPE, {"n": n})
            assert wait_until(lambda: server.store.count_tasks("completed") == TASKS, 30), (
                f"{server.store.count_tasks('completed')}/{TASKS} completed with "
                f"{idle_count} idle connections held; daemon log:\n{log.read_text()[-3000:]}"
            )
            assert len(idle) == idle_count, f"the port stopped accepting after {len(idle)}"
            assert answers(), "the probe went unanswered while the connections were held"
            assert _descriptors(daemon.pid) < limit.total
        finally:
            for client in idle:
                client.close()
            for process in (worker, daemon):
                process.send_signal(signal.SIGTERM)
            for process in (worker, daemon):
                process.wait(30)
    text = log.read_text()
    assert daemon.returncode == 0, text[-3000:]
    assert "Too many open files" not in text
    assert "open-file limit" not in text  # the limit given is exactly the need it computed
