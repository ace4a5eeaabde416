"""Pytest fixtures giving a running emulator in one line (registered as a pytest11 plugin).

    def test_my_worker(taskmanager_client, taskmanager_emulator):
        taskmanager_client.register_task_type("my.type", "1", {"type": "object"})
        ...

Override ``taskmanager_emulator_settings`` in your conftest to change the settings.
The emulator serves from its own threads, so it works in async tests as well;
with pytest-asyncio installed, ``taskmanager_async_client`` gives an
``AsyncTaskManagerClient`` on the test's event loop:

    @pytest.mark.asyncio
    async def test_my_async_worker(taskmanager_async_client):
        await taskmanager_async_client.register_task_type("my.type", "1", {"type": "object"})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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


try:
    import pytest_asyncio
except ImportError:  # async tests are optional: the sync fixtures need nothing more
    HAVE_PYTEST_ASYNCIO = False
else:
    HAVE_PYTEST_ASYNCIO = True

if HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def taskmanager_async_client(
        taskmanager_emulator: EmulatorServer,
    ) -> AsyncIterator[Any]:
        """An ``AsyncTaskManagerClient`` pointed at ``taskmanager_emulator`` (needs the
        ``async`` extra), closed after the test."""
        async with taskmanager_emulator.async_client() as client:
            yield client
