"""Handlers that write their own rows with their result (``write_with_result``), for the
exactly-once tests in real worker processes and in a test's thread. The ``ideas`` table
lives in the queue's own database (``create_ideas_table``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy import text

IDEAS_DDL = (
    "CREATE TABLE IF NOT EXISTS ideas (id INTEGER PRIMARY KEY{auto}, task_n INTEGER NOT NULL, "
    "title TEXT NOT NULL, writer_thread TEXT)"
)


def create_ideas_table(connection: Any) -> None:
    """``connection``: a SQLAlchemy ``Connection`` in a transaction."""
    auto = " GENERATED ALWAYS AS IDENTITY" if connection.dialect.name == "postgresql" else ""
    connection.execute(text(IDEAS_DDL.format(auto=auto)))


def insert_ideas(connection: Any, n: int, count: int, fail_at: int | None = None) -> None:
    """``count`` idea rows for task ``n``; raises before row ``fail_at`` if given."""
    for i in range(count):
        if fail_at is not None and i == fail_at:
            raise ValueError(f"idea {i} of task {n} is malformed")
        connection.execute(
            text("INSERT INTO ideas (task_n, title, writer_thread) VALUES (:n, :t, :w)"),
            {"n": n, "t": f"idea {i} of {n}", "w": threading.current_thread().name},
        )


def ideas(params: dict[str, Any], context: Any) -> dict[str, Any]:
    """Registers ``count`` rows (in ``calls`` calls, in order) and returns the count."""
    count, calls = params.get("count", 3), params.get("calls", 1)
    for _ in range(calls):
        context.write_with_result(insert_ideas, params["n"], count, params.get("fail_at"))
    return {"ideas_found": count * calls, "key": context.idempotency_key}


async def ideas_async(params: dict[str, Any], context: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return ideas(params, context)


def ideas_with_a_lambda(params: dict[str, Any], context: Any) -> dict[str, Any]:
    """What a process pool cannot carry: a lambda."""
    context.write_with_result(lambda connection: insert_ideas(connection, params["n"], 1))
    return {"ideas_found": 1}
