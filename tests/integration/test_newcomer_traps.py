"""What a new user and an operator ran into on a fresh install, each as they met it: the
CLI as a real process, the daemon against the emulator over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.server_contact import Contact
from bridge.ops.dashboard_app import ActionPolicy, DashboardApp
from bridge.ops.dashboard_server import DashboardServer
from bridge.ops.operations import Operations
from bridge.storage import CONTACT_KEY, LAST_CONTACT_KEY, LAST_TICK_KEY, WORKER_ID_KEY
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig, TaskManagerProtocolError
from taskmanager.emulator import EmulatorServer

from .helpers import bridge_cli, wait_until

pytestmark = pytest.mark.acceptance
TYPE = "youtube_channel_scrape"


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would choose a database or a key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "TASKMANAGER_"))}
    return {**env, **extra}


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("taskmanager-bridge: error:"), done.stderr
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = str(tmp_path / "q.db")
    upgrade(url)
    return url


# -- 2. global options after the subcommand ------------------------------------------------
def test_global_options_are_accepted_after_the_subcommand(tmp_path: Path, db: str):
    (tmp_path / "handlers.py").write_text("def scrape(params):\n    return {}\n")
    worker = bridge_cli(
        "worker", "--handler", "handlers:scrape", "--type", TYPE, "--max-tasks", "0",
        "--db-url", db, "-v", "--log-format", "json",
        cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    status = bridge_cli("status", "--json", "--db-url", db, cwd=tmp_path, env=_env())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["database"] == f"sqlite:///{db}"
    nested = bridge_cli("db", "current", "--db-url", db, "-v", cwd=tmp_path, env=_env())
    assert nested.returncode == 0 and "up to date" in nested.stdout, nested.stderr


def test_a_global_option_given_before_and_after_the_subcommand_the_later_wins(
    tmp_path: Path, db: str
):
    elsewhere = str(tmp_path / "elsewhere.db")
    both = bridge_cli("--db-url", elsewhere, "status", "--json", "--db-url", db, env=_env())
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["database"] == f"sqlite:///{db}"
    before_only = bridge_cli("--db-url", db, "status", "--json", "-v", env=_env())
    assert json.loads(before_only.stdout)["database"] == f"sqlite:///{db}"
    assert not Path(elsewhere).exists()
    text_then_json = bridge_cli(
        "--log-format", "text", "--db-url", str(tmp_path / "none.db"), "health",
        "--log-format", "json", env=_env(),
    )  # fmt: skip
    _one_error_line(text_then_json)  # errors stay one plain line, whatever the log format


# -- 3. a handler module that fails on import ------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def scrape(params:\n    return {}\n", r"SyntaxError: .* \(.*broken\.py:1\)"),
        ("raise RuntimeError('no config for the scraper')\n", r"RuntimeError: no config for"),
        ("import sys\nsys.exit(3)\n", r"SystemExit: 3"),
    ],
    ids=["syntax error", "raises at import", "exits at import"],
)
def test_a_handler_module_that_fails_on_import_is_one_line_and_exit_2(
    tmp_path: Path, db: str, source: str, expected: str
):
    (tmp_path / "broken.py").write_text(source)
    done = bridge_cli(
        "--db-url", db, "worker", "--handler", "broken:scrape", "--type", TYPE,
        cwd=tmp_path, env=_env(),
    )  # fmt: skip
    line = _one_error_line(done)
    assert "'broken'" in line and "Traceback" not in done.stderr
    assert re.search(expected, line), line


# -- 4. no empty database file from a command that needs a schema ----------------------------
def test_no_command_but_db_upgrade_creates_the_default_database(tmp_path: Path):
    types = tmp_path / "types.json"
    types.write_text(json.dumps([{"name": TYPE, "version": "1", "param_schema": {}}]))
    (tmp_path / "handlers.py").write_text("def scrape(params):\n    return {}\n")
    env = _env(
        TASKMANAGER_API_KEY="dev",
        BRIDGE_TYPES=TYPE,
        TASKMANAGER_API_URL="http://127.0.0.1:9/api",
        TASKMANAGER_RETRY_ATTEMPTS="0",
    )
    default = tmp_path / "taskmanager-bridge.db"
    commands = {
        "status": ["status"],
        "health": ["health"],
        "worker": ["worker", "--handler", "handlers:scrape", "--type", TYPE],
        "run": ["run"],
        "outbox list": ["outbox", "list"],
        "outbox retry": ["outbox", "retry", "--dead"],
        "outbox discard": ["outbox", "discard", "--dead"],
        "register-types": ["register-types", str(types)],
        "prune": ["prune", "--older-than", "7d"],
        "db current": ["db", "current"],
    }
    created = []
    for name, argv in commands.items():
        done = bridge_cli(*argv, cwd=tmp_path, env=env)
        assert done.returncode != 0, f"{name}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, f"{name}: {done.stderr}"
        if name != "db current":
            assert "taskmanager-bridge db upgrade" in done.stderr, f"{name}: {done.stderr}"
        if default.exists():
            created.append(name)
            default.unlink()
    assert not created, f"these created an empty {default.name}: {created}"
    upgraded = bridge_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0 and default.exists(), upgraded.stderr


# -- 5. a worker for a type the daemon does not claim ----------------------------------------
def _worker_start(tmp_path: Path, db: str, config: str, *types: str) -> str:
    (tmp_path / "handlers.py").write_text("def scrape(params):\n    return {}\n")
    (tmp_path / "bridge.toml").write_text(f'db_url = "{db}"\n{config}')
    argv = ["worker", "--handler", "handlers:scrape", "--max-tasks", "0"]
    for task_type in types:
        argv += ["--type", task_type]
    done = bridge_cli(*argv, cwd=tmp_path, env=_env())
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_worker_for_a_type_the_daemon_does_not_claim_warns_with_the_close_name(
    tmp_path: Path, db: str
):
    err = _worker_start(tmp_path, db, f'types = ["{TYPE}"]\n', "youtube_chanel_scrape")
    (warning,) = [line for line in err.splitlines() if "WARNING" in line]
    assert "youtube_chanel_scrape" in warning and "not in the config's types" in warning
    assert f"did you mean {TYPE}?" in warning
    assert "only if queued locally" in warning


def test_no_warning_for_claimed_types_or_without_types(tmp_path: Path, db: str):
    assert "WARNING" not in _worker_start(tmp_path, db, f'types = ["{TYPE}"]\n', TYPE)
    assert "WARNING" not in _worker_start(tmp_path, db, "", "local.only")
    far = _worker_start(tmp_path, db, f'types = ["{TYPE}"]\n', TYPE, "reddit.posts")
    (warning,) = [line for line in far.splitlines() if "WARNING" in line]
    assert "reddit.posts" in warning and "did you mean" not in warning


# -- 7. run without an API key ----------------------------------------------------------------
def test_run_without_an_api_key_refuses_to_start_and_writes_nothing(tmp_path: Path, db: str):
    (tmp_path / "bridge.toml").write_text(f'db_url = "{db}"\ntypes = ["{TYPE}"]\n')
    done = bridge_cli("run", cwd=tmp_path, env=_env())
    line = _one_error_line(done)
    assert "TASKMANAGER_API_KEY" in line and "api_key" in line and "[taskmanager]" in line
    with LocalQueue(db) as queue:
        assert queue.store.get_state(WORKER_ID_KEY) is None, "run wrote to the database"
        assert queue.store.get_state(CONTACT_KEY) is None
    missing = tmp_path / "missing.db"
    again = bridge_cli("--db-url", str(missing), "run", cwd=tmp_path, env=_env(BRIDGE_TYPES=TYPE))
    assert "TASKMANAGER_API_KEY" in _one_error_line(again) and not missing.exists()


# -- 8. health that requires contact with the server ----------------------------------------
def _daemon_state(db: str, started_ago: float, answered_ago: float | None) -> None:
    """The state rows of a daemon that started ``started_ago`` s ago, ticks now, and last
    heard from the server ``answered_ago`` s ago (None: never)."""
    now = datetime.now(timezone.utc)
    with LocalQueue(db) as queue:
        store = queue.store
        state = "unknown" if answered_ago is None else "ok"
        since = now - timedelta(seconds=started_ago)
        store.set_state(CONTACT_KEY, Contact(state, since).to_json(), now)
        store.set_state(LAST_TICK_KEY, now.isoformat(), now)
        if answered_ago is not None:
            answered = now - timedelta(seconds=answered_ago)
            store.set_state(LAST_CONTACT_KEY, answered.isoformat(), now)


def test_health_require_contact_fails_while_the_server_has_not_answered(db: str):
    _daemon_state(db, started_ago=120, answered_ago=None)
    assert bridge_cli("--db-url", db, "health", env=_env()).returncode == 0  # unchanged default
    cut_off = bridge_cli("--db-url", db, "health", "--require-contact", "60", env=_env())
    assert cut_off.returncode == 1, cut_off.stdout + cut_off.stderr
    said = r"the server has not answered for 1[2-4]\d s \(limit 60 s; last answer: never\)"
    assert re.search(said, cut_off.stdout), cut_off.stdout
    young = bridge_cli("--db-url", db, "health", "--require-contact", "300", env=_env())
    assert young.returncode == 0, young.stdout  # the daemon has not run that long yet
    _daemon_state(db, started_ago=3600, answered_ago=10)
    assert bridge_cli("--db-url", db, "health", "--require-contact", "60").returncode == 0
    _daemon_state(db, started_ago=3600, answered_ago=600)
    stale = bridge_cli("--db-url", db, "health", "--require-contact", "60", env=_env())
    assert stale.returncode == 1 and "last answer: 60" in stale.stdout, stale.stdout
    bad = bridge_cli("--db-url", db, "health", "--require-contact", "soon", env=_env())
    assert bad.returncode == 2


def test_healthz_takes_require_contact_as_a_query_parameter(db: str):
    _daemon_state(db, started_ago=120, answered_ago=None)
    with LocalQueue(db) as queue:
        operations = Operations(queue.store, BridgeConfig.load(env={}, db_url=db))
        server = DashboardServer(
            DashboardApp(operations, ActionPolicy(enabled=False), None), "127.0.0.1", 0
        )
        server.start()
        try:
            plain = requests.get(f"{server.url}healthz", timeout=10)
            assert (plain.status_code, plain.text) == (200, "healthy\n")
            strict = requests.get(f"{server.url}healthz?require_contact=60", timeout=10)
            assert strict.status_code == 503 and "has not answered for 1" in strict.text
            bad = requests.get(f"{server.url}healthz?require_contact=soon", timeout=10)
            assert bad.status_code == 400 and "require_contact" in bad.text
        finally:
            server.stop()


# -- 9. an api_url without /api --------------------------------------------------------------
def test_the_emulator_answers_outside_api_with_the_web_servers_html_404():
    with EmulatorServer() as server:
        root = server.url.removesuffix("/api")
        for path in ("/health", "/tasks", "/", "/apiary/health"):
            answer = requests.get(root + path, timeout=10)
            assert answer.status_code == 404, path
            assert answer.headers["Content-Type"].startswith("text/html"), path
            assert answer.text.lstrip().startswith("<!DOCTYPE html>"), path
        assert requests.get(server.url + "/health", timeout=10).json()["success"] is True
        config = TaskManagerConfig.from_env({}, api_url=root, api_key=server.api_key)
        with TaskManagerClient(config) as client, pytest.raises(TaskManagerProtocolError) as err:
            client.create_task(TYPE, {"channel_url": "https://youtube.com/@x"})
    message = str(err.value)
    assert "HTTP 404" in message and "<!DOCTYPE html>" in message
    assert "api_url" in message and "/api" in message


# -- 11. what the daemon says at INFO --------------------------------------------------------
@pytest.fixture
def running_daemon(tmp_path: Path, db: str) -> Iterator[tuple[EmulatorServer, Path]]:
    with EmulatorServer() as server:
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        (tmp_path / "bridge.toml").write_text(
            f'db_url = "{db}"\ntypes = ["{TYPE}"]\npush_backoff_max_seconds = 0.5\n'
            "poll_max_seconds = 0.5\n"
            f'[taskmanager]\napi_url = "{server.url}"\ntimeout = 1\nbackoff_max = 0.2\n'
        )
        yield server, tmp_path


def test_the_daemon_at_info_says_what_matters_once(
    running_daemon: tuple[EmulatorServer, Path], db: str
):
    server, folder = running_daemon
    log = folder / "daemon.log"
    with log.open("w") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"],
            stderr=sink,
            stdout=subprocess.DEVNULL,
            cwd=folder,
            env=_env(TASKMANAGER_API_KEY=server.api_key),
        )
    try:
        assert wait_until(lambda: "bridge started" in log.read_text(), 20)
        client = server.client()
        with LocalQueue(db) as queue:
            for n in range(3):
                client.create_task(TYPE, {"n": n})
            assert wait_until(lambda: queue.status().tasks.get((TYPE, "queued"), 0) == 3, 20)
            while (task := queue.dequeue()) is not None:
                queue.complete(task, {"ok": True})
                time.sleep(0.3)  # each result goes out in a push of its own
            assert wait_until(lambda: queue.status().outbox.get("delivered", 0) == 3, 20)
        server.go_down()
        assert wait_until(lambda: "outage began" in log.read_text(), 20)
        time.sleep(4)  # the claim and watch jobs keep trying meanwhile
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    text = log.read_text()
    assert "jobs.scheduler" not in text and "apscheduler" not in text, text
    assert "delivered 1 outbox row(s)" not in text, text
    assert "delivered 3 outbox rows in the last" in text, text  # said once, at the stop
    retries_after_outage = [
        line
        for line in text.split("outage began", 1)[1].splitlines()
        if "taskmanager.client" in line and "; retry " in line
    ]
    assert not retries_after_outage, "\n".join(retries_after_outage)
    assert text.count("outage began") == 1


# -- 12. what status, the dashboard and the metrics say ------------------------------------
def test_status_after_prune_says_the_history_was_pruned(tmp_path: Path, db: str):
    fresh = bridge_cli("--db-url", db, "status", env=_env())
    assert "(no tasks yet)" in fresh.stdout, fresh.stdout
    old = datetime.now(timezone.utc) - timedelta(days=9)
    with LocalQueue(db, clock=lambda: old) as queue:
        queue.enqueue(TYPE, {"n": 1})
        queue.complete(queue.dequeue(), {"ok": True})
    pruned = bridge_cli("--db-url", db, "prune", "--older-than", "7d", env=_env())
    assert "1 finished task(s)" in pruned.stdout, pruned.stdout + pruned.stderr
    after = bridge_cli("--db-url", db, "status", env=_env())
    assert "(no tasks yet)" not in after.stdout, after.stdout
    assert "nothing queued or running; finished tasks pruned" in after.stdout, after.stdout
    document = json.loads(bridge_cli("--db-url", db, "status", "--json", env=_env()).stdout)
    assert document["last_prune"] is not None


def _with_claim_plan(db: str, contact: Contact) -> Operations:
    queue = LocalQueue(db)
    now = datetime.now(timezone.utc)
    plan = {"limit": 10, "queued": 0, "startable": 54, "duration": 10.0, "measured": False,
            "reason": "", "at": now.isoformat()}  # fmt: skip
    queue.store.set_state(f"claim_plan:{TYPE}", json.dumps(plan), now)
    queue.store.set_state(CONTACT_KEY, contact.to_json(), now)
    return Operations(queue.store, BridgeConfig.load(env={}, db_url=db, types=[TYPE]))


def test_claim_limits_say_claiming_is_stopped_while_the_key_is_refused(db: str):
    from bridge.ops.dashboard_page import render
    from bridge.ops.status_text import status_lines

    now = datetime.now(timezone.utc)
    refused = Contact("auth_failed", now, "authentication failed: API Error 401")
    operations = _with_claim_plan(db, refused)
    page = render(operations.dashboard(now))
    claims = page.split("<h2>Claim limit</h2>", 1)[1].split("</section>", 1)[0]
    assert "claiming is stopped: the server refuses the API key" in claims, claims
    assert f'data-metric="claim_limits.{TYPE}.limit" data-value="10">stopped<' in claims
    text = "\n".join(status_lines(operations.snapshot(now).to_json(), now))
    assert f"claim limit {TYPE}: stopped (the server refuses the API key" in text, text
    operations = _with_claim_plan(db, Contact("ok", now))
    assert 'data-value="10">10<' in render(operations.dashboard(now))


def test_metrics_give_every_status_of_every_type_zeros_included(db: str):
    from bridge.ops.metrics import Metrics

    with LocalQueue(db) as queue:
        queue.enqueue("local.only", {"n": 1})
        config = BridgeConfig.load(env={}, db_url=db, types=[TYPE, "reddit.posts"])
        text = Metrics(Operations(queue.store, config)).render().decode()
    for task_type in (TYPE, "reddit.posts", "local.only"):
        for status in ("queued", "running", "done", "failed", "expired"):
            value = "1.0" if (task_type, status) == ("local.only", "queued") else "0.0"
            series = f'taskmanager_bridge_tasks{{status="{status}",type="{task_type}"}} {value}'
            assert series in text, series
    for status in ("pending", "delivered", "superseded", "obsolete", "dead"):
        assert f'taskmanager_bridge_outbox_rows{{status="{status}"}} 0.0' in text, status
