"""Every command of ``taskmanager-bridge`` given bad input: one line on stderr, exit
code 2, never a traceback; and every option documented (help text and default)."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli.main import build_parser, main
from bridge.storage.migrations import upgrade
from taskmanager._version import __version__

from .helpers import bridge_cli

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
        and not isinstance(a, argparse._SubParsersAction)
    ]


COMMANDS = list(_commands(build_parser()))
LEAVES = [(path, p) for path, p in COMMANDS if p._subparsers is None]


def _bad_values(action: argparse.Action) -> list[str]:
    """Values its parser must refuse: a word for a number, a negative, a huge port."""
    if action.choices is not None:
        return ["no-such-choice"]
    name = getattr(action.type, "__name__", "")
    bad = {
        "int": ["many", "1.5"],
        "float": ["soon"],
        "seconds": ["soon", "-1", "inf", "nan"],
        "count": ["many", "0", "-3"],
        "_port": ["http", "99999", "-1"],
    }
    return bad.get(name, [])


def _cases() -> Iterator[tuple[str, list[str]]]:
    for path, parser in LEAVES:
        required = [a for a in _options(parser) if a.required and a.option_strings]
        filler = [w for a in required for w in (a.option_strings[0], "x")]
        yield f"{' '.join(path)} --no-such-option", [*path, *filler, "--no-such-option"]
        if required:
            yield f"{' '.join(path)} without {required[0].option_strings[0]}", list(path)
        for action in _options(parser):
            for value in _bad_values(action):
                if action.option_strings:
                    argv = [*path, *filler, action.option_strings[0], value]
                else:
                    argv = [*path, *filler, value]
                yield f"{' '.join(path)} {action.dest}={value}", argv
    for path, parser in COMMANDS:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subcommands and subcommands[0].required:  # `tasks` alone lists the tasks
            yield f"{' '.join(path) or '(none)'} without a subcommand", list(path)


CASES = dict(_cases())


@pytest.mark.parametrize("argv", CASES.values(), ids=CASES.keys())
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "--help" in lines[0]  # where to read more


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = str(tmp_path / "q.db")
    upgrade(url)
    return url


def _bad_commands(tmp_path: Path, db: str) -> dict[str, list[str]]:
    """Arguments that parse but that the command must refuse."""
    missing = str(tmp_path / "missing.db")
    bad_types = tmp_path / "types.json"
    bad_types.write_text('[{"name": "x"}]')
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('lease_seconds = "300"\n')
    return {
        "status before db upgrade": ["--db-url", missing, "status"],
        "health before db upgrade": ["--db-url", missing, "health"],
        "outbox list before db upgrade": ["--db-url", missing, "outbox", "list"],
        "db upgrade to an unknown revision": ["--db-url", db, "db", "upgrade", "0999"],
        "db in a folder that does not exist": ["--db-url", "/no/such/dir/q.db", "db", "upgrade"],
        "a TOML string for a number": ["--config", str(bad_toml), "status"],
        "a config file that does not exist": ["--config", str(tmp_path / "nope.toml"), "status"],
        "prune with a bad age": ["--db-url", db, "prune", "--older-than", "soon"],
        "prune with a negative age": ["--db-url", db, "prune", "--older-than=-3d"],
        "outbox retry of a missing row": ["--db-url", db, "outbox", "retry", "9999"],
        "outbox discard of a missing row": ["--db-url", db, "outbox", "discard", "9999"],
        "outbox retry without ids": ["--db-url", db, "outbox", "retry"],
        "outbox retry ids and --dead": ["--db-url", db, "outbox", "retry", "1", "--dead"],
        "register-types of a missing file": ["--db-url", db, "register-types", "nope.json"],
        "register-types of a bad definition": ["--db-url", db, "register-types", str(bad_types)],
        "run without types": ["--db-url", db, "run"],
        "a postgres URL without a server": [
            "--db-url",
            "postgresql://nobody@127.0.0.1:1/none",
            "status",
        ],
    }


def test_bad_input_reaching_commands_is_one_line(
    tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("TASKMANAGER_API_KEY", "not-a-real-key")
    failures = []
    for name, argv in _bad_commands(tmp_path, db).items():
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        ok = code == 2 and len(lines) == 1 and lines[0].startswith("taskmanager-bridge: error:")
        if not ok:
            failures.append(f"{name}: exit {code}, stderr {captured.err!r}")
        assert "not-a-real-key" not in captured.err + captured.out
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "missing.db").exists(), "a read-only command created the database"


def test_status_hint_names_the_database_it_was_given(tmp_path: Path):
    missing = str(tmp_path / "elsewhere.db")
    done = bridge_cli("--db-url", missing, "status", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"taskmanager-bridge --db-url {missing} db upgrade" in done.stderr
    assert not Path(missing).exists()


def test_outbox_retry_of_a_delivered_row_says_so(db: str, capsys: pytest.CaptureFixture[str]):
    from datetime import datetime, timezone

    from bridge import LocalQueue

    with LocalQueue(db) as queue:
        entry = queue.create_remote_task("t.any", {"n": 1})
        queue.store.settle_outbox(entry.id, "delivered", None, datetime.now(timezone.utc))
    assert main(["--db-url", db, "outbox", "retry", str(entry.id)]) == 2
    assert f"row {entry.id} is delivered, not dead" in capsys.readouterr().err


# `worker`'s options belong to the worker runtime's branch (bridge/cli.py:_add_worker),
# which adds their help there; listed so that the rest of the CLI is held to the rule now.
NOT_YET_DOCUMENTED: set[str] = set()


def test_every_option_has_help_and_shows_its_default():
    undocumented, hidden_default = [], []
    for path, parser in COMMANDS:
        text = " ".join(parser.format_help().split())
        for action in _options(parser):
            command = " ".join(path) or "taskmanager-bridge"
            where = f"{command} {action.option_strings or action.dest}"
            if not action.help and where not in NOT_YET_DOCUMENTED:
                undocumented.append(where)
            # SUPPRESS: a global option after the command, whose default is the one before it.
            no_default = action.default in (None, False, argparse.SUPPRESS)
            shows = no_default or f"default: {action.default}" in text
            if not shows and where not in NOT_YET_DOCUMENTED:
                hidden_default.append(where)
    assert not undocumented, f"options without help: {undocumented}"
    assert not hidden_default, f"defaults not shown: {hidden_default}"


def test_version_and_program_names():
    done = bridge_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"taskmanager-bridge {__version__}"
    missing = bridge_cli("db")
    assert missing.returncode == 2 and "db_command" not in missing.stderr
    assert "{upgrade,current}" in missing.stderr


def test_emulator_bad_ports_are_one_line(tmp_path: Path):
    import subprocess
    import sys

    def emulator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskmanager.emulator", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ},
        )

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = emulator("--port", str(busy.getsockname()[1]))
    for done in (taken, emulator("--port", "99999"), emulator("--port", "http")):
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Address already in use" in taken.stderr
    usage = emulator("--help")
    assert usage.stdout.startswith("usage: taskmanager-emulator")
