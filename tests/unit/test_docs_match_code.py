"""Docs that list settings must list every one of them, with its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import SETTINGS

OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()


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
