"""Docs that list settings must list every one of them, with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import SETTINGS

OPERATIONS_PATH = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
OPERATIONS = OPERATIONS_PATH.read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_documented_with_env_and_default(setting):
    default = "[]" if setting.kind is list else str(setting.default)
    row = f"| `{setting.name}` | `{setting.env}` | `{default}` |"
    assert row in OPERATIONS


def test_the_monitoring_list_names_each_metric_once():
    listed = OPERATIONS.split("## Monitoring", 1)[1].split("* `taskmanager-bridge health`", 1)[0]
    names = re.findall(r"`(taskmanager_bridge_\w+)", listed)
    assert len(names) > 10
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


TROUBLESHOOTING = OPERATIONS_PATH.parent.joinpath("TROUBLESHOOTING.md").read_text()


def test_troubleshootings_revision_example_is_the_message_whatever_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The example once said "head is 0002" and went stale with 0003: it now shows the
    start of the message, which a new migration does not change."""
    from bridge.cli.main import main
    from bridge.storage.migrations import head_revision

    assert main(["--db-url", str(tmp_path / "q.db"), "db", "upgrade", "0009"]) == 2
    said = capsys.readouterr().err.strip()
    (example,) = re.findall(r"`(error: db upgrade: no schema revision [^`]*)`", TROUBLESHOOTING)
    assert f"taskmanager-bridge: {example.split('...')[0]}" in said, said
    assert example.endswith("head is NNNN)") and said.endswith(f"head is {head_revision()})")
    assert not (tmp_path / "q.db").exists()
