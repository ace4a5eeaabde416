"""Bridge config: precedence, unknown keys, bad values (each names the setting)."""

from __future__ import annotations

import pytest

from bridge import BridgeConfig, BridgeConfigError
from bridge.database import normalise_url


def test_defaults_without_file_or_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = BridgeConfig.load(env={})
    assert config.db_url == "sqlite:///taskmanager-bridge.db"
    assert (config.lock_seconds, config.lease_margin_seconds) == (120.0, 30.0)
    assert config.source is None


def test_precedence_argument_env_file(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(
        'db_url = "file.db"\nlock_seconds = 10\nlease_margin_seconds = 5\n'
        '[taskmanager]\napi_url = "https://x/api"\n'
    )
    config = BridgeConfig.load(path, env={"BRIDGE_LOCK_SECONDS": "20"}, db_url="arg.db")
    assert config.db_url == "arg.db"
    assert config.lock_seconds == 20.0
    assert config.lease_margin_seconds == 5.0
    assert config.taskmanager == {"api_url": "https://x/api"}
    assert config.source == str(path)


def test_bridge_config_env_names_the_file(tmp_path):
    path = tmp_path / "named.toml"
    path.write_text('db_url = "named.db"\n')
    assert BridgeConfig.load(env={"BRIDGE_CONFIG": str(path)}).db_url == "named.db"
    with pytest.raises(BridgeConfigError, match="does not exist"):
        BridgeConfig.load(env={"BRIDGE_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("lock_secnds = 5", "unknown key(s) lock_secnds"),
        ("lock_seconds = 'soon'", "lock_seconds"),
        ("lock_seconds = 0", "lock_seconds"),
        ("lock_seconds = true", "lock_seconds"),
        ("db_url = ''", "db_url"),
        ("db_url = [1]", "db_url"),
        ("taskmanager = 3", "[taskmanager] must be a table"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path, text: str, fragment: str):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(BridgeConfigError) as info:
        BridgeConfig.load(path, env={})
    assert fragment in str(info.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(BridgeConfigError, match="BRIDGE_LEASE_MARGIN_SECONDS"):
        BridgeConfig.load(env={"BRIDGE_LEASE_MARGIN_SECONDS": "-1"})


def test_unknown_argument_refused():
    with pytest.raises(BridgeConfigError, match="unknown setting"):
        BridgeConfig.load(env={}, lock_secs=3)


def test_url_normalisation():
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("/tmp/q.db") == "sqlite:////tmp/q.db"
    assert normalise_url("sqlite:///rel.db") == "sqlite:///rel.db"
    with pytest.raises(BridgeConfigError, match="in-memory"):
        normalise_url(":memory:")
