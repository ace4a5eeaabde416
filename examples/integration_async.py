"""asyncio end to end: async handlers in the bridge's worker, and the async client.

    python examples/integration_async.py QUEUE_DB [MAX]

With ``TASKMANAGER_API_URL`` and ``TASKMANAGER_API_KEY`` set (the emulator:
``taskmanager-emulator``) and the type registered with some tasks waiting
(``examples/register_task_type.py``, then ``examples/create_task.py``), it claims
up to MAX tasks (default 3) of ``youtube_channel_scrape`` with
``AsyncTaskManagerClient`` into a local queue (QUEUE_DB, a SQLite file), runs an
``async def`` handler on them with ``bridge.Worker`` (all at once, one event
loop), and reports each result back with the async client. The bridge daemon
(``taskmanager-bridge run``) does the claiming and reporting for you; this shows
both halves in one small program. Needs ``pip install "taskmanager-bridge[async]"``
(from a clone: ``pip install -e ".[async]"``).
"""

import asyncio
import sys

from bridge import LocalQueue, Worker
from taskmanager import AsyncTaskManagerClient, TaskManagerConfig

TYPE = "youtube_channel_scrape"


async def scrape(params, context):
    await asyncio.sleep(0.05)  # stands in for an awaited HTTP request
    await context.progress(50, "page fetched")
    return {"ideas_found": len(params["channel_url"]) % 5}


async def claim(client, queue, limit):
    """Claim up to ``limit`` tasks at once; each becomes a local task."""
    claims = await asyncio.gather(*(client.claim_task(task_type=TYPE) for _ in range(limit)))
    local = {}
    for task in claims:
        if task is not None:
            local[queue.enqueue(TYPE, task.params).id] = task.id
    return local


async def report(client, queue, local):
    """Send every local result back, concurrently."""
    finished = [(remote, queue.get(task_id)) for task_id, remote in local.items()]
    await asyncio.gather(*(client.complete_task(remote, task.result) for remote, task in finished))
    return len(finished)


async def main(db, limit):
    with LocalQueue(db, migrate=True) as queue:
        async with AsyncTaskManagerClient(TaskManagerConfig()) as client:
            local = await claim(client, queue, limit)
            if not local:
                print("no task of that type was waiting: nothing to do")
                return
            handled = await asyncio.to_thread(
                Worker(queue, {TYPE: scrape}, concurrency=limit, poll_seconds=0.05).run,
                len(local),
            )
            sent = await report(client, queue, local)
    print(f"handled {handled} task(s) on one event loop; reported {sent} with the async client")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3))
