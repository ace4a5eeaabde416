"""Register (or update) a task type. URL and key come from TASKMANAGER_API_URL / _API_KEY."""

from taskmanager import TaskManagerClient

SCHEMA = {
    "type": "object",
    "properties": {
        "channel_url": {"type": "string", "minLength": 1},
        "top_n": {"type": "integer", "minimum": 1},
    },
    "required": ["channel_url"],
}

with TaskManagerClient() as client:
    task_type = client.register_task_type("youtube_channel_scrape", "1.0", SCHEMA)
    print(f"registered {task_type.name} v{task_type.version} as id {task_type.id}")
