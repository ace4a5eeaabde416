"""Pattern 2 of the original specification ("hybrid"): claim remotely, queue locally.

    TASKMANAGER_API_URL=... TASKMANAGER_API_KEY=... python examples/integration_hybrid.py QUEUE_DB

Written as the specification shows it, on bridge.LocalQueue. It keeps a local
queue, but the completion still goes straight to the API: the bridge daemon
(integration_bridge_worker.py) replaces both loops and adds the outbox.
"""

import sys

from bridge import LocalQueue
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient

upgrade(sys.argv[1])  # the same as: taskmanager-bridge --db-url QUEUE_DB db upgrade
local_queue = LocalQueue(sys.argv[1])
tm_client = TaskManagerClient()


def process_task(local_task):
    return {"scraped": local_task.payload["channel_url"]}


def sync_tasks_from_remote():
    task = tm_client.claim_task(task_type="youtube_channel_scrape")
    if task:
        local_queue.enqueue(
            task_type=task["type"],
            payload=task["params"],
            priority=task["priority"],
            metadata={"tm_task_id": task["id"]},
        )
    return task is not None


def process_local_queue():
    local_task = local_queue.dequeue()
    if local_task:
        result = process_task(local_task)
        if "tm_task_id" in local_task.metadata:
            tm_client.complete_task(task_id=local_task.metadata["tm_task_id"], result=result)
        local_queue.complete(local_task, result)
    return local_task is not None


synced = 0
while sync_tasks_from_remote():
    synced += 1
while process_local_queue():
    pass
print(f"synced and completed {synced} task(s)")
