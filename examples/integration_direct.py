"""Pattern 1 of the original specification: a worker that talks to the API directly.

    TASKMANAGER_API_URL=... TASKMANAGER_API_KEY=... python examples/integration_direct.py [MAX]

Simple, but a result is lost if the network is down when the task finishes:
prefer the bridge (integration_bridge_worker.py) for anything that matters.
"""

import sys

from taskmanager import TaskManagerClient

TYPE = "youtube_channel_scrape"


def scrape_youtube_channel(params):
    return [{"title": f"idea from {params['channel_url']}"}]


max_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
with TaskManagerClient() as client:
    handled = 0
    while handled < max_tasks:
        task = client.claim_task(task_type=TYPE)
        if task is None:
            break  # a real worker sleeps and polls again
        try:
            ideas = scrape_youtube_channel(task["params"])
        except Exception as exc:
            client.complete_task(task["id"], {"error": str(exc)}, status="failed")
        else:
            # If this call fails (network down), the result is lost: the bridge exists for this.
            client.complete_task(task["id"], {"ideas_found": len(ideas)}, status="completed")
        handled += 1
    print(f"handled {handled} task(s) directly")
