"""Bridge config: precedence, unknown keys, bad values (each names the setting)."""

from __future__ import annotations

import pytest

from bridge import BridgeConfig, BridgeConfigError
from bridge.storage.engine import normalise_url


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
        ("http = 'httpx'", "http must be one of auto, stdlib, aiohttp, requests, got 'httpx'"),
        ("http = 2", "http"),
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


def test_settings_are_the_dataclass_fields():
    """One declaration: SETTINGS is read off BridgeConfig, defaults included."""
    from dataclasses import fields

    from bridge.config import SETTINGS

    defaults = BridgeConfig()
    assert [s.name for s in SETTINGS] == [f.name for f in fields(BridgeConfig)][: len(SETTINGS)]
    for setting in SETTINGS:
        assert getattr(defaults, setting.name) == setting.default
        assert setting.kind in (int, float, str, list) and setting.doc
    assert {s.name for s in SETTINGS}.isdisjoint({"taskmanager", "source", "explicit_worker_id"})


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ('lease_seconds = "300"', "must be a number"),  # the bug: text is not a number in TOML
        ("lease_seconds = true", "must be a number"),
        ("prefetch = [1]", "must be a number"),
        ("workers = { n = 2 }", "must be a number"),
        ("db_url = 5", "must be a string"),
        ("db_url = ['a.db']", "must be a string"),
        ('types = "a,b"', "must be an array of names"),
        ("types = 3", "must be an array of names"),
        ("[taskmanager]\ntimeout = '30'", "must be a number"),
        ("[taskmanager]\napi_key = 12345", "must be a string"),
        ("[taskmanager]\nverify_tls = 'yes'", "must be true or false"),
    ],
)
def test_wrong_toml_type_names_key_and_file(tmp_path, text: str, wanted: str):
    path = tmp_path / "typed.toml"
    path.write_text(text + "\n")
    with pytest.raises(BridgeConfigError) as info:
        BridgeConfig.load(path, env={})
    key = text.rsplit("\n", 1)[-1].split("=")[0].strip()
    message = str(info.value)
    assert key in message and str(path) in message and wanted in message, message


def test_text_stays_valid_from_the_environment(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text("lease_seconds = 200\ntypes = ['x']\n")
    config = BridgeConfig.load(path, env={"BRIDGE_LEASE_SECONDS": "300", "BRIDGE_TYPES": "a, b"})
    assert (config.lease_seconds, config.types) == (300.0, ["a", "b"])
    assert BridgeConfig.load(path, env={}).lease_seconds == 200.0  # a TOML integer is a number


def test_repr_never_shows_the_api_key_nor_a_password(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text(
        'db_url = "postgresql://bridge:pg-s3cret@db.local/q"\n'
        '[taskmanager]\napi_key = "tm-SECRET-key-123"\napi_url = "https://u:px-s3cret@x/api"\n'
    )
    config = BridgeConfig.load(path, env={})
    assert config.taskmanager["api_key"] == "tm-SECRET-key-123"  # still usable
    assert config.client_config(env={}).api_url == "https://u:px-s3cret@x/api"
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert "tm-SECRET-key-123" not in text and "pg-s3cret" not in text
        assert "px-s3cret" not in text and "https://u:***@x/api" in text
        assert "bridge:***@db.local/q" in text and "lease_seconds=300.0" in text


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bridge:pg-s3cret@db.local/q",
        "postgresql+psycopg://bridge:p%40ss%2Fw%3Ard@db.local:5433/q?sslmode=require",
        "postgresql://bridge@db.local/q",
        "postgresql://bridge:@db.local/q",
        "sqlite:////var/lib/queue.db",
    ],
)
def test_database_urls_are_shown_as_sqlalchemy_shows_them(url: str):
    """One masking for every URL (taskmanager's), the same text SQLAlchemy gave before."""
    from sqlalchemy.engine import make_url

    from bridge.storage.engine import display_url

    expected = make_url(url).render_as_string(hide_password=True)
    assert display_url(url) == display_url(make_url(url)) == expected


def test_explicit_worker_id_resolved_at_load(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[taskmanager]\nworker_id = "from-file"\n')
    assert BridgeConfig.load(env={}).explicit_worker_id is None
    assert BridgeConfig.load(path, env={}).explicit_worker_id == "from-file"
    from_env = BridgeConfig.load(path, env={"TASKMANAGER_WORKER_ID": "from-env"})
    assert from_env.explicit_worker_id == "from-env"
    assert BridgeConfig.load(env={"TASKMANAGER_WORKER_ID": ""}).explicit_worker_id is None
    assert BridgeConfig(taskmanager={"worker_id": "direct"}).explicit_worker_id == "direct"


def test_the_daemons_http_library_auto_forced_and_from_the_environment(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """``auto``: http.client (the least CPU), unless the environment names a proxy for
    api_url, which only requests and aiohttp go through."""
    pytest.importorskip("aiohttp", reason="the [async] extra is not installed")
    for variable in ("HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.lower(), raising=False)
    assert BridgeConfig.load(env={}, db_url="q.db").http_library() == "stdlib"  # auto
    forced = BridgeConfig.load(env={"BRIDGE_HTTP": "requests"}, db_url="q.db")
    assert forced.http_library() == "requests"
    assert BridgeConfig.load(env={}, db_url="q.db", http="aiohttp").http_library() == "aiohttp"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    assert BridgeConfig.load(env={}, db_url="q.db").http_library() == "aiohttp"
    assert BridgeConfig.load(env={}, db_url="q.db", http="stdlib").http_library() == "stdlib"
    monkeypatch.setenv("NO_PROXY", "api.prismq.nomoos.cz")  # the default api_url's host
    assert BridgeConfig.load(env={}, db_url="q.db").http_library() == "stdlib"
