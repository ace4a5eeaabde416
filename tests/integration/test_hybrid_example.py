"""The specification's "Pattern 2: Hybrid Integration" run as written.

Replaced: its ``QueueDatabase`` import by ``bridge.LocalQueue`` (the class this
project provides for it), ``process_task`` by a stand-in, and the schema is
created first with ``taskmanager-bridge db upgrade`` as the docs say.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskmanager.emulator import EmulatorServer


def process_task(local_task):
    return {"scraped": local_task.payload["channel_url"]}


def test_pattern_2_hybrid_integration(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "bridge", "--db-url", "local_queue.db", "db", "upgrade"],
        check=True,
        capture_output=True,
    )
    with EmulatorServer() as server:
        from taskmanager import TaskManagerConfig

        config = TaskManagerConfig(api_url=server.url, api_key=server.api_key)
        seed = server.client()
        seed.register_task_type("youtube_scrape", "1", {"type": "object"})
        remote_id = seed.create_task("youtube_scrape", {"channel_url": "https://youtube.com/@h"})

        # --- the specification's code ---------------------------------------------
        from bridge import LocalQueue as QueueDatabase
        from taskmanager import TaskManagerClient

        local_queue = QueueDatabase("local_queue.db")
        tm_client = TaskManagerClient(config)

        # Sync: Pull tasks from TaskManager to local queue
        def sync_tasks_from_remote():
            task = tm_client.claim_task(task_type="youtube_scrape")
            if task:
                # Add to local queue for processing
                local_queue.enqueue(
                    task_type=task["type"],
                    payload=task["params"],
                    priority=task["priority"],
                    metadata={"tm_task_id": task["id"]},
                )

        # Worker processes from local queue
        def process_local_queue():
            local_task = local_queue.dequeue()
            if local_task:
                result = process_task(local_task)

                # Report back to TaskManager if it came from there
                if "tm_task_id" in local_task.metadata:
                    tm_client.complete_task(
                        task_id=local_task.metadata["tm_task_id"], result=result
                    )

        # --- end of the specification's code --------------------------------------

        sync_tasks_from_remote()
        process_local_queue()
        done = seed.get_task(remote_id)
        assert (done.status, done.result) == ("completed", {"scraped": "https://youtube.com/@h"})
        assert (tmp_path / "local_queue.db").exists()
        local_queue.close()
