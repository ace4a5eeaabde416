"""The fixtures users get from the installed pytest plugin."""

from __future__ import annotations

import asyncio

import pytest

from taskmanager import AsyncTaskManagerClient, TaskManagerClient
from taskmanager.emulator import EmulatorServer


def test_fixtures_give_a_running_emulator_and_client(
    taskmanager_emulator: EmulatorServer, taskmanager_client: TaskManagerClient
):
    assert taskmanager_client.config.api_url == taskmanager_emulator.url
    taskmanager_client.register_task_type("plugin.type", "1", {"type": "object"})
    task_id = taskmanager_client.create_task("plugin.type", {"x": 1})
    task = taskmanager_client.claim_task(task_type="plugin.type")
    assert task is not None and task.id == task_id
    assert taskmanager_emulator.request_counts()["POST /tasks/claim"] == 1


@pytest.mark.asyncio
async def test_async_fixture_gives_a_client_on_the_tests_loop(
    taskmanager_emulator: EmulatorServer, taskmanager_async_client: AsyncTaskManagerClient
):
    await taskmanager_async_client.register_task_type("plugin.async", "1", {"type": "object"})
    created = await asyncio.gather(
        *(taskmanager_async_client.create_task("plugin.async", {"n": n}) for n in range(10))
    )
    claimed = await asyncio.gather(
        *(taskmanager_async_client.claim_task(task_type="plugin.async") for _ in range(12))
    )
    ids = [task.id for task in claimed if task is not None]
    assert sorted(ids) == sorted(created)  # each task claimed once, two claims found none
    assert taskmanager_emulator.request_counts()["POST /tasks/claim"] == 12
