"""docs/OPERATIONS.md, "First hour", run as written: every command of its code block,
in order, in a temporary folder, against the emulator the block starts; and README.md's
Quick start, whose one-time line the block begins with.

What the test does besides running the commands, and only that: the port 8765 becomes
a free one; a command the block puts in the background (``... &``) is started by the
test, which waits until it is ready (the emulator listens, the daemon and the worker
log their start) and stops it at ``kill %N`` (SIGTERM, as the shell's ``kill`` sends),
checking its exit code; ``cd`` moves the test's folder; after ``sleep`` the test waits
(at most 60 s) until the five tasks are done and delivered, so that a slow machine
does not fail what the reader's "a few seconds" promise. The first two lines (a
virtual environment and ``pip install -e .``) make what the suite already runs in:
they are checked to be the README's and run for real only with
``BRIDGE_TEST_FRESH_VENV=1`` (a new venv in a copy of the source, installed from the
package index, which needs the network).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import free_port, wait_until

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]
TYPE = "youtube_channel_scrape"
SOURCE = ["pyproject.toml", "README.md", "LICENSE", "bridge", "taskmanager", "migrations"]


def _code_blocks(markdown: str, heading: str) -> list[list[str]]:
    """The ```bash blocks of the section under ``heading``, as lists of lines."""
    section = markdown.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return [
        block.strip("\n").splitlines() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
    ]


def _commands(lines: list[str]) -> list[str]:
    """One string per command: a heredoc (``cat > f <<'EOF'`` ... ``EOF``) is one."""
    commands: list[str] = []
    heredoc: list[str] | None = None
    for line in lines:
        if heredoc is not None:
            heredoc.append(line)
            if line == "EOF":
                commands.append("\n".join(heredoc))
                heredoc = None
        elif "<<'EOF'" in line:
            heredoc = [line]
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    assert heredoc is None, "a heredoc without its EOF"
    return commands


README = (ROOT / "README.md").read_text()
SETUP, QUICK = _code_blocks(README, "## Quick start")
FIRST_HOUR = _commands(
    _code_blocks((ROOT / "docs" / "OPERATIONS.md").read_text(), "## First hour")[0]
)


def test_readme_quick_start_is_a_one_time_venv_then_two_commands():
    assert SETUP == ["python3 -m venv .venv && . .venv/bin/activate"]
    assert len(QUICK) == 2, QUICK
    demo, tests = QUICK
    assert demo == "python3 -m pip install -e . && taskmanager-bridge demo"
    assert tests == 'python3 -m pip install -e ".[test]" && python3 -m pytest'
    # The test section names the PostgreSQL the suite uses, and how to point it elsewhere.
    from .helpers import DEFAULT_PG_URL, PG_URL_ENV

    assert f"`{DEFAULT_PG_URL}`" in README and f"`{PG_URL_ENV}`" in README


class Walk:
    """The block's commands, run one after another as a reader runs them in one shell."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.cwd = folder
        self.env = env
        self.jobs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.out: dict[str, str] = {}

    def run(self, command: str) -> None:
        if command.startswith("cd "):
            self.cwd = self.cwd / command[3:].strip()
        elif command.endswith(" &"):
            self._background(command[:-2])
        elif command.startswith("kill %"):
            self._stop([int(job) for job in re.findall(r"%(\d+)", command)])
        else:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
            self.out[command] = done.stdout
            if command.startswith("sleep "):
                self._all_done()

    def _background(self, command: str) -> None:
        # ``exec`` after the variables, so that the signal reaches the command itself.
        assigned, rest = re.match(r"((?:\w+=\S*\s+)*)(.*)", command, re.S).groups()  # type: ignore[union-attr]
        process = subprocess.Popen(
            ["bash", "-c", f"{assigned}exec {rest}"], cwd=self.cwd, env=self.env
        )
        self.jobs.append((command, process))
        log = self.cwd / command.rsplit("2> ", 1)[1].split()[0]
        if command.startswith("taskmanager-emulator"):
            port = int(command.split("--port ", 1)[1].split()[0])
            ready = wait_until(lambda: _listening(port) or process.poll() is not None, 30)
        else:
            said = "bridge started" if " run " in command + " " else "worker started"
            ready = wait_until(lambda: log.exists() and said in log.read_text(), 30)
        assert ready and process.poll() is None, f"{command} did not start:\n{_text(log)}"

    def _all_done(self) -> None:
        """The reader's "after a few seconds", waited for rather than guessed (asked of
        the walk's own ``status --json``: the installed version reads its database)."""
        state: dict[str, Any] = {}

        def settled() -> bool:
            done = subprocess.run(
                ["bash", "-c", "taskmanager-bridge status --json"],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            state.update(json.loads(done.stdout))
            tasks = state["tasks"].get(TYPE, {})
            return tasks.get("done") == 5 and state["outbox"]["pending"] == 0

        assert wait_until(settled, 60, every=0.2), state

    def _stop(self, numbers: list[int]) -> None:
        stopping = [self.jobs[n - 1] for n in numbers]
        for _, process in stopping:
            process.send_signal(signal.SIGTERM)
        for command, process in stopping:
            assert process.wait(60) == 0, command

    def close(self) -> None:
        for _, process in self.jobs:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else "(no log)"


def _environment(clone: Path) -> dict[str, str]:
    """The reader's shell: nothing of the developer's bridge or key settings; the
    suite's interpreter (whose bin holds the console scripts) first on PATH, or with
    ``BRIDGE_TEST_FRESH_VENV=1`` the venv the first two lines make."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "TASKMANAGER_"))}
    setup, install = FIRST_HOUR[:2]
    assert setup == SETUP[0], "the walk starts with the README's one-time line"
    assert QUICK[0].startswith(f"{install} && "), "and installs as the Quick start does"
    if os.environ.get("BRIDGE_TEST_FRESH_VENV") != "1":
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        return env
    for name in SOURCE:  # a copy: pip writes its build files next to the source
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, clone / name)
    env.pop("PYTHONPATH", None)
    venv = clone / ".venv" / "bin"
    for command in (setup.split(" && ")[0], f"{venv}/{install}"):
        done = subprocess.run(
            command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    env["PATH"] = f"{venv}{os.pathsep}{env['PATH']}"  # what `. .venv/bin/activate` does
    env["VIRTUAL_ENV"] = str(venv.parent)
    return env


def test_first_hour_runs_as_written(tmp_path: Path):
    clone = tmp_path / "clone"
    clone.mkdir()
    port = str(free_port())
    commands = [command.replace("8765", port) for command in FIRST_HOUR[2:]]
    walk = Walk(clone, _environment(clone))
    try:
        for command in commands:
            walk.run(command)
    finally:
        walk.close()
    out = walk.out
    assert "lost: 0" in out["taskmanager-bridge demo"]
    assert "registered youtube_channel_scrape v1.0" in "".join(out.values())
    status = out["taskmanager-bridge status"]
    assert re.search(rf"{TYPE}\s+0\s+0\s+5\s+0\s+0", status), status
    assert "delivered 6" in status, status  # the type's registration and five results
    assert out["taskmanager-bridge health --require-contact 30"].strip() == "healthy"
    rows = [
        r for r in out["taskmanager-bridge outbox list"].splitlines() if re.match(r"\s+\d+ ", r)
    ]
    assert len(rows) == 6 and all(" delivered " in r for r in rows), rows
    assert " register_type " in rows[0] and all(" complete " in r for r in rows[1:]), rows
    folder = clone / "first-hour"
    daemon, worker = _text(folder / "daemon.log"), _text(folder / "worker.log")
    assert "delivered 5 outbox rows in the last" in daemon and "Traceback" not in daemon
    assert "worker stopped: 5 done" in worker and "WARNING" not in worker, worker
