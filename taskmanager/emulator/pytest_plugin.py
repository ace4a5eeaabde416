"""Pytest fixtures giving a running emulator in one line (registered as a pytest11 plugin).

    def test_my_worker(taskmanager_client, taskmanager_emulator):
        taskmanager_client.register_task_type("my.type", "1", {"type": "object"})
        ...

Override ``taskmanager_emulator_settings`` in your conftest to change the settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .app import EmulatorSettings
from .server import EmulatorServer


@pytest.fixture
def taskmanager_emulator_settings() -> EmulatorSettings:
    """The emulator's settings; override this fixture to change them."""
    return EmulatorSettings(api_key="test-key")


@pytest.fixture
def taskmanager_emulator(
    taskmanager_emulator_settings: EmulatorSettings,
) -> Iterator[EmulatorServer]:
    """A fresh emulator on a free loopback port, stopped after the test."""
    with EmulatorServer(taskmanager_emulator_settings) as server:
        yield server


@pytest.fixture
def taskmanager_client(taskmanager_emulator: EmulatorServer) -> Iterator[Any]:
    """A ``TaskManagerClient`` pointed at ``taskmanager_emulator``."""
    with taskmanager_emulator.client() as client:
        yield client
