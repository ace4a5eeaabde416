"""Handlers for the exactly-once fault rounds (tests/faults/test_effects_once.py), run by
real worker processes: each task writes ``K`` idea rows, into the queue's database with
its result (``write_with_result``), or into a database of its own (``record_once``).

A task may kill its own worker process with SIGKILL once (``die``): ``inside`` in the
middle of its write function, ``between`` after its rows were written and before the
commit (a second write that kills). A marker file per task in ``EFFECT_MARKS`` makes it
die once only, whichever process runs it next.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bridge import record_once

ROWS = 3


def _dies_now(n: int, where: str) -> bool:
    """True the first time task ``n`` reaches ``where`` (then it must die)."""
    marker = Path(os.environ["EFFECT_MARKS"]) / f"{n}-{where}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached


def insert_ideas(connection: Any, n: int, die: str | None) -> None:
    for i in range(ROWS):
        connection.execute(
            text("INSERT INTO ideas (task_n, title) VALUES (:n, :t)"),
            {"n": n, "t": f"idea {i} of {n}"},
        )
        if i == 0 and die == "inside" and _dies_now(n, "inside"):
            _die()
        time.sleep(0.005)


def die_before_commit(connection: Any, n: int) -> None:
    if _dies_now(n, "between"):
        _die()


def ideas(params: dict[str, Any], context: Any) -> dict[str, Any]:
    """K rows in the queue's database, committed with the result."""
    time.sleep(0.02 + (params["n"] % 4) * 0.02)
    die = params.get("die")
    context.write_with_result(insert_ideas, params["n"], die)
    if die == "between":
        context.write_with_result(die_before_commit, params["n"])
    return {"ideas_found": ROWS, "n": params["n"]}


async def ideas_async(params: dict[str, Any], context: Any) -> dict[str, Any]:
    import asyncio

    await asyncio.sleep(0.02 + (params["n"] % 4) * 0.02)
    die = params.get("die")
    context.write_with_result(insert_ideas, params["n"], die)
    if die == "between":
        context.write_with_result(die_before_commit, params["n"])
    return {"ideas_found": ROWS, "n": params["n"]}


def _own_connection() -> Any:
    """The handler's own database: a SQLite file, or PostgreSQL (``EFFECT_OWN_DB``)."""
    target = os.environ["EFFECT_OWN_DB"]
    if target.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(target)
    return sqlite3.connect(target, timeout=30)


def ideas_elsewhere(params: dict[str, Any], context: Any) -> dict[str, Any]:
    """K rows in a database of the handler's own, fenced by ``record_once``; may die
    between its commit and the worker storing the result (the window that doubled rows)."""
    time.sleep(0.02 + (params["n"] % 4) * 0.02)
    n = params["n"]
    conn = _own_connection()
    try:
        mark = "%s" if not isinstance(conn, sqlite3.Connection) else "?"
        if record_once(conn, context.idempotency_key):
            for i in range(ROWS):
                conn.execute(
                    f"INSERT INTO ideas (task_n, title) VALUES ({mark}, {mark})",
                    (n, f"idea {i} of {n}"),
                )
        conn.commit()
    finally:
        conn.close()
    if params.get("die") and _dies_now(n, "after-own-commit"):
        _die()
    return {"ideas_found": ROWS, "n": n}
