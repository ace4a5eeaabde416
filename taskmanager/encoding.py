"""The one JSON encoder for what users hand over: results, params, metadata.

Handlers return what their own code produces: a ``datetime`` from a scraper, a
``Decimal`` from a database, a ``UUID``, an ``Enum``, a dataclass. ``to_json``
turns those into plain JSON values (documented in docs/INTEGRATION_GUIDE.md,
"What a result may contain") and refuses everything else with the key path of
the first value it cannot encode, e.g. ``results.items[3].seen_at: set is not
JSON``, so one bad value fails one task with a message a person can act on.

NaN and the infinities are refused as well: the server's PHP ``json_decode``
cannot read them. ``convert=False`` checks without converting anything (the
client's ``ensure_json``): the same walk, the same messages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import json
import json.encoder
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any


class EncodingError(ValueError):
    """A value JSON cannot carry; ``path`` names where it is, ``problem`` what it is."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def _float(value: float, path: str) -> float:
    if math.isfinite(value):
        return value
    raise EncodingError(path, f"{value!r} is not JSON (the server's PHP decoder refuses it)")


def _decimal(value: decimal.Decimal, path: str) -> str:
    """As a string: a float would lose the digits a Decimal is used to keep."""
    if value.is_finite():
        return str(value)
    raise EncodingError(path, f"Decimal {value} is not JSON (the server's PHP decoder refuses it)")


def _key(key: Any, path: str) -> str:
    """Object keys are strings in JSON; ints, floats, bools, None and enums become their text
    (as ``json.dumps`` does), anything else is refused."""
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        return repr(_float(float(key), path))
    raise EncodingError(path, f"a key of type {type(key).__name__} is not JSON (keys are strings)")


def _converted(value: Any, path: str) -> tuple[bool, Any]:
    """(True, a value to encode instead) for the types users commonly return, else (False, _)."""
    if isinstance(value, enum.Enum):
        return True, value.value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return True, value.isoformat()
    if isinstance(value, dt.timedelta):
        return True, value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return True, _decimal(value, path)
    if isinstance(value, uuid.UUID | PurePath):
        return True, str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(dump):
        return True, dump(mode="json")
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):  # numpy
        return True, value.tolist()
    return False, None


def to_json(value: Any, what: str, *, convert: bool = True) -> Any:
    """``value`` as plain JSON values (dict, list, str, int, float, bool, None).

    Raises ``EncodingError`` naming the key path (starting at ``what``) of the first
    value that cannot be encoded. Mappings become dicts, tuples and lists lists; with
    ``convert`` the types listed in the module docstring become JSON too.
    """
    try:
        try:
            return _plain(value, convert)
        except EncodingError:  # walked again, building the key path the message names
            return _walk(value, what, convert)
    except RecursionError:  # a value that refers to itself, or deeper than Python's stack
        raise EncodingError(
            what,
            "nested too deeply to encode as JSON, or refers to itself (the server's "
            "PHP decoder refuses more than 512 levels anyway)",
        ) from None


def _plain(value: Any, convert: bool) -> Any:
    """``_walk`` without building key paths (the usual values are plain JSON already, and
    a path is only needed for a refusal); other kinds of value go through ``_walk``."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is dict:  # a loop, not a comprehension: one frame a level, as deep as _walk
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            encoded[key if type(key) is str else _key(key, "")] = _plain(item, convert)
        return encoded
    if kind is list or kind is tuple:
        return [_plain(item, convert) for item in value]
    return _walk(value, "", convert)


def _walk(value: Any, path: str, convert: bool) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return _float(value, path)
    if isinstance(value, Mapping):
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            name = _key(key, f"{path}.<key {key!r}>")
            encoded[name] = _walk(item, f"{path}.{name}", convert)
        return encoded
    if isinstance(value, list | tuple):
        return [_walk(item, f"{path}[{i}]", convert) for i, item in enumerate(value)]
    if convert:
        known, replacement = _converted(value, path)
        if known:
            return _walk(replacement, path, convert)
    if isinstance(value, str | int):  # subclasses json.dumps writes as their base type
        return value
    if isinstance(value, float):
        return _float(float(value), path)
    raise EncodingError(path, f"{type(value).__name__} is not JSON")


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_writer(
    *, ensure_ascii: bool = True, compact: bool = False, allow_nan: bool = True
) -> Callable[[Any], str]:
    """``json.dumps`` with these options, its C encoder made once a thread.

    ``json.dumps`` makes its C encoder again on every call, which is most of its cost
    for the small values a task carries (1.6 against 1.1 us for ``{"n": 1}``), paid for
    every params, result and request body. Whatever the fast encoder does not write
    (a cycle, a type JSON lacks, NaN where refused) goes to ``json.dumps`` itself, so
    the text and the errors are ``json.dumps``'; where the C encoder is missing, or
    writes a probe differently, this is ``json.dumps``.
    """
    item_separator, key_separator = (",", ":") if compact else (", ", ": ")
    dumps = functools.partial(
        json.dumps,
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        separators=(item_separator, key_separator),
    )
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    quote = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    probe = {"a": [1, 2.5, None, True, False, "\u00e9\n"], "b": {}}
    try:
        make(None, _not_json, quote, None, key_separator, item_separator, False, False, allow_nan)
    except Exception:  # no C encoder, or one whose arguments differ: json.dumps
        return dumps
    mine = threading.local()  # an encoder a thread: its cycle markers are its own

    def encoder() -> Any:
        encode = getattr(mine, "encode", None)
        if encode is None:
            mine.markers = {}
            encode = mine.encode = make(  # markers, default, quote, indent, separators...
                mine.markers, _not_json, quote, None, key_separator, item_separator,
                False, False, allow_nan,
            )  # fmt: skip
        return encode

    def write(value: Any) -> str:
        try:
            return "".join(encoder()(value, 0))
        except (TypeError, ValueError, RecursionError):
            mine.markers.clear()  # an encoder that stopped half way leaves its marks
            return dumps(value)

    try:
        same = write(probe) == dumps(probe)
    except Exception:
        same = False
    return write if same else dumps
