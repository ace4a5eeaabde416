"""The fixtures users get from the installed pytest plugin."""

from __future__ import annotations

from taskmanager import TaskManagerClient
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
