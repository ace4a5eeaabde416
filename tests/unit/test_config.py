"""Config: arguments first, environment second, clear errors, safe transport of the key."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from taskmanager import DEFAULT_API_URL, TaskManagerConfig, TaskManagerConfigError
from taskmanager.config import SETTING_NAMES, SETTINGS, default_worker_id, is_loopback_host


def test_defaults_with_empty_environment():
    config = TaskManagerConfig.from_env({})
    assert config.api_url == DEFAULT_API_URL
    assert config.api_key is None
    assert config.worker_id == default_worker_id() == default_worker_id()
    assert config.timeouts == (5.0, 30.0)
    assert (config.retry_attempts, config.backoff_base, config.verify_tls) == (3, 1.0, True)
    assert config.validate_params is True and config.allow_insecure_http is False


def test_environment_fills_what_arguments_leave_out():
    env = {
        "TASKMANAGER_API_URL": "https://env.example/api/",
        "TASKMANAGER_API_KEY": "envkey",
        "TASKMANAGER_WORKER_ID": "env-worker",
        "TASKMANAGER_TIMEOUT": "12.5",
        "TASKMANAGER_RETRY_ATTEMPTS": "5",
        "TASKMANAGER_VERIFY_TLS": "yes",
    }
    config = TaskManagerConfig.from_env(env, worker_id="arg-worker")
    assert config.api_url == "https://env.example/api"  # trailing slash dropped
    assert config.api_key == "envkey"
    assert config.worker_id == "arg-worker"  # argument wins
    assert config.timeout == 12.5 and config.retry_attempts == 5


def test_constructor_reads_process_environment_at_call_time(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TASKMANAGER_API_KEY", "first")
    assert TaskManagerConfig().api_key == "first"
    monkeypatch.setenv("TASKMANAGER_API_KEY", "second")
    assert TaskManagerConfig().api_key == "second"
    assert TaskManagerConfig(api_key="arg").api_key == "arg"


def test_specification_style_construction(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TASKMANAGER_API_URL", raising=False)
    config = TaskManagerConfig(api_key="your-api-key")
    assert config.api_url == "https://api.prismq.nomoos.cz/api"
    assert config.timeout == 30 and config.retry_attempts == 3


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"TASKMANAGER_TIMEOUT": "soon"}, "timeout"),
        ({"TASKMANAGER_TIMEOUT": "0"}, "timeout"),
        ({"TASKMANAGER_CONNECT_TIMEOUT": "-1"}, "connect_timeout"),
        ({"TASKMANAGER_RETRY_ATTEMPTS": "2.5"}, "retry_attempts"),
        ({"TASKMANAGER_RETRY_ATTEMPTS": "-1"}, "retry_attempts"),
        ({"TASKMANAGER_VERIFY_TLS": "maybe"}, "verify_tls"),
        ({"TASKMANAGER_API_URL": "ftp://x/api"}, "api_url"),
        ({"TASKMANAGER_API_URL": "not a url"}, "api_url"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], setting: str):
    with pytest.raises(TaskManagerConfigError, match=setting):
        TaskManagerConfig.from_env(env)


def test_bool_argument_rejected_for_number():
    with pytest.raises(TaskManagerConfigError, match="timeout"):
        TaskManagerConfig.from_env({}, timeout=True)


def test_plain_http_to_remote_host_refused():
    with pytest.raises(TaskManagerConfigError, match="in clear"):
        TaskManagerConfig.from_env({"TASKMANAGER_API_URL": "http://api.example.com/api"})


def test_plain_http_allowed_when_explicit():
    config = TaskManagerConfig.from_env(
        {
            "TASKMANAGER_API_URL": "http://api.example.com/api",
            "TASKMANAGER_ALLOW_INSECURE_HTTP": "1",
        }
    )
    assert config.api_url == "http://api.example.com/api"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765/api",
        "http://localhost/api",
        "http://[::1]:80/api",
        "http://127.3.4.5/api",
    ],
)
def test_plain_http_to_loopback_allowed(url: str):
    assert TaskManagerConfig.from_env({}, api_url=url).api_url == url


@pytest.mark.parametrize(
    "url",
    [
        # requests ends the host at the backslash (evil.example) where urlsplit reads
        # 127.0.0.1: the key would go in clear to another host than the one checked.
        "http://evil.example\\@127.0.0.1/api",
        "http://user:pw@127.0.0.1:99999/api",  # requests' error quotes the URL whole
        "http://user:pw@127.0.0.1:port/api",
        "http://[::1/api",
        # paths are appended to api_url: requests would send /api?t=a/tasks, and the
        # http.client transport would drop the query
        "http://user:pw@127.0.0.1:8080/api?tenant=a",
        "http://user:pw@127.0.0.1:8080/api#top",
    ],
)
def test_an_api_url_the_http_libraries_would_read_otherwise_is_refused(url: str):
    with pytest.raises(TaskManagerConfigError, match="api_url") as refused:
        TaskManagerConfig.from_env({}, api_url=url)
    assert ":pw@" not in str(refused.value)


PASSWORD = "S3cretApiPw"


def test_a_password_in_api_url_is_kept_for_the_wire_and_shown_as_stars():
    from taskmanager import AsyncTaskManagerClient, TaskManagerClient

    url = f"http://user:{PASSWORD}@127.0.0.1:8765/api"
    config = TaskManagerConfig.from_env({}, api_url=url, api_key="k")
    assert config.api_url == url  # requests and aiohttp send it as HTTP Basic auth
    shown = [repr(config), str(config), repr(TaskManagerClient(config))]
    shown.append(repr(AsyncTaskManagerClient(config)))
    assert [text for text in shown if PASSWORD in text] == []
    assert all("http://user:***@127.0.0.1:8765/api" in text for text in shown)
    with pytest.raises(TaskManagerConfigError, match="in clear") as refused:
        TaskManagerConfig.from_env({}, api_url=f"http://user:{PASSWORD}@proxy.example/api")
    assert PASSWORD not in str(refused.value) and "user:***@proxy.example" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@proxy/api", "http://user:***@proxy/api"),
        ("https://user:p%40ss@[::1]:8443/api?x=1#f", "https://user:***@[::1]:8443/api?x=1#f"),
        ("https://:pw@host/api", "https://:***@host/api"),
        ("https://user:@host/api", "https://user:***@host/api"),
        ("https://user@host/api", "https://user@host/api"),
        ("https://host/api/a@b", "https://host/api/a@b"),
        ("/var/lib/queue.db", "/var/lib/queue.db"),
        ("http://user:***@proxy/api", "http://user:***@proxy/api"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str):
    from taskmanager.redact import mask_url

    assert mask_url(url) == shown


def test_loopback_detection():
    assert is_loopback_host("LOCALHOST") and is_loopback_host("::1")
    assert not is_loopback_host("10.0.0.1") and not is_loopback_host("evil.localhost.com")
    assert not is_loopback_host(None)


def test_api_key_not_in_repr():
    config = TaskManagerConfig.from_env({}, api_key="very-secret")
    assert "very-secret" not in repr(config) and "very-secret" not in str(config)


@pytest.mark.parametrize(
    "key",
    [
        "KEY-123\n",  # the usual: read from a file with its newline
        " KEY-123",
        "KEY 123",
        "KEY\t123",
        "KEY\x00123",
        "KEY\x7f123",
        "KEY\u2028123",
        "KEY-€123",  # outside latin-1: no HTTP header can carry it
    ],
)
def test_unusable_api_key_refused_without_showing_it(key: str):
    with pytest.raises(TaskManagerConfigError, match="api_key") as refused:
        TaskManagerConfig.from_env({}, api_key=key)
    assert "KEY" not in str(refused.value)
    with pytest.raises(TaskManagerConfigError, match="api_key") as from_env:
        TaskManagerConfig.from_env({"TASKMANAGER_API_KEY": key})
    assert "KEY" not in str(from_env.value)


@pytest.mark.parametrize("key", [12345, b"KEY-bytes", ["KEY"]])
def test_api_key_that_is_not_text_refused(key: object):
    with pytest.raises(TaskManagerConfigError, match="api_key") as refused:
        TaskManagerConfig.from_env({}, api_key=key)
    assert "KEY" not in str(refused.value) and "12345" not in str(refused.value)


def test_latin1_api_key_accepted():
    assert TaskManagerConfig.from_env({}, api_key="clé-ÿ_~!").api_key == "clé-ÿ_~!"


def test_resolved_fields_have_their_types():
    config = TaskManagerConfig.from_env(
        {"TASKMANAGER_BACKOFF_BASE": "2", "TASKMANAGER_RETRY_ATTEMPTS": "4"}, timeout="7"
    )
    assert (config.backoff_base, config.retry_attempts, config.timeout) == (2.0, 4, 7.0)
    assert type(config.backoff_base) is float and type(config.retry_attempts) is int


def test_unknown_override_names_it():
    with pytest.raises(TaskManagerConfigError, match="retry_atempts"):
        TaskManagerConfig.from_env({}, retry_atempts=2)


def test_constructor_takes_an_explicit_environment():
    config = TaskManagerConfig(api_key="arg", env={"TASKMANAGER_WORKER_ID": "from-mapping"})
    assert (config.api_key, config.worker_id) == ("arg", "from-mapping")


def test_every_setting_is_a_constructor_argument_and_a_field():
    """The table, the constructor and the resolved fields must not drift apart."""
    parameters = list(inspect.signature(TaskManagerConfig).parameters)
    assert parameters == [*SETTING_NAMES, "env"]
    assert [f.name for f in fields(TaskManagerConfig)] == list(SETTING_NAMES)
    assert [s.name for s in SETTINGS] == list(SETTING_NAMES)


def test_api_reference_lists_every_setting():
    reference = (Path(__file__).resolve().parents[2] / "docs" / "API_REFERENCE.md").read_text()
    for setting in SETTINGS:
        assert f"| `{setting.name}` | `{setting.env}` |" in reference, setting.name
        assert setting.doc in reference, setting.name
