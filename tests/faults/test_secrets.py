"""The API key never leaves the process that holds it except in its own header.

A full run, as processes, with debug logging in both formats, faults that make
every error path log (5xx, answers lost after commit, an outage), then every
operator command: afterwards the key is searched for in everything the run
produced: each process's output, the database file with its WAL and SHM, the
metrics page, the command outputs, every file left in the run's folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import requests

from bridge.migrate import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEY = "tmk-Secret-7f3c9a51e2d84b06"
TYPE = "secret.work"


def test_the_api_key_appears_nowhere_a_full_run_leaves(tmp_path: Path):
    db = str(tmp_path / "queue.db")
    upgrade(db)
    with EmulatorServer(api_key=KEY) as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        ids = [admin.create_task(TYPE, {"n": n}) for n in range(20)]
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\nprefetch = 10\n'
            "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
            "push_backoff_max_seconds = 0.3\nreconcile_interval_seconds = 1\n"
            f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 1\nretry_attempts = 1\n'
            "backoff_base = 0.05\n"
        )
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": KEY,
            "CRASH_RUN_LOG": str(tmp_path / "runs.log"),
        }
        base = [sys.executable, "-m", "bridge", "--config", str(config), "-v"]
        port = free_port()

        def start(name: str, *args: str) -> subprocess.Popen[bytes]:
            out = (tmp_path / f"{name}.out").open("wb")
            return subprocess.Popen([*base, *args], stdout=out, stderr=out, env=env, cwd=ROOT)

        daemon = start("daemon", "--log-format", "json", "run", "--metrics-port", str(port))
        worker = start(
            "worker", "worker", "--handler", "tests.faults.handlers:compute", "--type", TYPE
        )
        try:
            server.faults.fail_next(5, status=503)
            server.faults.drop_after_commit(2, path="/tasks/*/complete")
            assert wait_until(lambda: server.store.count_tasks("completed") >= 5, 30)
            daemon_log = tmp_path / "daemon.out"
            with server.outage():  # lasts until the daemon has met it and logged it
                assert wait_until(lambda: b"outage began" in daemon_log.read_bytes(), 30), (
                    "the daemon never logged the outage"
                )
            assert wait_until(lambda: server.store.count_tasks("completed") == len(ids), 60)
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            outputs = [
                subprocess.run(
                    [*base, *command], capture_output=True, env=env, cwd=ROOT, check=False
                )
                for command in (
                    ["status", "--json"],
                    ["status"],
                    ["outbox", "list", "--json"],
                    ["outbox", "list"],
                    ["health"],
                    ["db", "current"],
                    ["--log-format", "json", "health"],
                )
            ]
        finally:
            for process in (worker, daemon):
                process.send_signal(signal.SIGTERM)
            for process in (worker, daemon):
                process.wait(30)

    produced: dict[str, bytes] = {
        str(path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()
    }
    produced["metrics"] = metrics.encode()
    for index, result in enumerate(outputs):
        produced[f"command {index} stdout"] = result.stdout
        produced[f"command {index} stderr"] = result.stderr
    forms = {KEY.encode(), urllib.parse.quote(KEY).encode(), KEY.encode("utf-16-le")}
    leaks = [name for name, data in produced.items() if any(form in data for form in forms)]
    assert leaks == []
    # The search was over real output: the run logged, errors included.
    logs = produced[str(tmp_path / "daemon.out")] + produced[str(tmp_path / "worker.out")]
    assert b"503" in logs or b"Service Unavailable" in logs
    assert b"outage began" in logs
    assert any(name.endswith("queue.db") for name in produced)
    assert sum(len(data) for data in produced.values()) > 100_000
