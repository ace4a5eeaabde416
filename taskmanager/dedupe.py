"""The server's deduplication key, computed exactly as the PHP server does.

The server stores ``sha256_hex(type + "\\0" + json_encode(json_decode(body.params)))``
with ``JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES``. So the key depends on
PHP's re-encoding of the params, not on the bytes we sent: integral floats lose
their fraction, big exponents are written ``1.0e+20``, integers beyond 64 bits
become floats, ``{}`` nested anywhere becomes ``[]``. ``php_json`` reproduces
that encoding; ``canonical_params`` is what this client sends (sorted keys, so
the same logical params always deduplicate).
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# PHP escapes the two JavaScript line terminators even with
# JSON_UNESCAPED_UNICODE (unless JSON_UNESCAPED_LINE_TERMINATORS is given).
_LINE_TERMINATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029"}


def canonical_params(params: Any) -> Any:
    """A copy of ``params`` with every object's keys sorted, as the client sends them."""
    if isinstance(params, dict):
        return {key: canonical_params(params[key]) for key in sorted(params)}
    if isinstance(params, (list, tuple)):
        return [canonical_params(item) for item in params]
    return params


def php_float(value: float) -> str:
    """PHP's ``json_encode`` of a float with ``serialize_precision = -1``.

    Shortest round-trip digits (as Python's ``repr``), no fraction when the
    value is integral, exponent notation when the decimal exponent is >= 17
    or < -4, with at least one digit after the point and no padded exponent.
    """
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{value!r} cannot be encoded as JSON")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent = int(exponent) + len(digit_tuple) - len(digits)
    # decpt: the value is 0.<digits> * 10**decpt, as in PHP's php_gcvt.
    decpt = exponent + len(digits)
    prefix = "-" if sign else ""
    if decpt > 17 or decpt < -3:
        mantissa = digits[0] + "." + (digits[1:] or "0")
        power = decpt - 1
        return f"{prefix}{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"
    if decpt <= 0:
        return f"{prefix}0.{'0' * -decpt}{digits}"
    if len(digits) <= decpt:
        return prefix + digits + "0" * (decpt - len(digits))
    return f"{prefix}{digits[:decpt]}.{digits[decpt:]}"


def _php_string(value: str) -> str:
    encoded = json.dumps(value, ensure_ascii=False)
    for raw, escaped in _LINE_TERMINATORS.items():
        encoded = encoded.replace(raw, escaped)
    return encoded


def _is_php_list(obj: dict[str, Any]) -> bool:
    """PHP decodes an object with keys "0".."n-1" (in order) to a list, and re-encodes a list."""
    return all(key == str(index) for index, key in enumerate(obj))


def _php_scalar(value: Any) -> str | None:
    """A JSON scalar as PHP writes it; ``None`` when ``value`` is a container."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value) if _INT64_MIN <= value <= _INT64_MAX else php_float(float(value))
    if isinstance(value, float):
        return php_float(value)
    if isinstance(value, str):
        return _php_string(value)
    return None


def php_json(value: Any) -> str:
    """Compact JSON as PHP re-encodes a decoded value (see module docstring)."""
    scalar = _php_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(php_json(item) for item in value) + "]"
    if isinstance(value, dict):
        if _is_php_list(value):  # includes {} -> []
            return "[" + ",".join(php_json(item) for item in value.values()) + "]"
        members = (f"{_php_string(str(key))}:{php_json(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dedupe_key(task_type: str, params: dict[str, Any], *, sort_keys: bool = True) -> str:
    """The ``dedupe_key`` the server will store for this task.

    With ``sort_keys=True`` (the default) it is the key of a task created
    through this client, which sends sorted keys; ``sort_keys=False`` gives the
    key for params sent in their given order by some other client.
    """
    sent = canonical_params(params) if sort_keys else params
    material = task_type + "\0" + php_json(sent)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()
