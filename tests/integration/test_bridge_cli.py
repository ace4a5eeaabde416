"""``taskmanager-bridge db ...`` and ``alembic upgrade head`` as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.storage.migrations import current, head_revision

from .helpers import bridge_cli

HEAD = head_revision()  # the newest revision the scripts define

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]


def test_db_current_upgrade_current(tmp_path):
    db = str(tmp_path / "q.db")
    before = bridge_cli("--db-url", db, "db", "current")
    assert before.returncode == 1 and "no taskmanager-bridge schema" in before.stdout
    assert not (tmp_path / "q.db").exists(), "looking at a missing database created it"
    assert f"taskmanager-bridge --db-url {db} db upgrade" in before.stdout
    upgraded = bridge_cli("--db-url", db, "db", "upgrade")
    assert upgraded.returncode == 0 and f"at schema revision {head_revision()}" in upgraded.stdout
    after = bridge_cli("--db-url", db, "db", "current")
    assert after.returncode == 0 and f"{head_revision()} (up to date)" in after.stdout


def test_db_url_from_config_file_and_env(tmp_path):
    config = tmp_path / "bridge.toml"
    config.write_text(f'db_url = "{tmp_path / "from-file.db"}"\n')
    assert bridge_cli("db", "upgrade", cwd=tmp_path).returncode == 0
    assert current(str(tmp_path / "from-file.db")) == head_revision()
    env = {**os.environ, "BRIDGE_DB_URL": str(tmp_path / "from-env.db")}
    assert bridge_cli("--config", str(config), "db", "upgrade", env=env).returncode == 0
    assert current(str(tmp_path / "from-env.db")) == head_revision()


def test_bad_config_is_one_clear_line(tmp_path):
    config = tmp_path / "bridge.toml"
    config.write_text('db_url = "x.db"\nlock_secnds = 5\n')
    failed = bridge_cli("--config", str(config), "db", "current")
    assert failed.returncode == 2
    assert "unknown key(s) lock_secnds" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_shipped_alembic_ini_takes_url_from_bridge_env(tmp_path):
    env = {**os.environ, "BRIDGE_DB_URL": str(tmp_path / "alembic.db")}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert current(str(tmp_path / "alembic.db")) == head_revision()
