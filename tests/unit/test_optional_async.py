"""``import taskmanager`` and the bridge work without the optional aiohttp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

WITHOUT_AIOHTTP = """
import sys
sys.modules["aiohttp"] = None  # as if not installed: importing it raises ImportError
import taskmanager, bridge
from taskmanager import TaskManagerClient
try:
    taskmanager.AsyncTaskManagerClient
except ImportError as exc:
    print("ImportError:", exc)
try:
    TaskManagerClient(http="aiohttp")
except taskmanager.TaskManagerConfigError as exc:
    print("ConfigError:", exc)
print("daemon http:", bridge.BridgeConfig.load(env={}, db_url="q.db").http_library())
import os
os.environ["HTTPS_PROXY"] = "http://proxy.example.test:3128"
print("behind a proxy:", bridge.BridgeConfig.load(env={}, db_url="q.db").http_library())
"""


def test_the_package_imports_without_aiohttp_and_says_how_to_get_async(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "PYTHONPATH": str(ROOT),
        },
    )
    assert done.returncode == 0, done.stderr
    extra = "taskmanager-bridge[async]"
    assert f"ImportError: the asyncio client needs aiohttp: pip install '{extra}'" in done.stdout
    assert f'ConfigError: http="aiohttp" needs aiohttp: pip install "{extra}"' in done.stdout
    assert "daemon http: stdlib" in done.stdout  # "auto": http.client needs no extra
    assert "behind a proxy: requests" in done.stdout  # aiohttp would have gone through it


def test_unknown_attribute_is_still_an_attribute_error():
    import taskmanager

    with pytest.raises(AttributeError):
        taskmanager.NoSuchThing  # noqa: B018
