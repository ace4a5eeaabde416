"""Client configuration: arguments first, ``TASKMANAGER_*`` environment second.

The environment is read when a config is built, never at import time, so tests
and long-running processes see the values in force when they construct a client.
Every bad value is a ``TaskManagerConfigError`` that names the setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .exceptions import TaskManagerConfigError

DEFAULT_API_URL = "https://api.prismq.nomoos.cz/api"
ENV_PREFIX = "TASKMANAGER_"

_T = TypeVar("_T")


def default_worker_id() -> str:
    """A worker id that is the same for every run on this host.

    Stable so that, after a restart, the server's ``claimed_by`` still names us
    and our own claims can be found and finished.
    """
    return f"{socket.gethostname() or 'localhost'}-taskmanager"


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and the 127.0.0.0/8 and ::1 addresses."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise TaskManagerConfigError(f"{name} must be true or false, got {raw!r}")


# No setting needs more: 10,000,000 s is 115 days, and a larger value is a typo
# that would overflow a datetime later instead of failing here.
MAX_SETTING_VALUE = 10_000_000


def parse_number(name: str, raw: Any, kind: type[_T], minimum: float) -> _T:
    """A setting's number from TOML, the environment or an argument, or an error naming it.

    Finite, within [minimum, MAX_SETTING_VALUE], and whole when ``kind`` is ``int``
    (``2.5`` workers is refused, not truncated). Shared by the client and the bridge.
    """
    if isinstance(raw, bool):
        raise TaskManagerConfigError(f"{name} must be a number, got {raw!r}")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError, OverflowError):
        raise TaskManagerConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise TaskManagerConfigError(f"{name} must be a finite number, got {raw!r}")
    if kind is int and not value.is_integer():
        raise TaskManagerConfigError(f"{name} must be a whole number, got {raw!r}")
    if value < minimum:
        raise TaskManagerConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    if value > MAX_SETTING_VALUE:
        raise TaskManagerConfigError(f"{name} must be <= {MAX_SETTING_VALUE:,}, got {raw!r}")
    return kind(value)  # type: ignore[call-arg]


@dataclass(frozen=True)
class TaskManagerConfig:
    """Everything the client needs to reach the API.

    Any field left ``None`` is taken from ``TASKMANAGER_<FIELD>`` (upper case),
    then from its default. ``timeout`` is the read timeout in seconds;
    ``retry_attempts`` is how many times a failed request is tried again.
    """

    api_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    worker_id: str | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    retry_attempts: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None
    retry_deadline: float | None = None
    verify_tls: bool | None = None
    allow_insecure_http: bool | None = None
    validate_params: bool | None = None

    def __post_init__(self) -> None:
        self._resolve(os.environ)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> TaskManagerConfig:
        """Build from an explicit environment mapping (for tests and tools)."""
        config = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(config, f.name, overrides.get(f.name))
        config._resolve(env)
        return config

    def _resolve(self, env: Mapping[str, str]) -> None:
        def pick(name: str, default: Any) -> Any:
            value = getattr(self, name)
            if value is None:
                value = env.get(ENV_PREFIX + name.upper())
            return default if value is None or value == "" else value

        resolved: dict[str, Any] = {
            "api_url": str(pick("api_url", DEFAULT_API_URL)).rstrip("/"),
            "api_key": pick("api_key", None),
            "worker_id": str(pick("worker_id", "") or default_worker_id()),
            "timeout": parse_number("timeout", pick("timeout", 30.0), float, 0.001),
            "connect_timeout": parse_number(
                "connect_timeout", pick("connect_timeout", 5.0), float, 0.001
            ),
            "retry_attempts": parse_number("retry_attempts", pick("retry_attempts", 3), int, 0),
            "backoff_base": parse_number("backoff_base", pick("backoff_base", 1.0), float, 0),
            "backoff_max": parse_number("backoff_max", pick("backoff_max", 30.0), float, 0),
            "retry_deadline": parse_number(
                "retry_deadline", pick("retry_deadline", 60.0), float, 0
            ),
            "verify_tls": _parse_bool("verify_tls", pick("verify_tls", True)),
            "allow_insecure_http": _parse_bool(
                "allow_insecure_http", pick("allow_insecure_http", False)
            ),
            "validate_params": _parse_bool("validate_params", pick("validate_params", True)),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        self._check_url()

    def _check_url(self) -> None:
        parts = urlsplit(str(self.api_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TaskManagerConfigError(
                f"api_url must be an http(s) URL such as {DEFAULT_API_URL}, got {self.api_url!r}"
            )
        if (
            parts.scheme == "http"
            and not is_loopback_host(parts.hostname)
            and not self.allow_insecure_http
        ):
            raise TaskManagerConfigError(
                f"api_url {self.api_url!r} is plain http to a non-loopback host: the API key "
                "would travel in clear. Use https, or set allow_insecure_http=True "
                "(TASKMANAGER_ALLOW_INSECURE_HTTP=1) if you accept that."
            )

    # Resolved fields are never None; these accessors give mypy the narrowed types.
    @property
    def base_url(self) -> str:
        return str(self.api_url)

    @property
    def resolved_worker_id(self) -> str:
        return str(self.worker_id)

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) as ``requests`` wants them."""
        return (float(self.connect_timeout or 0), float(self.timeout or 0))
