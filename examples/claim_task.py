"""Claim the next task of a type (a 300 s lease); prints nothing to do when the queue is empty."""

from taskmanager import TaskManagerClient

with TaskManagerClient() as client:
    task = client.claim_task(task_type="youtube_channel_scrape")
    if task is None:
        print("nothing to do")
    else:
        print(f"claimed task {task['id']} as {task.worker_id}: params {task['params']}")
