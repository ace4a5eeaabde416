"""The examples run as a user would run them, against the emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]


def test_every_example_runs_against_the_emulator():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_against_emulator.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "registered youtube_channel_scrape v1.0 as id 1" in out
    assert "same params in another order -> task 1, deduplicated=True" in out
    local = out.split("dedupe key computed locally: ")[1].split()[0]
    stored = out.split("dedupe key the server stored: ")[1].split()[0]
    assert local == stored and len(local) == 64
    assert "task 1 at 60%" in out and "task 1: completed" in out
    assert "nothing to do" in out
    assert "settled by reading it back: True" in out
    assert "retry 1/3" in out


def test_the_ideainspiration_example_stores_each_tasks_ideas_once_both_ways(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ideainspiration_worker.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "queue database: 6 ideas for 2 tasks" in done.stdout, done.stdout
    assert "prismq_ideas.db: 6 ideas for 2 tasks" in done.stdout, done.stdout
