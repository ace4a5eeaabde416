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
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    where = f"{setting.name} (from {source})"
    if setting.kind is str:
        if not isinstance(raw, str) or not raw.strip():
            raise BridgeConfigError(f"{where} must be a non-empty string, got {raw!r}")
        return raw.strip()
    if isinstance(raw, bool):
        raise BridgeConfigError(f"{where} must be a number, got {raw!r}")
    try:
        value = setting.kind(raw)
    except (TypeError, ValueError):
        raise BridgeConfigError(f"{where} must be a number, got {raw!r}") from None
    if setting.minimum is not None and value < setting.minimum:
        raise BridgeConfigError(f"{where} must be >= {setting.minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class BridgeConfig:
    """Resolved settings. Build with ``BridgeConfig.load()``."""

    db_url: str = DEFAULT_DB_URL
    lock_seconds: float = 120.0
    lease_margin_seconds: float = 30.0
    busy_timeout_seconds: float = 30.0
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
                values[setting.name] = setting.default
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise BridgeConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values, taskmanager=taskmanager, source=str(source) if source else None)


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


def resolve_db_url(path: str | os.PathLike[str] | None = None) -> str:
    """The queue's database URL as the bridge would use it (for Alembic's env.py)."""
    return BridgeConfig.load(path).db_url
