"""Reading setting values as their sources give them: text from arguments and
environment variables, typed values from a TOML file. Each is checked against the
setting's kind and bounds, and a mistake is named with the fix (``top_n = "5"``: write
it without quotes), never a traceback."""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from typing import Any

from taskmanager import TaskManagerConfigError
from taskmanager.config import parse_number

from .errors import BridgeConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError

SECRET_KEYS = frozenset({"api_key"})  # [taskmanager] keys never shown by repr()


@dataclass(frozen=True)
class Setting:
    """One setting as the loader and the docs see it, read off a ``BridgeConfig`` field."""

    name: str
    kind: type  # int, float, str or list (a list of names)
    default: Any
    doc: str
    minimum: float | None = None

    @property
    def env(self) -> str:
        return "BRIDGE_" + self.name.upper()


def coerce(setting: Setting, raw: Any, source: str) -> Any:
    """An argument's or environment variable's value, parsed (text is allowed here)."""
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


def _toml_type(value: object) -> str:
    """How TOML calls the type of a parsed value, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (_dt.date, _dt.time)):
        return "a date/time"
    return type(value).__name__  # pragma: no cover - tomllib makes nothing else


def _toml_type_fits(kind: type, value: object) -> bool:
    """Whether a TOML value has the type a setting of ``kind`` needs.

    Stricter than ``coerce``: text stands for a number or a list only in an
    environment variable, where everything is text; in TOML, ``"300"`` for a number
    is a mistake worth naming (a bool is never a number, though Python says so).
    """
    if kind in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list)
    return isinstance(value, kind)


_WANTED = {
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array of names",
    bool: "true or false",
}


def _fix_hint(name: str, kind: type, value: object) -> str:
    """How to write a quoted value the way TOML means it, when that is the likely mistake."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if kind is list:
        names = ", ".join(f'"{part.strip()}"' for part in text.split(",") if part.strip())
        return f" (write {name} = [{names}])"
    if kind is bool and text.lower() in ("true", "false"):
        return f" (write {name} = {text.lower()} without quotes)"
    if kind in (int, float):
        try:
            float(text)
        except ValueError:
            return ""
        return f" (write {name} = {text} without quotes)"
    return ""


def check_toml_type(name: str, kind: type, value: object, where: str) -> None:
    if not _toml_type_fits(kind, value):
        if name in SECRET_KEYS:  # a key typed wrong is still a key: name its type only
            got, hint = f"a value that is {_toml_type(value)}", ""
        else:
            got, hint = f"{value!r}: {_toml_type(value)}", _fix_hint(name, kind, value)
        raise BridgeConfigError(
            f"{name} (from {where}) must be {_WANTED.get(kind, kind.__name__)}, got {got}{hint}"
        )


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text to a dict (``tomllib`` on 3.11+, ``tomli`` before)."""
    parsed: dict[str, Any] = tomllib.loads(text)
    return parsed
