"""Bridge configuration: arguments, then `BRIDGE_*` environment, then a TOML file, then defaults.

Every setting is declared once, as a field of ``BridgeConfig`` (name, type,
default, and in its metadata the bounds and the doc line); ``SETTINGS``, the
loader, the error messages and docs/OPERATIONS.md all follow those fields, so a
default cannot differ between two tables. What the sources said (``RawConfig``)
and what the bridge runs with (``BridgeConfig``) are separate types: only the
first holds unchecked values. Unknown keys and bad values fail at start with the
key's name (and the file's, for the TOML file). The client's settings live in
the ``[taskmanager]`` table and the ``TASKMANAGER_*`` variables (see
``taskmanager.TaskManagerConfig``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast, get_origin, get_type_hints

from taskmanager import TaskManagerConfig, TaskManagerConfigError, TaskManagerValidationError
from taskmanager.client import HttpLibrary
from taskmanager.config import SETTING_NAMES
from taskmanager.config import SETTINGS as CLIENT_SETTINGS
from taskmanager.connection_settings import env_proxy
from taskmanager.redact import MASK, mask_url
from taskmanager.validation import check_type_name

from .config_values import (
    SECRET_KEYS,
    Setting,
    TOMLDecodeError,
    check_toml_type,
    coerce,
    parse_toml,
)
from .errors import BridgeConfigError

DEFAULT_CONFIG_FILE = "bridge.toml"
DEFAULT_DB_URL = "sqlite:///taskmanager-bridge.db"
WORKER_ID_VARIABLE = "TASKMANAGER_WORKER_ID"
HTTP_CHOICES = ("auto", "stdlib", "aiohttp", "requests")
# connections = 0: one per worker (up to 8) while answers come from close by; one more
# set of those for each NEAR_ANSWER_SECONDS the fastest answer takes, up to 16 in all.
CONNECTIONS_PER_DISTANCE_BASE = 8
MAX_DERIVED_CONNECTIONS = 16
NEAR_ANSWER_SECONDS = 0.010

_T = TypeVar("_T")


def _setting(default: _T, doc: str, minimum: float | None = None) -> _T:
    """A ``BridgeConfig`` field that is a setting: its default, bounds and doc together.

    Typed as the default's type so that the field keeps its real type for mypy.
    """
    return field(default=default, metadata={"doc": doc, "minimum": minimum})


@dataclass(frozen=True, repr=False)
class BridgeConfig:
    """Resolved settings, checked and typed. Build with ``BridgeConfig.load()``.

    The fields down to ``shutdown_push_seconds`` are the settings (``SETTINGS``);
    the rest are what ``load`` found out besides them.
    """

    db_url: str = _setting(
        DEFAULT_DB_URL,
        "local queue database: a SQLite file path or URL, or a postgresql:// URL",
    )
    lock_seconds: float = _setting(
        120.0, "how long a dequeued task stays locked to its worker without a heartbeat", 1
    )
    worker_beat_seconds: float = _setting(
        5.0,
        "how often a worker process records that it is alive (status shows a worker "
        "silent for 3 beats as lost)",
        0.1,
    )
    lease_margin_seconds: float = _setting(
        30.0, "a task is not handed out when its remote lease ends sooner than this", 0
    )
    busy_timeout_seconds: float = _setting(
        30.0, "how long a SQLite writer waits for the write lock before failing", 0.1
    )
    types: list[str] = field(  # a list: its default needs a factory, so no _setting()
        default_factory=list,
        metadata={"doc": "task types the daemon claims (required by `run`)", "minimum": None},
    )
    prefetch: int = _setting(10, "most queued (not yet started) tasks kept locally per type", 1)
    workers: int = _setting(
        2, "local workers consuming the queue: with task duration, bounds what is claimed", 1
    )
    lease_seconds: float = _setting(
        300.0, "the server's claim timeout (300 s on the reference deployment)", 1
    )
    default_task_seconds: float = _setting(
        10.0, "assumed task duration until the queue has measured some", 0.001
    )
    poll_min_seconds: float = _setting(
        0.1, "how often the pull job runs: claims follow at once while tasks keep coming", 0.01
    )
    poll_max_seconds: float = _setting(
        30.0,
        "idle: least time between blind claims of a type (the probe for tasks whose lease "
        "ran out; without the watch, the claim poll backs off to it)",
        0.01,
    )
    watch_interval_seconds: float = _setting(
        1.0,
        "idle: how often one list request looks for pending tasks of every type "
        "(0: no watch, claims poll blindly)",
        0,
    )
    connections: int = _setting(
        0,
        "requests sent to the server at once, for claims and for deliveries "
        "(0: one per worker up to 8, times the fastest answer in 10 ms steps, up to 16)",
        0,
    )
    idle_claim_share: float = _setting(
        0.1, "share of the server's claim rate window that idle probes may spend", 0.001
    )
    push_interval_seconds: float = _setting(
        0.1, "how often pending outbox rows are sent (a look at an index when there are none)", 0.01
    )
    push_batch: int = _setting(200, "outbox rows sent per push", 1)
    push_backoff_max_seconds: float = _setting(
        60.0, "longest wait between attempts while the server is unreachable", 0.1
    )
    outbox_max_attempts: int = _setting(
        50, "a row still failing after this many attempts goes dead (never for outages)", 1
    )
    outbox_pause_rows: int = _setting(
        1000, "claiming pauses while more outbox rows than this are pending", 1
    )
    outbox_pause_age_seconds: float = _setting(
        900.0, "claiming pauses while the oldest pending outbox row is older than this", 1
    )
    reap_interval_seconds: float = _setting(
        2.0, "how often expired leases and locks are handled", 0.01
    )
    reconcile_interval_seconds: float = _setting(
        300.0, "how often orphan claims (claimed by us, unknown locally) are imported", 1
    )
    http: str = _setting(
        "auto",
        'how the daemon sends its requests: "stdlib" (http.client, the least CPU per '
        'request; no proxies), "aiohttp" (needs the [async] extra), "requests", or "auto" '
        "(stdlib, unless the environment names a proxy for api_url: then aiohttp when "
        "installed, else requests)",
    )
    shutdown_push_seconds: float = _setting(10.0, "time given to the last push on shutdown", 0)
    # -- not settings: the client's table as found, where it came from, what it implies --
    taskmanager: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    explicit_worker_id: str | None = None
    """The remote worker id the operator chose, or ``None`` to let the daemon pick one.

    ``TASKMANAGER_WORKER_ID`` of the environment given to ``load``, else the
    ``[taskmanager]`` table's ``worker_id``. Resolved at load so that the daemon
    never reads ``os.environ`` itself (``load(env=...)`` then isolates it too).
    """

    api_key_source: str = "no API key set (TASKMANAGER_API_KEY, or api_key in [taskmanager])"
    """Where the API key came from, for messages that must never show the key itself."""

    def __post_init__(self) -> None:
        # Built directly (not by load): the table is the only place the id can come from.
        if self.explicit_worker_id is None and self.taskmanager.get("worker_id"):
            object.__setattr__(self, "explicit_worker_id", str(self.taskmanager["worker_id"]))

    def __repr__(self) -> str:
        """Every field, but never the API key, nor a password inside ``db_url`` or
        ``api_url``.

        Configs end up in logs and tracebacks; the key and passwords are credentials.
        """
        shown: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "taskmanager":
                value = {k: _shown(k, v) for k, v in value.items()}
            elif f.name == "db_url":
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    __str__ = __repr__

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> BridgeConfig:
        """Arguments first, then ``BRIDGE_*`` variables, then the TOML file, then defaults.

        ``path`` defaults to ``BRIDGE_CONFIG``, else ``bridge.toml`` if it exists.
        ``env`` defaults to ``os.environ``; everything the config needs from the
        environment is read here, from that mapping.
        """
        return RawConfig.gather(path, os.environ if env is None else env, overrides).resolve()

    @property
    def most_connections(self) -> int:
        """The most requests the daemon keeps in flight per job (claims, deliveries)."""
        return self.connections or MAX_DERIVED_CONNECTIONS

    def connections_now(self, fastest_answer: float | None) -> int:
        """``connections``, or when 0: one per worker (up to 8), times how many
        ``NEAR_ANSWER_SECONDS`` the fastest recent answer takes, up to 16.

        A server close by answers within 10 ms (3-6 ms on its own host): there, more
        requests at once only queue at the server (they were slower at 0 ms in
        measurement). Beyond that the wait is travel, which requests side by side hide:
        each task still costs the server the same two requests.
        """
        if self.connections:
            return self.connections
        base = min(self.workers, CONNECTIONS_PER_DISTANCE_BASE)
        distance = math.ceil((fastest_answer or 0.0) / NEAR_ANSWER_SECONDS)
        return min(base * max(1, distance), MAX_DERIVED_CONNECTIONS)

    def http_library(self) -> HttpLibrary:
        """The HTTP library the daemon's client uses: ``http``, with ``auto`` resolved."""
        if self.http != "auto":
            return cast(HttpLibrary, self.http)
        if env_proxy(self.client_config().api_url) is None:
            return "stdlib"
        try:  # an install that fails to import (a broken wheel) falls back too
            import aiohttp  # noqa: F401
        except ImportError:
            return "requests"
        return "aiohttp"

    def client_config(self, env: Mapping[str, str] | None = None) -> TaskManagerConfig:
        """The client's config: ``TASKMANAGER_*`` variables, then the ``[taskmanager]`` table."""
        env = os.environ if env is None else env
        known = set(SETTING_NAMES)
        unknown = sorted(set(self.taskmanager) - known)
        if unknown:
            raise BridgeConfigError(
                f"[taskmanager]: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        from_file = {
            k: v for k, v in self.taskmanager.items() if not env.get("TASKMANAGER_" + k.upper())
        }
        try:
            return TaskManagerConfig.from_env(env, **from_file)
        except TaskManagerConfigError as exc:
            raise BridgeConfigError(f"[taskmanager] / TASKMANAGER_*: {exc}") from None


def _shown(name: str, value: Any) -> Any:
    """A ``[taskmanager]`` value as repr() may show it: the key masked, a URL's password too."""
    if name in SECRET_KEYS and value:
        return MASK
    return mask_url(value) if name == "api_url" and isinstance(value, str) else value


def _declared_settings() -> tuple[Setting, ...]:
    """``SETTINGS``, derived from the fields of ``BridgeConfig`` that carry a doc."""
    hints = get_type_hints(BridgeConfig)
    found: list[Setting] = []
    for f in fields(BridgeConfig):
        if "doc" not in f.metadata:
            continue
        hint = hints[f.name]
        kind = get_origin(hint) or hint
        found.append(Setting(f.name, kind, _default(f), f.metadata["doc"], f.metadata["minimum"]))
    return tuple(found)


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    assert f.default_factory is not MISSING, f.name
    return f.default_factory()


SETTINGS: tuple[Setting, ...] = _declared_settings()
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _client_field_kinds() -> dict[str, type]:
    """The type of each client setting, from the client's own declaration."""
    return {setting.name: setting.kind for setting in CLIENT_SETTINGS}


@dataclass(frozen=True)
class RawConfig:
    """What the sources said, before any check: the input of ``resolve()``.

    ``file`` holds the TOML file's bridge keys (already known to be settings);
    ``taskmanager`` its ``[taskmanager]`` table. ``env`` and ``taskmanager`` can hold
    the API key, so they stay out of ``repr()``.
    """

    arguments: Mapping[str, Any]
    env: Mapping[str, str] = field(repr=False)
    file: Mapping[str, Any]
    file_path: Path | None
    taskmanager: Mapping[str, Any] = field(repr=False)

    @classmethod
    def gather(
        cls,
        path: str | os.PathLike[str] | None,
        env: Mapping[str, str],
        arguments: Mapping[str, Any],
    ) -> RawConfig:
        """Read the TOML file (refusing unknown keys and mistyped values) and keep the rest."""
        unknown = set(arguments) - set(_BY_NAME)
        if unknown:
            raise BridgeConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        file_values, taskmanager, file_path = _read_file(path, env)
        return cls(dict(arguments), env, file_values, file_path, taskmanager)

    def resolve(self) -> BridgeConfig:
        """The checked, typed config: each setting from its first source that has it."""
        values = {setting.name: self._value(setting) for setting in SETTINGS}
        if values["poll_max_seconds"] < values["poll_min_seconds"]:
            raise BridgeConfigError(
                f"poll_max_seconds ({values['poll_max_seconds']}) must be >= "
                f"poll_min_seconds ({values['poll_min_seconds']})"
            )
        if values["http"] not in HTTP_CHOICES:
            raise BridgeConfigError(
                f"http must be one of {', '.join(HTTP_CHOICES)}, got {values['http']!r}"
            )
        for name in values["types"]:  # a name the server cannot look up is never claimed
            try:
                check_type_name(name)
            except TaskManagerValidationError as exc:
                raise BridgeConfigError(f"types: {exc.message}") from None
        if values["lease_margin_seconds"] >= values["lease_seconds"]:
            raise BridgeConfigError(
                f"lease_margin_seconds ({values['lease_margin_seconds']}) must be smaller "
                f"than lease_seconds ({values['lease_seconds']})"
            )
        worker_id = self.env.get(WORKER_ID_VARIABLE) or self.taskmanager.get("worker_id")
        if self.env.get("TASKMANAGER_API_KEY"):
            key_source = "from the environment variable TASKMANAGER_API_KEY"
        elif self.taskmanager.get("api_key"):
            key_source = f"api_key in [taskmanager] of {self.file_path}"
        else:
            key_source = BridgeConfig.api_key_source
        return BridgeConfig(
            **values,
            taskmanager=dict(self.taskmanager),
            source=str(self.file_path) if self.file_path else None,
            explicit_worker_id=str(worker_id) if worker_id else None,
            api_key_source=key_source,
        )

    def _value(self, setting: Setting) -> Any:
        if self.arguments.get(setting.name) is not None:
            return coerce(setting, self.arguments[setting.name], "argument")
        if self.env.get(setting.env):
            return coerce(setting, self.env[setting.env], setting.env)
        if setting.name in self.file:
            # The type was checked when the file was read; this checks the bounds.
            return coerce(setting, self.file[setting.name], str(self.file_path))
        return list(setting.default) if setting.kind is list else setting.default


def _read_file(
    path: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    explicit = path is not None or bool(env.get("BRIDGE_CONFIG"))
    chosen = Path(path if path is not None else env.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_FILE)
    if not chosen.exists():
        if explicit:
            raise BridgeConfigError(f"config file {chosen} does not exist")
        return {}, {}, None
    try:
        data = parse_toml(chosen.read_text(encoding="utf-8"))
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BridgeConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise BridgeConfigError(f"config file {chosen} cannot be read: {exc}") from None
    taskmanager = data.pop("taskmanager", {})
    if not isinstance(taskmanager, dict):
        raise BridgeConfigError(f"{chosen}: [taskmanager] must be a table")
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        known = ", ".join(s.name for s in SETTINGS)
        raise BridgeConfigError(f"{chosen}: unknown key(s) {', '.join(unknown)} (known: {known})")
    for name, value in data.items():
        check_toml_type(name, _BY_NAME[name].kind, value, str(chosen))
    client_kinds = _client_field_kinds()
    for name, value in taskmanager.items():
        if name in client_kinds:  # unknown keys are refused by client_config, naming them all
            check_toml_type(name, client_kinds[name], value, f"[taskmanager] in {chosen}")
    return data, taskmanager, chosen


def resolve_db_url(path: str | os.PathLike[str] | None = None) -> str:
    """The queue's database URL as the bridge would use it (for Alembic's env.py)."""
    return BridgeConfig.load(path).db_url
