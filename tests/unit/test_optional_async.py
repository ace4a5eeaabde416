"""``import taskmanager`` and the bridge work without the optional aiohttp."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

WITHOUT_AIOHTTP = """
import sys
sys.modules["aiohttp"] = None  # as if not installed: importing it raises ImportError
import taskmanager, bridge
from taskmanager import TaskManagerClient
try:
    taskmanager.AsyncTaskManagerClient
except ImportError as exc:
    print("ImportError:", exc)
"""


def test_the_package_imports_without_aiohttp_and_says_how_to_get_async():
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'taskmanager-bridge[async]'" in done.stdout


def test_unknown_attribute_is_still_an_attribute_error():
    import taskmanager

    with pytest.raises(AttributeError):
        taskmanager.NoSuchThing  # noqa: B018
