"""The daemon's descriptor need, from its settings, and the start-up check against the
real open-file limit (lowered for a child process, as systemd or a shell would)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import BridgeConfig
from bridge.daemon.descriptors import descriptor_need

ROOT = Path(__file__).resolve().parents[2]


def _config(**settings: object) -> BridgeConfig:
    return BridgeConfig.load(env={}, **{"db_url": "/nonexistent/queue.db", **settings})


def test_the_need_follows_the_settings_that_open_descriptors():
    base = descriptor_need(_config(), 16)
    assert base.total == base.database + base.server + base.dashboard + base.base
    # Each connection to the server is one descriptor in each fan-out (claims, deliveries).
    wider = descriptor_need(_config(connections=20), 16)
    assert wider.server - descriptor_need(_config(connections=10), 16).server == 2 * 10
    # Without `connections`, the most the round trip may call for: 16, however many workers.
    assert descriptor_need(_config(workers=20), 16) == descriptor_need(_config(workers=1), 16)
    assert descriptor_need(_config(workers=4), 16) == descriptor_need(_config(connections=16), 16)
    # The dashboard: its cap plus its listening socket; nothing when it is off.
    assert descriptor_need(_config(), 40).dashboard == 41
    assert descriptor_need(_config(), 0).dashboard == 0
    # A SQLite connection holds the file and its WAL; a PostgreSQL one, a socket.
    postgres = descriptor_need(_config(db_url="postgresql://u@db/bridge"), 16)
    assert base.database == 2 * postgres.database
    assert str(base.total) in str(base) and "dashboard 17" in str(base)


CHECK = """
import logging, resource, sys
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
logging.getLogger("bridge").setLevel(logging.INFO)
from bridge import BridgeConfig
from bridge.daemon.descriptors import descriptor_need, ensure_descriptors
need = descriptor_need(BridgeConfig.load(env={}, db_url="/nonexistent/q.db"), 16)
kept = ensure_descriptors(need)
print(need.total, kept, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _check_with_limit(soft: int, hard: int, tmp_path: Path) -> tuple[int, int, int, str]:
    """Run the start-up check in a child whose open-file limit is (soft, hard)."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # no bridge.toml there
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    need, kept, now = map(int, done.stdout.split())
    return need, kept, now, done.stderr


@pytest.fixture
def hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"this process's hard open-file limit ({hard}) is below the test's")
    return 1024


def test_a_low_soft_limit_is_raised_to_the_need(tmp_path: Path, hard_limit: int):
    need, kept, now, log = _check_with_limit(64, hard_limit, tmp_path)
    assert kept == now == need > 64
    assert f"open-file limit raised from 64 to {need}" in log
    assert "WARNING" not in log


def test_a_hard_limit_below_the_need_is_a_warning_saying_how_to_raise_it(tmp_path: Path):
    need, kept, now, log = _check_with_limit(64, 64, tmp_path)
    assert kept == now == 64
    warnings = [line for line in log.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, log
    assert f"may need {need} (database pool" in warnings[0]
    assert "its limit is 64 (hard limit 64)" in warnings[0]
    assert f"LimitNOFILE={need}" in warnings[0] and f"ulimit -n {need}" in warnings[0]


def test_enough_is_left_alone(tmp_path: Path, hard_limit: int):
    need, kept, now, log = _check_with_limit(hard_limit, hard_limit, tmp_path)
    assert kept == now == hard_limit >= need
    assert log == ""
