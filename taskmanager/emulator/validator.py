"""The server's own small JSON Schema validator, with its messages.

It knows only ``type``, ``required``, ``properties``, ``minLength``,
``maxLength``, ``pattern``, ``minimum``, ``maximum``, ``minItems``,
``maxItems``, ``items`` and ``enum``, and judges values as PHP decoded them:
``1.0`` is a number, not an integer; ``{}`` and ``[]`` are the same empty array.
The two measured messages are exact (``Missing required property: .channel_url``,
``Type mismatch at top_n: expected integer, got string``); the others follow
their pattern.
"""

from __future__ import annotations

import json
import re
from typing import Any


def php_type(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):  # PHP decodes integers beyond 64 bits as floats
        return "integer" if -(2**63) <= value < 2**63 else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value: Any, expected: str) -> bool:
    actual = php_type(value)
    empty_container = value == {} or value == []
    if expected == "number":
        return actual in ("integer", "number")
    if expected in ("object", "array"):
        return actual == expected or empty_container
    return actual == expected


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object_errors(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = [
        f"Missing required property: {path}.{name}"
        for name in schema.get("required", []) or []
        if name not in value
    ]
    for name, sub_schema in (schema.get("properties") or {}).items():
        if name in value and isinstance(sub_schema, dict):
            errors.extend(validate(value[name], sub_schema, _child(path, name)))
    return errors


def _string_errors(value: str, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"String too short at {path}: minimum length {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"String too long at {path}: maximum length {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"Pattern mismatch at {path}: {schema['pattern']}")
    return errors


def _number_errors(value: float, schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"Value too small at {path}: minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"Value too large at {path}: maximum {schema['maximum']}")
    return errors


def _list_errors(value: list[Any], schema: dict[str, Any], path: str) -> list[str]:
    errors = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"Too few items at {path}: minimum {schema['minItems']}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"Too many items at {path}: maximum {schema['maxItems']}")
    if isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors.extend(validate(item, schema["items"], f"{path}[{index}]"))
    return errors


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every error, in schema order, as the server words them."""
    expected = schema.get("type")
    if isinstance(expected, str) and not _is_type(value, expected):
        return [f"Type mismatch at {path or '.'}: expected {expected}, got {php_type(value)}"]
    errors: list[str] = []
    if isinstance(value, dict):
        errors += _object_errors(value, schema, path)
    if isinstance(value, str):
        errors += _string_errors(value, schema, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        errors += _number_errors(value, schema, path)
    if isinstance(value, list):
        errors += _list_errors(value, schema, path)
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"Invalid value at {path}: must be one of {json.dumps(schema['enum'])}")
    return errors
