"""The bridge pattern: the worker only talks to the local queue; the daemon does the network.

    taskmanager-bridge --config bridge.toml db upgrade
    taskmanager-bridge --config bridge.toml run &                 # the daemon
    BRIDGE_CONFIG=bridge.toml python examples/integration_bridge_worker.py [MAX]

Turning an existing worker into a bridge worker is the handler below plus the
last three lines. Results are durable when ``complete`` returns, outages or not.
From the repository's root folder, this does the same without writing the loop
(``python3 -m`` puts the current folder on the import path, so ``examples.`` imports):

    python3 -m bridge --config bridge.toml worker \\
        --handler examples.integration_bridge_worker:scrape --type youtube_channel_scrape
"""

import sys

from bridge import BridgeConfig, LocalQueue, Worker

TYPE = "youtube_channel_scrape"


def scrape(params, context):
    context.progress(50, "fetching the channel page")
    return {"ideas_found": len(params["channel_url"]) % 5, "channel": params["channel_url"]}


if __name__ == "__main__":
    max_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else None
    with LocalQueue(config=BridgeConfig.load()) as queue:
        handled = Worker(queue, {TYPE: scrape}, concurrency=2, poll_seconds=0.1).run(max_tasks)
    print(f"handled {handled} task(s) through the local queue")
