"""Suite-wide settings: tiers by directory, and nothing written into the working directory."""

from __future__ import annotations

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (its folder under tests/), so ``-m unit`` works."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "tests" in parts:
            folder = parts[parts.index("tests") + 1]
            if folder in _TIERS:
                item.add_marker(getattr(pytest.mark, _TIERS[folder]))
