"""Suite-wide settings: tiers by directory, and nothing written into the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("suite", database=None, deadline=None)
settings.load_profile("suite")

_TIERS = {
    "unit": "unit",
    "integration": "integration",
    "contract": "contract",
    "faults": "integration",
}


# The long form of the fault tests (docs/RELIABILITY.md); a variable set explicitly wins.
SOAK = {"CRASH_KILLS": "200", "CRASH_TASKS": "600", "STORM_OUTAGE_SECONDS": "120"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help="long fault runs: 200 kills over 600 tasks, a 120 s outage in the storm test",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("soak"):
        for name, value in SOAK.items():
            os.environ.setdefault(name, value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder under tests/), so ``-m unit`` works."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "tests" in parts:
            folder = parts[parts.index("tests") + 1]
            if folder in _TIERS:
                item.add_marker(getattr(pytest.mark, _TIERS[folder]))
