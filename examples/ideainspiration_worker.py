"""A scraper that stores the ideas it finds exactly once per task, both ways.

    python examples/ideainspiration_worker.py FOLDER        # a self-contained run

A handler's result reaches the server once however often workers die; the ideas it
writes are its own business. Two ways to make them once too:

* ``scrape_into_queue_db``: the ideas go into the queue's own database (a table
  ``ideas`` beside the bridge's tables) through ``context.write_with_result``: they
  commit in the same transaction as the task's result, or not at all.
* ``scrape_into_model_db``: the ideas go into the Model package's own SQLite file
  (``prismq_ideas.db``, table ``ideas``, plain ``sqlite3``), fenced by
  ``record_once(conn, context.idempotency_key)`` in that file's own transaction.

Either handler runs under ``taskmanager-bridge worker --handler
examples.ideainspiration_worker:scrape_into_queue_db --type youtube_channel_scrape``.
Run as a script, it makes a queue in FOLDER, queues two local tasks of each kind, runs
a worker on them, runs one handler again for a task already done (as happens when a
worker dies after the handler's own commit and before its result is stored), and
counts the ideas: three per task either way, none twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bridge import LocalQueue, TaskContext, Worker, record_once

# The IdeaInspiration fields of the Model package.
FIELDS = (
    "title",
    "description",
    "content",
    "keywords",
    "source_type",
    "metadata",
    "source_id",
    "source_url",
)
IDEAS_TABLE = (
    "CREATE TABLE IF NOT EXISTS ideas (title TEXT NOT NULL, description TEXT, content TEXT, "
    "keywords TEXT, source_type TEXT, metadata TEXT, source_id TEXT, source_url TEXT)"
)
INSERT = f"INSERT INTO ideas ({', '.join(FIELDS)}) VALUES ({', '.join(':' + f for f in FIELDS)})"


def find_ideas(params: dict[str, Any]) -> list[dict[str, str]]:
    """The scraping (a stand-in): three IdeaInspiration-shaped ideas per channel."""
    channel = params["channel_url"]
    return [
        {
            "title": f"Idea {i} from {channel}",
            "description": "A video idea worth a script",
            "content": f"Transcript excerpt {i}",
            "keywords": json.dumps(["scraping", "ideas"]),
            "source_type": "youtube",
            "metadata": json.dumps({"rank": i}),
            "source_id": f"{channel.rsplit('@', 1)[-1]}-{i}",
            "source_url": f"{channel}/videos/{i}",
        }
        for i in range(3)
    ]


def store_ideas(connection: Any, ideas: list[dict[str, str]]) -> None:
    """Runs inside the transaction that stores the task's result (a SQLAlchemy
    Connection to the queue's database); it must not commit."""
    connection.execute(text(IDEAS_TABLE))
    connection.execute(text(INSERT), ideas)


def scrape_into_queue_db(params: dict[str, Any], context: Any) -> dict[str, int]:
    ideas = find_ideas(params)
    context.write_with_result(store_ideas, ideas)
    return {"ideas_found": len(ideas)}


def model_db_path() -> str:
    return os.environ.get("PRISMQ_IDEAS_DB", "prismq_ideas.db")


def scrape_into_model_db(params: dict[str, Any], context: Any) -> dict[str, int]:
    ideas = find_ideas(params)
    conn = sqlite3.connect(model_db_path(), timeout=30)
    try:
        conn.execute(IDEAS_TABLE)
        if record_once(conn, context.idempotency_key):  # False: an earlier run stored them
            conn.executemany(INSERT, ideas)  # sqlite3 takes the same :name parameters
        conn.commit()
    finally:
        conn.close()
    return {"ideas_found": len(ideas)}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PRISMQ_IDEAS_DB"] = str(folder / "prismq_ideas.db")
    handlers = {"into_queue_db": scrape_into_queue_db, "into_model_db": scrape_into_model_db}
    with LocalQueue(str(folder / "queue.db"), migrate=True) as queue:
        tasks = [
            queue.enqueue(kind, {"channel_url": f"https://youtube.com/@{name}"})
            for kind in handlers
            for name in ("alpha", "beta")
        ]
        Worker(queue, handlers, concurrency=2, poll_seconds=0.05).run(max_tasks=4)
        again = tasks[-1]  # an into_model_db task, done: its run again writes nothing
        scrape_into_model_db(again.params, TaskContext(again, queue))
        with queue.store.engine.connect() as conn:
            in_queue = conn.execute(text("SELECT count(*) FROM ideas")).scalar()
    with sqlite3.connect(model_db_path()) as conn:
        in_model = conn.execute("SELECT count(*) FROM ideas").fetchone()[0]
    print(f"queue database: {in_queue} ideas for 2 tasks")
    print(f"prismq_ideas.db: {in_model} ideas for 2 tasks")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "ideainspiration-demo"))
