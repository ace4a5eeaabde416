"""Create a task; creating it again returns the same id (server-side deduplication)."""

import sys

from taskmanager import TaskManagerClient

channel = sys.argv[1] if len(sys.argv) > 1 else "https://youtube.com/@example"
params = {"channel_url": channel, "top_n": 5}
with TaskManagerClient() as client:
    created = client.create_task_detailed("youtube_channel_scrape", params)
    again = client.create_task_detailed("youtube_channel_scrape", dict(reversed(params.items())))
    print(f"created task {created.id} (status {created.status})")
    print(f"same params in another order -> task {again.id}, deduplicated={again.deduplicated}")
    print(f"dedupe key computed locally: {client.dedupe_key('youtube_channel_scrape', params)}")
    print(f"dedupe key the server stored: {created.dedupe_key}")
