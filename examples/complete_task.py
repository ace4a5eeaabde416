"""Complete a claimed task: python complete_task.py TASK_ID [failed]."""

import sys

from taskmanager import TaskManagerClient

task_id = int(sys.argv[1])
status = sys.argv[2] if len(sys.argv) > 2 else "completed"
with TaskManagerClient() as client:
    if status == "failed":
        outcome = client.complete_task(task_id, {"error": "example failure"}, status="failed")
    else:
        outcome = client.complete_task(task_id, {"ideas_found": 5}, status="completed")
    print(f"task {task_id}: {outcome.status}")
