"""``python -m taskmanager.emulator`` as a real process: serves, logs requests, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from taskmanager import TaskManagerClient, TaskManagerConfig

from .helpers import free_port, wait_until

pytestmark = pytest.mark.acceptance


def test_cli_serves_logs_and_stops_cleanly(tmp_path):
    port = free_port()
    db = tmp_path / "emulator.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskmanager.emulator",
            "--port",
            str(port),
            "--api-key",
            "cli-secret",
            "--claim-timeout",
            "5",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        config = TaskManagerConfig.from_env(
            {}, api_url=f"http://127.0.0.1:{port}/api", api_key="cli-secret"
        )
        with TaskManagerClient(config) as client:
            assert wait_until(client.health_check), "emulator did not come up"
            client.register_task_type("cli.type", "1", {"type": "object"})
            task_id = client.create_task("cli.type", {"n": 1})
            assert client.get_task(task_id).status == "pending"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "POST /api/tasks -> 200" in output
    assert "claim timeout 5 s" in output
    assert "cli-secret" not in output
    assert db.exists()  # state kept in the file asked for


def test_cli_state_survives_restart_with_db_file(tmp_path):
    db = tmp_path / "state.db"
    ids = []
    for _ in range(2):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "taskmanager.emulator", "--port", str(port), "--db", str(db)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            config = TaskManagerConfig.from_env(
                {}, api_url=f"http://127.0.0.1:{port}/api", api_key="dev"
            )
            with TaskManagerClient(config) as client:
                assert wait_until(client.health_check)
                client.register_task_type("persist.type", "1", {"type": "object"})
                ids.append(client.create_task("persist.type", {"same": True}))
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert ids[0] == ids[1]  # deduplicated against the state of the first run
