"""The one encoder for results and params: what users return is stored, the rest is
refused with the key path of the first value that cannot be encoded."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import json
import json.encoder
import sys
import uuid
from pathlib import PurePosixPath
from typing import Any

import pytest

from taskmanager.encoding import EncodingError, json_writer, to_json
from taskmanager.exceptions import TaskManagerValidationError
from taskmanager.validation import ensure_json


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Seen:
    url: str
    at: dt.datetime


AT = dt.datetime(2026, 11, 28, 12, 30, tzinfo=dt.timezone.utc)


def test_common_types_become_json():
    value = {
        "at": AT,
        "day": dt.date(2026, 11, 28),
        "time": dt.time(12, 30),
        "took": dt.timedelta(seconds=1.5),
        "price": decimal.Decimal("19.90"),
        "id": uuid.UUID(int=1),
        "colour": Colour.RED,
        "level": Level.HIGH,
        "path": PurePosixPath("/tmp/x"),
        "pair": (1, "a"),
        "seen": [Seen("https://x", AT)],
        3: "int key",
        None: "none key",
    }
    assert to_json(value, "results") == {
        "at": "2026-11-28T12:30:00+00:00",
        "day": "2026-11-28",
        "time": "12:30:00",
        "took": 1.5,
        "price": "19.90",
        "id": "00000000-0000-0000-0000-000000000001",
        "colour": "red",
        "level": 3,
        "path": "/tmp/x",
        "pair": [1, "a"],
        "seen": [{"url": "https://x", "at": "2026-11-28T12:30:00+00:00"}],
        "3": "int key",
        "null": "none key",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"items": [1, 2, 3, {"seen_at": {1, 2}}]}, "results.items[3].seen_at: set is not JSON"),
        ({"x": float("nan")}, "results.x: nan is not JSON"),
        ({"x": [float("-inf")]}, "results.x[0]: -inf is not JSON"),
        ({"x": decimal.Decimal("Infinity")}, "results.x: Decimal Infinity is not JSON"),
        ({"x": object()}, "results.x: object is not JSON"),
        ({"x": b"raw"}, "results.x: bytes is not JSON"),
        ({(1, 2): 1}, "results.<key (1, 2)>: a key of type tuple is not JSON"),
    ],
)
def test_what_cannot_be_encoded_is_named_by_its_path(value: Any, message: str):
    with pytest.raises(EncodingError) as caught:
        to_json(value, "results")
    assert str(caught.value).startswith(message)


def test_a_value_referring_to_itself_is_refused_not_a_crash():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodingError, match="nested too deeply"):
        to_json({"loop": loop}, "results")


def test_the_client_check_uses_the_same_walk_without_converting():
    ensure_json({"a": [1, 2.5, "x", None, True]}, "params")
    with pytest.raises(TaskManagerValidationError, match=r"params\.when: datetime is not JSON"):
        ensure_json({"when": AT}, "params")


def test_plain_values_come_back_as_copies():
    value = {"a": [1, {"b": "c"}], "d": (2, 3)}
    encoded = to_json(value, "results")
    assert encoded == {"a": [1, {"b": "c"}], "d": [2, 3]}
    assert encoded is not value and encoded["a"] is not value["a"]
    assert encoded["a"][1] is not value["a"][1]


WRITER_OPTIONS = [
    {},
    {"ensure_ascii": False, "compact": True, "allow_nan": False},
    {"ensure_ascii": False, "compact": True},
]
WRITTEN = [
    {"n": 1, "text": 'é \u2028 "quoted" \\ \n', "list": [1.5, -0.0, 1e300, 10**30, None, True]},
    [],
    "just text",
    3.25,
    {"3": {"nested": [{"deep": [[]]}]}, "": ""},
]


@pytest.mark.parametrize("options", WRITER_OPTIONS)
def test_the_json_writer_writes_what_json_dumps_writes(options: dict[str, Any]):
    write = json_writer(**options)
    dumps = functools.partial(
        json.dumps,
        ensure_ascii=options.get("ensure_ascii", True),
        allow_nan=options.get("allow_nan", True),
        separators=(",", ":") if options.get("compact") else (", ", ": "),
    )
    for value in WRITTEN:
        assert write(value) == dumps(value)
    # Values the C encoder hands back are written by json.dumps itself, the same.
    assert write({"key": 1.0, 2: "int key"}) == dumps({"key": 1.0, 2: "int key"})


def test_the_json_writer_refuses_what_json_dumps_refuses():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        json_writer()(loop)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        json_writer()({"s": {1}})
    with pytest.raises(ValueError, match="Out of range float"):
        json_writer(allow_nan=False)([float("nan")])
    assert json_writer()([float("nan")]) == "[NaN]"


def test_without_the_c_encoder_the_json_writer_is_json_dumps(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    write = json_writer(compact=True)
    assert isinstance(write, functools.partial) and write.func is json.dumps
    assert write({"a": [1, "é"]}) == '{"a":[1,"\\u00e9"]}'


def test_values_nested_as_deep_as_the_server_reads_are_encoded():
    """The server's PHP decoder reads 512 levels; the walk takes a frame a level of dicts."""
    nested: dict[str, Any] = {}
    for _ in range(600):
        nested = {"a": nested}
    assert to_json(nested, "results") == nested


def test_a_cycle_is_refused_even_when_the_recursion_limit_is_raised():
    """Each thread's encoder keeps json.dumps' cycle marks: a raised recursion limit
    must not let a cycle run the C stack out (a crash, not an error)."""
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(ValueError, match="Circular reference"):
            json_writer()(cycle)
    finally:
        sys.setrecursionlimit(limit)
    assert json_writer()({"after": [1]}) == '{"after": [1]}'
