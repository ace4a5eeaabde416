"""The API key and the passwords in api_url and db_url never leave the process that
holds them except in their own header or connection.

A full run, as processes, with debug logging in both formats, faults that make
every error path log (5xx, answers lost after commit, an outage), then every
operator command: afterwards the key and api_url's password are searched for in
everything the run produced: each process's output, the database file with its WAL
and SHM, the dashboard page, /status.json and the metrics page (read during the
outage, when they show its reason), the command outputs, every file left in the
run's folder. A PostgreSQL db_url's password is searched for in what every command
prints about that database, the hints to create its schema included.
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

from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEY = "tmk-Secret-7f3c9a51e2d84b06"
API_PASSWORD = "S3cretApiPw"  # api_url's userinfo: sent as HTTP Basic auth, shown as ***
TYPE = "secret.work"


def _forms(secret: str) -> set[bytes]:
    return {secret.encode(), urllib.parse.quote(secret).encode(), secret.encode("utf-16-le")}


def test_the_api_key_and_api_urls_password_appear_nowhere_a_full_run_leaves(tmp_path: Path):
    db = str(tmp_path / "queue.db")
    upgrade(db)
    with EmulatorServer(api_key=KEY) as server:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        ids = [admin.create_task(TYPE, {"n": n}) for n in range(20)]
        api_url = server.url.replace("http://", f"http://user:{API_PASSWORD}@", 1)
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\nprefetch = 10\n'
            "poll_min_seconds = 0.05\npoll_max_seconds = 0.3\npush_interval_seconds = 0.05\n"
            "push_backoff_max_seconds = 0.3\nreconcile_interval_seconds = 1\n"
            f'[taskmanager]\napi_url = "{api_url}"\ntimeout = 1\nretry_attempts = 1\n'
            "backoff_base = 0.05\n"
        )
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": KEY,
            "CRASH_RUN_LOG": str(tmp_path / "runs.log"),
        }
        base = [sys.executable, "-m", "bridge", "--config", str(config), "-v"]
        port = free_port()

        def command(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [*base, *args], capture_output=True, env=env, cwd=ROOT, check=False
            )

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
                # While it lasts, the page, /status.json, status and the database show
                # its reason, which names the URL of the request that met it.
                page = f"http://127.0.0.1:{port}"
                assert wait_until(
                    lambda: requests.get(f"{page}/status.json", timeout=5).json()["in_outage"], 30
                )
                pages = [
                    requests.get(page + path, timeout=5).text for path in ("/", "/status.json")
                ]
                during = [command("status", "--json"), command("status")]
                stored = {
                    f"{path.name} during the outage": path.read_bytes()
                    for path in tmp_path.glob("queue.db*")
                }
            assert wait_until(lambda: server.store.count_tasks("completed") == len(ids), 60)
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            outputs = during + [
                command(*args)
                for args in (
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
    produced["page /"], produced["/status.json"] = (text.encode() for text in pages)
    produced.update(stored)
    for index, result in enumerate(outputs):
        produced[f"command {index} stdout"] = result.stdout
        produced[f"command {index} stderr"] = result.stderr
    written = produced.pop(str(config))  # the one place the password belongs
    assert API_PASSWORD.encode() in written and KEY.encode() not in written
    forms = _forms(KEY) | _forms(API_PASSWORD)
    leaks = [name for name, data in produced.items() if any(form in data for form in forms)]
    assert leaks == []
    # The search was over real output: the run logged, errors included, naming the URL.
    logs = produced[str(tmp_path / "daemon.out")] + produced[str(tmp_path / "worker.out")]
    assert b"503" in logs or b"Service Unavailable" in logs
    assert b"outage began" in logs
    assert b"user:***@127.0.0.1" in logs
    assert b"user:***@127.0.0.1" in produced["/status.json"]
    assert any(name.endswith("queue.db") for name in produced)
    assert sum(len(data) for data in produced.values()) > 100_000


DB_PASSWORD = "S3cretPw"  # PostgreSQL's trust auth (the test server's) ignores it


def _with_password(url: str) -> tuple[str, str]:
    """``url`` with a password in its userinfo (its own if it has one), and the password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url, urllib.parse.unquote(parts.password)
    netloc = f"{parts.username or 'postgres'}:{DB_PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), DB_PASSWORD


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_db_urls_password_appears_in_no_command_output_nor_hint(db_url: str):
    url, password = _with_password(db_url)
    env = {
        **os.environ,
        "BRIDGE_TYPES": TYPE,
        "TASKMANAGER_API_URL": "http://127.0.0.1:9/api",
        "TASKMANAGER_API_KEY": "not-a-real-key",  # run refuses to start without one
    }
    base = [sys.executable, "-m", "bridge", "--db-url", url]

    def commands(*argvs: list[str]) -> list[bytes]:
        """Each command's stdout and stderr; run side by side (each is a Python start-up)."""
        running = [
            subprocess.Popen(
                [*base, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
            for argv in argvs
        ]
        return [process.communicate(timeout=60)[0] for process in running]

    # No schema yet: every command refuses with the hint that names the way to create it.
    worker = ["worker", "--handler", "tests.faults.handlers:compute", "--type", TYPE]
    refused = [["status"], ["status", "--json"], ["health"], ["db", "current"], worker, ["run"]]
    empty = commands(*refused)
    (created,) = commands(["db", "upgrade"])
    upgraded = commands(["status", "--json"], ["health"], ["db", "current"])
    assert b"at schema revision" in created, created
    parts = urllib.parse.urlsplit(url)
    login = parts.netloc.rpartition("@")[0]
    base[-1] = urllib.parse.urlunsplit(parts._replace(netloc=f"{login}@127.0.0.1:{free_port()}"))
    (unreachable,) = commands(["status"])
    texts = [*empty, created, *upgraded, unreachable]
    assert [text for text in texts if any(form in text for form in _forms(password))] == []
    # The outputs were the ones meant: hints and errors naming the database, masked.
    assert all(b"Create it with: taskmanager-bridge --db-url" in text for text in empty[:3])
    named = [*empty, created, upgraded[0], upgraded[2], unreachable]
    assert all(b":***@" in text for text in named)
    assert b"cannot be reached" in unreachable
