"""Bridge configuration: arguments, then `BRIDGE_*` environment, then a TOML file, then defaults.

Every setting is declared once in ``SETTINGS`` (name, type, default, bounds,
doc); the loader, the error messages and docs/OPERATIONS.md all follow that
table. Unknown keys and bad values fail at start with the key's name.
The client's settings live in the ``[taskmanager]`` table and the
``TASKMANAGER_*`` variables (see ``taskmanager.TaskManagerConfig``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskmanager import TaskManagerConfig, TaskManagerConfigError
from taskmanager.config import SETTING_NAMES, parse_number

from .errors import BridgeConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_FILE = "bridge.toml"
DEFAULT_DB_URL = "sqlite:///taskmanager-bridge.db"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    doc: str
    minimum: float | None = None

    @property
    def env(self) -> str:
        return "BRIDGE_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db_url",
        str,
        DEFAULT_DB_URL,
        "local queue database: a SQLite file path or URL, or a postgresql:// URL",
    ),
    Setting(
        "lock_seconds",
        float,
        120.0,
        "how long a dequeued task stays locked to its worker without a heartbeat",
        1,
    ),
    Setting(
        "lease_margin_seconds",
        float,
        30.0,
        "a task is not handed out when its remote lease ends sooner than this",
        0,
    ),
    Setting(
        "busy_timeout_seconds",
        float,
        30.0,
        "how long a SQLite writer waits for the write lock before failing",
        0.1,
    ),
    Setting("types", list, [], "task types the daemon claims (required by `run`)"),
    Setting("prefetch", int, 10, "most queued (not yet started) tasks kept locally per type", 1),
    Setting(
        "workers",
        int,
        2,
        "local workers consuming the queue: with task duration, bounds what is claimed",
        1,
    ),
    Setting(
        "lease_seconds",
        float,
        300.0,
        "the server's claim timeout (300 s on the reference deployment)",
        1,
    ),
    Setting(
        "default_task_seconds",
        float,
        10.0,
        "assumed task duration until the queue has measured some",
        0.001,
    ),
    Setting("poll_min_seconds", float, 0.5, "claim poll interval while tasks keep coming", 0.01),
    Setting(
        "poll_max_seconds", float, 30.0, "claim poll interval when idle (backs off to it)", 0.01
    ),
    Setting("push_interval_seconds", float, 0.5, "how often pending outbox rows are sent", 0.01),
    Setting("push_batch", int, 200, "outbox rows sent per push", 1),
    Setting(
        "push_backoff_max_seconds",
        float,
        60.0,
        "longest wait between attempts while the server is unreachable",
        0.1,
    ),
    Setting(
        "outbox_max_attempts",
        int,
        50,
        "a row still failing after this many attempts goes dead (never for outages)",
        1,
    ),
    Setting(
        "outbox_pause_rows",
        int,
        1000,
        "claiming pauses while more outbox rows than this are pending",
        1,
    ),
    Setting(
        "outbox_pause_age_seconds",
        float,
        900.0,
        "claiming pauses while the oldest pending outbox row is older than this",
        1,
    ),
    Setting(
        "reap_interval_seconds", float, 2.0, "how often expired leases and locks are handled", 0.01
    ),
    Setting(
        "reconcile_interval_seconds",
        float,
        300.0,
        "how often orphan claims (claimed by us, unknown locally) are imported",
        1,
    ),
    Setting("shutdown_push_seconds", float, 10.0, "time given to the last push on shutdown", 0),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    where = f"{setting.name} (from {source})"
    if setting.kind is list:
        items = [part.strip() for part in raw.split(",")] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise BridgeConfigError(f"{where} must be a list of names, got {raw!r}")
        return [i for i in items if i]
    if setting.kind is str:
        if not isinstance(raw, str) or not raw.strip():
            raise BridgeConfigError(f"{where} must be a non-empty string, got {raw!r}")
        return raw.strip()
    try:
        return parse_number(where, raw, setting.kind, setting.minimum or 0)
    except TaskManagerConfigError as exc:
        raise BridgeConfigError(str(exc)) from None


@dataclass(frozen=True)
class BridgeConfig:
    """Resolved settings. Build with ``BridgeConfig.load()``."""

    db_url: str = DEFAULT_DB_URL
    lock_seconds: float = 120.0
    lease_margin_seconds: float = 30.0
    busy_timeout_seconds: float = 30.0
    types: list[str] = field(default_factory=list)
    prefetch: int = 10
    workers: int = 2
    lease_seconds: float = 300.0
    default_task_seconds: float = 10.0
    poll_min_seconds: float = 0.5
    poll_max_seconds: float = 30.0
    push_interval_seconds: float = 0.5
    push_batch: int = 200
    push_backoff_max_seconds: float = 60.0
    outbox_max_attempts: int = 50
    outbox_pause_rows: int = 1000
    outbox_pause_age_seconds: float = 900.0
    reap_interval_seconds: float = 2.0
    reconcile_interval_seconds: float = 300.0
    shutdown_push_seconds: float = 10.0
    taskmanager: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

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
        """
        env = os.environ if env is None else env
        file_values, taskmanager, source = _read_file(path, env)
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if overrides.get(setting.name) is not None:
                values[setting.name] = _coerce(setting, overrides[setting.name], "argument")
            elif env.get(setting.env):
                values[setting.name] = _coerce(setting, env[setting.env], setting.env)
            elif setting.name in file_values:
                values[setting.name] = _coerce(setting, file_values[setting.name], str(source))
            else:
                values[setting.name] = (
                    list(setting.default) if setting.kind is list else (setting.default)
                )
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise BridgeConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if values["poll_max_seconds"] < values["poll_min_seconds"]:
            raise BridgeConfigError(
                f"poll_max_seconds ({values['poll_max_seconds']}) must be >= "
                f"poll_min_seconds ({values['poll_min_seconds']})"
            )
        if values["lease_margin_seconds"] >= values["lease_seconds"]:
            raise BridgeConfigError(
                f"lease_margin_seconds ({values['lease_margin_seconds']}) must be smaller "
                f"than lease_seconds ({values['lease_seconds']})"
            )
        return cls(**values, taskmanager=taskmanager, source=str(source) if source else None)

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
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
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
    return data, taskmanager, chosen


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text to a dict (``tomllib`` on 3.11+, ``tomli`` before)."""
    parsed: dict[str, Any] = tomllib.loads(text)
    return parsed


def resolve_db_url(path: str | os.PathLike[str] | None = None) -> str:
    """The queue's database URL as the bridge would use it (for Alembic's env.py)."""
    return BridgeConfig.load(path).db_url
