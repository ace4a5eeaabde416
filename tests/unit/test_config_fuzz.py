"""Any value for any setting, from any source: a usable config, or one
``BridgeConfigError`` that names the setting. Never another exception, never a
value that fails later (NaN, infinities, overflowing durations, truncated ints).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge import BridgeConfig
from bridge.config import SETTINGS
from bridge.errors import BridgeConfigError
from taskmanager import TaskManagerConfigError
from taskmanager.config import MAX_SETTING_VALUE

NAMES = [s.name for s in SETTINGS]
NUMERIC = {s.name: s for s in SETTINGS if s.kind in (int, float)}
TASKMANAGER_NUMBERS = [
    "timeout",
    "connect_timeout",
    "retry_attempts",
    "backoff_base",
    "backoff_max",
    "retry_deadline",
]

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ANY_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "2.5", " 7 ", "0x10", "1_000", "-1", "١٢"]),
)


def check_usable(config: BridgeConfig) -> None:
    """What the daemon will do with the numbers must not fail."""
    now = datetime.now(timezone.utc)
    for name, setting in NUMERIC.items():
        value = getattr(config, name)
        assert isinstance(value, setting.kind), (name, value)
        assert math.isfinite(value) and setting.minimum <= value <= MAX_SETTING_VALUE
        if setting.kind is float:
            assert now + timedelta(seconds=value) > now - timedelta(seconds=1)


def load_or_named_error(name: str, **kwargs: Any) -> None:
    try:
        config = BridgeConfig.load(env=kwargs.pop("env", {}), **kwargs)
    except BridgeConfigError as exc:
        assert name in str(exc), f"error does not name {name}: {exc}"
    else:
        check_usable(config)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NAMES), value=ANY_VALUE)
@example(name="prefetch", value=2.5)
@example(name="lock_seconds", value=float("nan"))
@example(name="lock_seconds", value=1e300)
@example(name="workers", value=10**20)
def test_any_argument_value(name: str, value: Any) -> None:
    load_or_named_error(name, **{name: value})


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NAMES), text=ANY_TEXT)
def test_any_environment_text(name: str, text: str) -> None:
    setting = next(s for s in SETTINGS if s.name == name)
    load_or_named_error(name, env={setting.env: text})


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(TASKMANAGER_NUMBERS), value=ANY_VALUE)
@example(name="retry_attempts", value=1.5)
@example(name="timeout", value=float("inf"))
def test_any_taskmanager_table_value(name: str, value: Any) -> None:
    config = BridgeConfig(
        taskmanager={name: value, "api_url": "http://127.0.0.1:1/api", "api_key": "k"}
    )
    try:
        client = config.client_config(env={})
    except BridgeConfigError as exc:
        assert name in str(exc), f"error does not name {name}: {exc}"
    else:
        resolved = getattr(client, name)
        assert math.isfinite(resolved) and 0 <= resolved <= MAX_SETTING_VALUE


def test_the_errors_say_what_is_wrong() -> None:
    cases = {
        "prefetch": (2.5, "whole number"),
        "lock_seconds": (float("nan"), "finite"),
        "lease_seconds": ("inf", "finite"),
        "poll_min_seconds": (1e9, "<= 10,000,000"),
        "workers": (0, ">= 1"),
        "push_batch": ("ten", "must be a number"),
    }
    for name, (value, words) in cases.items():
        try:
            BridgeConfig.load(env={}, **{name: value})
        except BridgeConfigError as exc:
            assert name in str(exc) and words in str(exc), str(exc)
        else:
            raise AssertionError(f"{name}={value!r} was accepted")
    try:
        BridgeConfig(taskmanager={"retry_attempts": 1.5}).client_config(env={})
    except BridgeConfigError as exc:
        assert "retry_attempts" in str(exc) and "whole number" in str(exc)
    else:
        raise AssertionError("retry_attempts=1.5 was accepted")
    assert issubclass(BridgeConfigError, Exception)
    assert not issubclass(TaskManagerConfigError, BridgeConfigError)
