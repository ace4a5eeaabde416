"""Report progress on a claimed task: python update_progress.py TASK_ID PERCENT."""

import sys

from taskmanager import TaskManagerClient

task_id, percent = int(sys.argv[1]), int(sys.argv[2])
with TaskManagerClient() as client:
    client.update_progress(task_id, percent, message="scraping")
    print(f"task {task_id} at {client.get_task(task_id).progress}%")
