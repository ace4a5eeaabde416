"""Client configuration: arguments first, ``TASKMANAGER_*`` environment second.

Every setting is declared once, in ``SETTINGS`` (name, type, default, minimum,
doc); resolution, the error messages and docs/API_REFERENCE.md follow that
table. What a caller passes is raw input (any field may be missing or a
string from the environment); a ``TaskManagerConfig`` is the resolved result,
every field typed and checked, so code that uses it never re-validates.

The environment is read when a config is built, never at import time, so tests
and long-running processes see the values in force when they construct a client.
Every bad value is a ``TaskManagerConfigError`` that names the setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .exceptions import TaskManagerConfigError
from .redact import mask_url

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


def _parse_url(name: str, raw: Any) -> str:
    """Trailing ``/`` dropped so that ``api_url + "/tasks"`` never doubles it."""
    return str(raw).rstrip("/")


def _parse_text(name: str, raw: Any) -> str:
    return str(raw)


def check_api_key(raw: Any) -> str:
    """The key as it will go into the ``X-API-Key`` header, or an error that never shows it.

    A key read from a file or a secret store often ends in ``"\\n"``; ``requests``
    would refuse that header later with the key in its message (and in logs).
    Latin-1 is what HTTP headers can carry.
    """
    if not isinstance(raw, str):
        raise TaskManagerConfigError(f"api_key must be a string, got a {type(raw).__name__}")
    for position, char in enumerate(raw):
        if char.isspace() or not char.isprintable():
            raise TaskManagerConfigError(
                f"api_key has whitespace or a control character at position {position} "
                f"(of {len(raw)}): a trailing newline from a file or secret store? "
                "(value not shown)"
            )
        if ord(char) > 0xFF:
            raise TaskManagerConfigError(
                f"api_key has a character outside latin-1 at position {position} "
                "(HTTP headers cannot carry it; value not shown)"
            )
    return raw


def _parse_api_key(name: str, raw: Any) -> str:
    return check_api_key(raw)


@dataclass(frozen=True)
class Setting:
    """One client setting: the single place its name, type, default, bounds and doc live.

    ``default`` is a value, or a function for defaults that depend on the host.
    ``parse`` turns raw input (an argument, TOML value or environment text) into the
    resolved value; numbers and booleans get theirs from ``kind`` and ``minimum``.
    """

    name: str
    kind: type
    default: Any
    doc: str
    minimum: float = 0
    parse_text: Callable[[str, Any], Any] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def parse(self, raw: Any) -> Any:
        if self.kind is bool:
            return _parse_bool(self.name, raw)
        if self.kind in (int, float):
            return parse_number(self.name, raw, self.kind, self.minimum)
        assert self.parse_text is not None, f"{self.name}: a text setting needs parse_text"
        return self.parse_text(self.name, raw)

    def resolve(self, given: Any, env: Mapping[str, str]) -> Any:
        """The argument if given, else the environment variable, else the default.

        ``None`` and ``""`` both mean "not given": an exported but empty variable
        is how shells and unit files say "unset".
        """
        raw = given if given is not None else env.get(self.env)
        if raw is None or raw == "":
            return self.default_value()
        return self.parse(raw)


SETTINGS: tuple[Setting, ...] = (
    Setting("api_url", str, DEFAULT_API_URL, "base URL; trailing `/` dropped", 0, _parse_url),
    Setting(
        "api_key",
        str,
        None,
        "sent only as `X-API-Key`; never in `repr`, logs or errors",
        0,
        _parse_api_key,
    ),
    Setting(
        "worker_id",
        str,
        default_worker_id,
        "stable across restarts, so our claims stay ours",
        0,
        _parse_text,
    ),
    Setting("timeout", float, 30.0, "read timeout, seconds", 0.001),
    Setting("connect_timeout", float, 5.0, "seconds", 0.001),
    Setting("retry_attempts", int, 3, "retries after the first try"),
    Setting("backoff_base", float, 1.0, "first back-off (1 s, 2 s, 4 s ... ±20% jitter)"),
    Setting("backoff_max", float, 30.0, "cap of one back-off"),
    Setting("retry_deadline", float, 60.0, "total seconds of waiting a call may spend on retries"),
    Setting("verify_tls", bool, True, "turning it off logs a warning"),
    Setting(
        "allow_insecure_http",
        bool,
        False,
        "`http://` is refused except to loopback unless true",
    ),
    Setting("validate_params", bool, True, "check params against a known schema before sending"),
)
SETTING_NAMES: tuple[str, ...] = tuple(setting.name for setting in SETTINGS)


def resolve_settings(given: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's resolved value, checked alone and together, by name."""
    check_known(given)
    values = {s.name: s.resolve(given.get(s.name), env) for s in SETTINGS}
    check_url(values["api_url"], allow_insecure_http=values["allow_insecure_http"])
    return values


def check_known(names: Iterable[str]) -> None:
    """A name that is no setting is a typo: refused rather than silently ignored."""
    unknown = sorted(set(names) - set(SETTING_NAMES))
    if unknown:
        raise TaskManagerConfigError(
            f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(SETTING_NAMES)})"
        )


def check_url(api_url: str, *, allow_insecure_http: bool) -> None:
    """An http(s) URL, and https unless the host is loopback or plain http was accepted.

    Plain http to another host would send the API key in clear. The host checked must
    be the host contacted: a backslash ends the host for requests but not for
    ``urlsplit`` (``http://evil\\@127.0.0.1`` goes to ``evil``), so it is refused with
    whitespace and control characters (no URL holds them raw), and a port or
    bracket ``urlsplit`` cannot read is refused here, not in a request's error.
    """
    shown = mask_url(api_url)
    if any(char == "\\" or char.isspace() or not char.isprintable() for char in api_url):
        raise TaskManagerConfigError(
            f"api_url {shown!r} holds a backslash, whitespace or a control character: "
            "HTTP libraries disagree on where such a URL's host ends (percent-encode it)"
        )
    try:
        parts = urlsplit(api_url)
        parts.port  # noqa: B018 (reading it checks it: a number within 0-65535)
    except ValueError as exc:
        raise TaskManagerConfigError(f"api_url {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TaskManagerConfigError(
            f"api_url must be an http(s) URL such as {DEFAULT_API_URL}, got {shown!r}"
        )
    if "?" in api_url or "#" in api_url:  # every path is appended to it
        raise TaskManagerConfigError(
            f"api_url {shown!r} holds a query or a fragment: it must end with the API's path"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not allow_insecure_http:
        raise TaskManagerConfigError(
            f"api_url {shown!r} is plain http to a non-loopback host: the API key "
            "(and any password in the URL) would travel in clear. Use https, or set "
            "allow_insecure_http=True (TASKMANAGER_ALLOW_INSECURE_HTTP=1) if you accept that."
        )


@dataclass(frozen=True, init=False)
class TaskManagerConfig:
    """Everything the client needs to reach the API, resolved and checked.

    The constructor takes raw input: any setting left ``None`` is read from
    ``TASKMANAGER_<SETTING>`` (upper case) in ``env`` (``os.environ`` at call
    time by default), then from its default; see ``SETTINGS``. The fields are
    the resolved values, never ``None`` except ``api_key`` (no key configured:
    only ``/health`` will work).
    """

    api_url: str
    api_key: str | None = field(repr=False)
    worker_id: str
    timeout: float
    connect_timeout: float
    retry_attempts: int
    backoff_base: float
    backoff_max: float
    retry_deadline: float
    verify_tls: bool
    allow_insecure_http: bool
    validate_params: bool

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        worker_id: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        retry_attempts: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        retry_deadline: float | None = None,
        verify_tls: bool | None = None,
        allow_insecure_http: bool | None = None,
        validate_params: bool | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        given = {
            "api_url": api_url,
            "api_key": api_key,
            "worker_id": worker_id,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "retry_attempts": retry_attempts,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
            "retry_deadline": retry_deadline,
            "verify_tls": verify_tls,
            "allow_insecure_http": allow_insecure_http,
            "validate_params": validate_params,
        }
        resolved = resolve_settings(given, os.environ if env is None else env)
        for name, value in resolved.items():
            # The one assignment of a frozen instance: at construction, from checked values.
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> TaskManagerConfig:
        """Build from an explicit environment mapping (for tests and tools).

        An override that names no setting is a ``TaskManagerConfigError``.
        """
        check_known(overrides)
        return cls(env=env, **overrides)

    def __repr__(self) -> str:
        """Every field but the API key, and ``api_url`` without its password: a config
        ends up in logs and tracebacks."""
        shown = (
            f"{f.name}={mask_url(self.api_url) if f.name == 'api_url' else getattr(self, f.name)!r}"
            for f in fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) as ``requests`` wants them."""
        return (self.connect_timeout, self.timeout)
