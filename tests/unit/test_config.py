"""Config: arguments first, environment second, clear errors, safe transport of the key."""

from __future__ import annotations

import pytest

from taskmanager import DEFAULT_API_URL, TaskManagerConfig, TaskManagerConfigError
from taskmanager.config import default_worker_id, is_loopback_host


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


def test_loopback_detection():
    assert is_loopback_host("LOCALHOST") and is_loopback_host("::1")
    assert not is_loopback_host("10.0.0.1") and not is_loopback_host("evil.localhost.com")
    assert not is_loopback_host(None)


def test_api_key_not_in_repr():
    config = TaskManagerConfig.from_env({}, api_key="very-secret")
    assert "very-secret" not in repr(config) and "very-secret" not in str(config)
