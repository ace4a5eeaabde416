"""A worker process for the queue's multi-process tests (run by path, not imported).

queue_worker.py URL drain            dequeue + complete until empty; prints the ids (JSON)
queue_worker.py URL hold SECONDS     dequeue one with that lock, print it, then hang
queue_worker.py URL complete-and-die dequeue one, complete it, print its id, SIGKILL itself
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from bridge import LocalQueue


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    queue = LocalQueue(url)
    if mode == "drain":
        done = []
        while (task := queue.dequeue()) is not None:
            queue.complete(task, {"by": os.getpid(), "n": task.params["n"]})
            done.append(task.id)
        print(json.dumps(done), flush=True)
    elif mode == "hold":
        task = queue.dequeue(lock_seconds=float(sys.argv[3]))
        assert task is not None
        print(json.dumps({"id": task.id, "locked_by": task.locked_by}), flush=True)
        time.sleep(3600)
    elif mode == "complete-and-die":
        task = queue.dequeue()
        assert task is not None
        queue.complete(task, {"survived": True})
        print(json.dumps({"id": task.id}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
