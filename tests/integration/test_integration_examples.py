"""The integration guide's examples, run against the emulator as a user would run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from .helpers import wait_until

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]
TYPE = "youtube_channel_scrape"


@pytest.fixture
def server():
    with EmulatorServer() as emulator:
        client = emulator.client()
        client.register_task_type(TYPE, "1.0", {"type": "object", "required": ["channel_url"]})
        emulator.seed_ids = [
            client.create_task(TYPE, {"channel_url": f"https://y/@c{i}"}) for i in range(3)
        ]
        emulator.admin = client
        yield emulator


def example(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def api_env(server: EmulatorServer) -> dict[str, str]:
    return {**os.environ, "TASKMANAGER_API_URL": server.url, "TASKMANAGER_API_KEY": server.api_key}


def test_direct_pattern(server):
    done = example("integration_direct.py", env=api_env(server))
    assert done.returncode == 0, done.stderr
    assert "handled 3 task(s) directly" in done.stdout
    assert [server.admin.get_task(i).result for i in server.seed_ids] == [{"ideas_found": 1}] * 3


def test_async_example(server, tmp_path):
    done = example("integration_async.py", str(tmp_path / "async.db"), env=api_env(server))
    assert done.returncode == 0, done.stderr
    assert "handled 3 task(s) on one event loop; reported 3 with the async client" in done.stdout
    rows = [server.admin.get_task(i) for i in server.seed_ids]
    assert all(row.status == "completed" for row in rows)
    assert [row.result for row in rows] == [
        {"ideas_found": len(f"https://y/@c{i}") % 5} for i in range(3)
    ]


def test_hybrid_pattern(server, tmp_path):
    done = example("integration_hybrid.py", str(tmp_path / "hybrid.db"), env=api_env(server))
    assert done.returncode == 0, done.stderr
    assert "synced and completed 3 task(s)" in done.stdout
    assert all(server.admin.get_task(i).status == "completed" for i in server.seed_ids)


def test_bridge_worker_pattern(server, tmp_path):
    db = str(tmp_path / "queue.db")
    upgrade(db)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'db_url = "{db}"\ntypes = ["{TYPE}"]\npoll_min_seconds = 0.1\n'
        f'push_interval_seconds = 0.1\n[taskmanager]\napi_url = "{server.url}"\n'
    )
    env = {**api_env(server), "BRIDGE_CONFIG": str(config)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        done = example("integration_bridge_worker.py", "3", env=env)
        assert done.returncode == 0, done.stderr
        assert "handled 3 task(s) through the local queue" in done.stdout
        assert wait_until(
            lambda: all(server.admin.get_task(i).status == "completed" for i in server.seed_ids), 20
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    results = [server.admin.get_task(i).result for i in server.seed_ids]
    assert [r["channel"] for r in results] == [f"https://y/@c{i}" for i in range(3)]
