"""The files under examples/deploy: the systemd unit's promises (its open-file limit
covers what the example config needs), the Grafana dashboard's queries and the alert
rules name only metrics the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.descriptors import descriptor_need
from bridge.ops.dashboard_server import DashboardLimits
from bridge.ops.metrics import Metrics
from bridge.ops.operations import Operations
from bridge.storage.migrations import upgrade

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def _unit() -> dict[str, list[str]]:
    """key -> values (a key may repeat) of the unit file, comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "taskmanager-bridge.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_is_notify_with_watchdog_and_hardening():
    unit = _unit()
    assert unit["Type"] == ["notify"] and int(unit["WatchdogSec"][0]) >= 10
    assert unit["NoNewPrivileges"] == ["true"] and unit["ProtectSystem"] == ["strict"]
    assert unit["PrivateTmp"] == ["true"]
    assert "/var/lib/taskmanager-bridge" in unit["ReadWritePaths"][0]
    # The queue's folder is writable: db_url of the example config lives there.
    config = (DEPLOY / "bridge.toml").read_text()
    assert 'db_url = "/var/lib/taskmanager-bridge/' in config


def test_unit_lets_the_example_config_open_what_it_needs():
    unit = _unit()
    assert "--metrics-port" in unit["ExecStart"][0]  # the dashboard is on: count its cap
    config = BridgeConfig.load(DEPLOY / "bridge.toml", env={})
    need = descriptor_need(config, DashboardLimits().connections)
    (limit,) = unit["LimitNOFILE"]
    assert int(limit) >= need.total, f"LimitNOFILE={limit} is below the daemon's need: {need}"
    lines = (DEPLOY / "taskmanager-bridge.service").read_text().splitlines()
    above = lines[: next(i for i, line in enumerate(lines) if line.startswith("LimitNOFILE="))]
    comment = []
    while above and above[-1].startswith("#"):
        comment.insert(0, above.pop())
    why = " ".join(comment)  # the comment right above it says why, and where to read more
    assert "docs/OPERATIONS.md" in why and "warns" in why


def test_unit_does_not_race_schema_upgrades():
    assert "ExecStartPre" not in _unit(), "db upgrade is a one-off step, not per start"


def _promql_metrics(expression: str) -> set[str]:
    return set(re.findall(r"\b(taskmanager_bridge_[a-z_]+)\b", expression))


def _grafana_expressions() -> list[str]:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def _alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name the daemon's /metrics serves once each counter has moved."""
    url = str(tmp_path_factory.mktemp("metrics") / "q.db")
    upgrade(url)
    with LocalQueue(url) as queue:
        queue.enqueue("t.m", {"n": 1})
        metrics = Metrics(Operations(queue.store, BridgeConfig.load(env={}, db_url=url)))
        metrics.claimed("t.m", 1)
        metrics.settled("complete", "delivered")
        metrics.retried("complete")
        metrics.observe_request("POST", "/tasks/{id}/complete", "200", 0.1)
        text = metrics.render().decode()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    # A family with no sample yet (no dead row, no claim plan) is still exported.
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return samples | families


@pytest.mark.parametrize(
    "expressions",
    [_grafana_expressions(), [str(rule["expr"]) for rule in _alert_rules()]],
    ids=["grafana", "alerts"],
)
def test_queries_name_only_exported_metrics(expressions: list[str], exported: set[str]):
    assert expressions
    named = set().union(*map(_promql_metrics, expressions))
    assert named, "no taskmanager_bridge_ metric queried"
    unknown = named - exported
    assert not unknown, f"not exported by the daemon: {sorted(unknown)}"


def test_alerts_cover_what_operations_md_says_to_alert_on():
    alerts = {str(rule["alert"]): str(rule["expr"]) for rule in _alert_rules()}
    joined = " ".join(alerts.values())
    assert "taskmanager_bridge_seconds_since_contact" in joined  # outage for long
    assert "taskmanager_bridge_outbox_oldest_pending_seconds" in joined
    assert 'status="dead"' in joined
    assert 'status="superseded"' in joined
    for rule in _alert_rules():
        assert rule.get("annotations"), f"{rule['alert']} says nothing to the operator"
