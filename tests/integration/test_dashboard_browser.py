"""The dashboard in a real browser: headless Chromium loads the page of a running daemon
(against the emulator), and the numbers it shows are the ones ``status --json`` prints.

Set ``DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` to refresh the documentation's
screenshot from the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.models import WorkerInfo
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

from .helpers import BROWSERS, browser_decision, free_port, wait_until

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]
BRIDGE = (sys.executable, "-m", "bridge")
TYPES = ("youtube_channel_scrape", "reddit_subreddit_scrape")
PREFETCH = 6


def chromium() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    action, detail = browser_decision(os.environ, found)
    if action == "fail":
        pytest.fail(detail, pytrace=False)
    if action == "skip":
        pytest.skip(detail)
    return detail


def browse(browser: str, url: str, tmp: Path, *extra: str) -> str:
    """Run headless Chromium on ``url``; what it printed (the DOM with --dump-dom)."""
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container; the page is our own
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


class MetricReader(HTMLParser):
    """Collects ``data-metric`` -> ``data-value`` from a rendered page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("data-metric"):
            self.values[str(found["data-metric"])] = str(found.get("data-value"))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@dataclass
class Running:
    url: str
    config: Path
    env: dict[str, str]
    server: EmulatorServer
    db: str


@pytest.fixture
def running_daemon(tmp_path: Path) -> Iterator[Running]:
    """A daemon with its page on a free port, holding a known state: tasks queued, two
    running, some done and one failed, everything delivered but one dead row."""
    db = str(tmp_path / "queue.db")
    upgrade(db)
    port = free_port()
    with EmulatorServer(max_attempts=1) as server:  # a failure is final
        admin = server.client()
        for task_type in TYPES:
            admin.register_task_type(task_type, "1.0", {"type": "object"})
        for n in range(12):
            admin.create_task(TYPES[0], {"channel_url": f"https://youtube.com/@c{n}"})
        for n in range(4):
            admin.create_task(TYPES[1], {"subreddit": f"r/s{n}"})
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = {json.dumps(list(TYPES))}\nprefetch = {PREFETCH}\n'
            "workers = 2\ndefault_task_seconds = 1\npoll_min_seconds = 0.1\n"
            "poll_max_seconds = 0.3\npush_interval_seconds = 0.1\nreap_interval_seconds = 0.2\n"
            f'[taskmanager]\napi_url = "{server.url}"\nretry_attempts = 0\n'
        )
        env = {**os.environ, "TASKMANAGER_API_KEY": server.api_key}
        daemon = subprocess.Popen(
            [*BRIDGE, "--config", str(config), "run", "--metrics-port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            _make_state(db, config, server)
            yield Running(f"http://127.0.0.1:{port}/", config, env, server, db)
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err
        assert server.api_key not in err


def _make_state(db: str, config: Path, server: EmulatorServer) -> None:
    with LocalQueue(config=BridgeConfig.load(config)) as queue:

        def claimed() -> bool:
            tasks = queue.status().tasks
            return (
                tasks.get((TYPES[0], "queued"), 0) == PREFETCH
                and tasks.get((TYPES[1], "queued"), 0) == 4
            )  # every reddit task: fewer than the prefetch exist

        assert wait_until(claimed, 30), f"the daemon did not claim within 30 s: {queue.status()}"
        for n in range(5):
            task = queue.dequeue([TYPES[0]])
            assert task is not None
            if n == 4:
                queue.fail(task, "the channel page answered 404")
            else:
                queue.complete(task, {"ideas_found": n})
        for task_type in TYPES:  # two tasks left running, with their lease ticking
            assert queue.dequeue([task_type]) is not None
        queue.create_remote_task("not_registered_anywhere", {"x": 1})  # the server: 404, dead
        now = queue.clock()  # a worker's own record, as `worker` writes it
        queue.record_worker(
            WorkerInfo(queue.locked_by, "test-host", os.getpid(), list(TYPES), 2, "thread",
                       now, now, None, 4, 1)
        )  # fmt: skip

        def settled() -> bool:
            counts = queue.status()
            queued = {t: counts.tasks.get((t, "queued"), 0) for t in TYPES}
            return (
                counts.outbox.get("pending", 0) == 0
                and counts.outbox.get("dead", 0) == 1
                and queued[TYPES[0]] == PREFETCH  # the daemon refilled what was taken
                and queued[TYPES[1]] == 3  # 4 on the server: 1 running, the rest queued
            )

        assert wait_until(settled, 30), f"never settled: {queue.status()}"


def status_json(running: Running) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(running.config), "status", "--json"],
        capture_output=True,
        text=True,
        env=running.env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_page_in_chromium_shows_what_status_json_says(running_daemon: Running, tmp_path: Path):
    browser = chromium()
    dom = browse(browser, running_daemon.url, tmp_path, "--dump-dom")
    doc = status_json(running_daemon)
    page = MetricReader()
    page.feed(dom)
    text = " ".join(page.text)

    tasks = doc["tasks"]
    assert isinstance(tasks, dict) and set(tasks) == set(TYPES)
    for task_type, counts in tasks.items():
        for status, count in counts.items():
            assert page.values[f"tasks.{task_type}.{status}"] == str(count), (task_type, status)
    outbox = doc["outbox"]
    assert isinstance(outbox, dict)
    for status, count in outbox.items():
        assert page.values[f"outbox.{status}"] == str(count), status
    assert outbox["dead"] == 1
    limits = doc["claim_limits"]
    assert isinstance(limits, dict)
    for task_type, plan in limits.items():
        assert page.values[f"claim_limits.{task_type}.limit"] == str(plan["limit"])
    contact = doc["contact"]
    assert isinstance(contact, dict) and page.values["contact.state"] == contact["state"] == "ok"
    finished = sum(tasks[t]["done"] for t in TYPES), sum(tasks[t]["failed"] for t in TYPES)
    assert (page.values["throughput.done"], page.values["throughput.failed"]) == tuple(
        map(str, finished)
    )
    # Running tasks with their age and remote lease, the dead row with its reason.
    assert text.count("running for") == 1 and "lease left" in text
    assert "not found" in text.lower(), "the dead row's reason is missing"
    # The failed task among the recent failures, the worker with its beat, per-type rates.
    assert "the channel page answered 404" in text
    workers = doc["workers"]
    assert isinstance(workers, list) and len(workers) == 1
    assert page.values[f"workers.{workers[0]['id']}.state"] == workers[0]["state"] == "alive"
    assert page.values[f"workers.{workers[0]['id']}.done"] == str(workers[0]["done"])
    assert page.values[f"by_type.{TYPES[0]}.done"] == str(tasks[TYPES[0]]["done"])
    assert running_daemon.server.api_key not in dom

    shot = os.environ.get("DASHBOARD_SCREENSHOT")
    if shot:
        browse(
            browser,
            running_daemon.url,
            tmp_path,
            f"--screenshot={Path(shot).resolve()}",
            "--window-size=1280,1200",
            "--hide-scrollbars",
        )
        assert Path(shot).stat().st_size > 10_000


def tasks_show(running: Running, ref: str) -> dict[str, object]:
    done = subprocess.run(
        [*BRIDGE, "--config", str(running.config), "tasks", "show", ref, "--json"],
        capture_output=True,
        text=True,
        env=running.env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_task_pages_in_chromium_show_what_tasks_show_says(running_daemon: Running, tmp_path: Path):
    browser = chromium()
    listing = MetricReader()
    listing.feed(
        browse(browser, running_daemon.url + "tasks?status=failed", tmp_path, "--dump-dom")
    )
    failed = [key.split(".")[1] for key, value in listing.values.items() if value == "failed"]
    assert len(failed) == 1, listing.values
    doc = tasks_show(running_daemon, failed[0])
    page = MetricReader()
    dom = browse(browser, f"{running_daemon.url}tasks/{failed[0]}", tmp_path, "--dump-dom")
    page.feed(dom)
    text = " ".join(page.text)
    assert (page.values["task.status"], page.values["task.attempts"]) == (
        doc["status"],
        str(doc["attempts"]),
    )
    assert doc["error"] == "the channel page answered 404" and str(doc["error"]) in text
    rows = doc["outbox"]
    assert isinstance(rows, list) and rows
    for row in rows:
        assert page.values[f"outbox_row.{row['id']}.status"] == row["status"]
    assert running_daemon.server.api_key not in dom
    search = MetricReader()
    search.feed(browse(browser, running_daemon.url + "tasks?q=%40c3", tmp_path, "--dump-dom"))
    assert sum(1 for key in search.values if key.startswith("tasks.")) == 1  # @c3 in its params
