"""A handler's own writes commit with its result (``write_with_result``), and writes to
another database happen once per task (``record_once`` with ``idempotency_key``).

Real databases: a SQLite file and the machine's PostgreSQL for the queue; sqlite3,
psycopg and SQLAlchemy connections for ``record_once``. The crash rounds (SIGKILLs
inside the writes and around their commit) are in tests/faults/test_effects_once.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bridge import (
    BridgeConfig,
    LocalQueue,
    RetryPolicy,
    TaskPolicy,
    ValidationError,
    forget_once_keys,
    record_once,
)
from bridge.storage.migrations import upgrade
from bridge.worker import Worker

from .effect_handlers import create_ideas_table, ideas, ideas_async, insert_ideas
from .helpers import pg_base_url, pg_unreachable_reason
from .test_worker_runtime import db, start, wait_finished, workers

__all__ = ["db", "workers"]

pytestmark = pytest.mark.integration
EFFECTS = "tests.integration.effect_handlers"


def _rows(db_url: str) -> list[tuple[int, str]]:
    with LocalQueue(db_url) as queue, queue.store.engine.begin() as conn:
        found = conn.execute(text("SELECT task_n, title FROM ideas ORDER BY id")).all()
    return [(int(n), str(title)) for n, title in found]


@pytest.fixture
def with_ideas(db: str) -> str:
    with LocalQueue(db) as queue, queue.store.engine.begin() as conn:
        create_ideas_table(conn)
    return db


def test_writes_commit_with_the_result_in_order(with_ideas: str):
    with LocalQueue(with_ideas) as queue:
        tasks = [queue.enqueue("idea", {"n": n, "calls": 2, "count": 2}) for n in range(3)]
        Worker(queue, {"idea": ideas}, concurrency=2).run(max_tasks=3)
        assert [queue.get(t.id).status for t in tasks] == ["done"] * 3
        assert queue.get(tasks[0].id).result["ideas_found"] == 4
    rows = _rows(with_ideas)
    assert sorted(rows) == sorted(
        (n, f"idea {i} of {n}") for n in range(3) for _ in range(2) for i in range(2)
    )
    first = [title for n, title in rows if n == 0]
    assert first == ["idea 0 of 0", "idea 1 of 0"] * 2  # two calls, each in order


def test_a_write_that_raises_keeps_nothing_and_fails_as_the_handler_would(with_ideas: str):
    with LocalQueue(with_ideas) as queue:
        bad = queue.enqueue("idea", {"n": 7, "count": 3, "fail_at": 2})
        retried = queue.enqueue("retry", {"n": 8, "count": 3, "fail_at": 1})
        policy = TaskPolicy(retry=RetryPolicy(attempts=2, backoff=0, retry_on=(ValueError,)))
        worker = Worker(
            queue, {"idea": ideas, "retry": ideas}, policies={"retry": policy}, poll_seconds=0.02
        )
        worker.run(max_tasks=3)  # the bad one, and the retried one twice
        after_bad, after_retry = queue.get(bad.id), queue.get(retried.id)
    assert after_bad.status == "failed"
    assert after_bad.error == (
        "ValueError: idea 2 of task 7 is malformed "
        "(raised by its write_with_result; nothing of it was kept)"
    )
    assert (after_retry.status, after_retry.attempts) == ("failed", 2)
    assert worker.counters.retried == 1
    assert _rows(with_ideas) == []  # rows 0 and 1 of each run were rolled back


def test_a_result_that_cannot_be_stored_takes_its_writes_with_it(with_ideas: str):
    with LocalQueue(with_ideas) as queue:
        task = queue.enqueue("stolen", {"n": 1})
        runs: list[int] = []

        def stolen(params: dict[str, Any], context: Any) -> dict[str, Any]:
            runs.append(context.task.attempts)
            context.write_with_result(insert_ideas, params["n"] * 10 + len(runs), 1)
            if len(runs) == 1:  # meanwhile the lock ran out and the task went back
                queue.release(context.task, "lock expired")
            return {"run": len(runs)}

        worker = Worker(queue, {"stolen": stolen})
        worker.run(max_tasks=1)
        assert worker.counters.not_recorded == 1
        assert queue.get(task.id).result == {"run": 2}
    assert _rows(with_ideas) == [(12, "idea 0 of 12")]  # the second run's row only


def test_async_handlers_writes_run_off_the_loop(with_ideas: str):
    loop_threads: set[str] = set()

    async def noting(params: dict[str, Any], context: Any) -> dict[str, Any]:
        loop_threads.add(threading.current_thread().name)
        return await ideas_async(params, context)

    with LocalQueue(with_ideas) as queue:
        tasks = [queue.enqueue("idea", {"n": n, "count": 2}) for n in range(6)]
        Worker(queue, {"idea": noting}, concurrency=6).run(max_tasks=6)
        assert [queue.get(t.id).status for t in tasks] == ["done"] * 6
        with queue.store.engine.begin() as conn:
            writers = {w for (w,) in conn.execute(text("SELECT writer_thread FROM ideas"))}
    assert len(_rows(with_ideas)) == 12
    assert writers and not writers & loop_threads, (writers, loop_threads)


def test_the_process_pool_sends_module_level_writes_and_refuses_a_lambda(
    with_ideas: str, tmp_path: Path, workers
):
    with LocalQueue(with_ideas) as queue:
        good = [queue.enqueue("idea", {"n": n, "count": 2}) for n in range(3)]
        lam = queue.enqueue("lambda", {"n": 9})
    worker = start(
        workers, with_ideas, tmp_path, "--handler", f"{EFFECTS}:ideas", "--type", "idea",
        "--pool", "process",
    )  # fmt: skip
    states = wait_finished(with_ideas, [t.id for t in good], worker)
    assert all(status == "done" for status, _ in states.values())
    assert worker.stop() == 0
    worker = start(
        workers, with_ideas, tmp_path, "--handler", f"{EFFECTS}:ideas_with_a_lambda",
        "--type", "lambda", "--pool", "process",
    )  # fmt: skip
    status, error = wait_finished(with_ideas, [lam.id], worker)[lam.id]
    assert status == "failed"
    assert "must be a module-level function" in error, error
    assert sorted(_rows(with_ideas)) == sorted(
        (n, f"idea {i} of {n}") for n in range(3) for i in range(2)
    )


def test_the_idempotency_key_is_one_per_task_and_apart_per_queue(tmp_path: Path):
    first, second = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    keys: dict[str, list[str]] = {first: [], second: []}
    for url in (first, second):
        upgrade(url)
        with LocalQueue(config=BridgeConfig.load(env={}, db_url=url)) as queue:
            local = queue.enqueue("k", {"x": 1})
            again = queue.get(local.id)
            assert again is not None
            keys[url] += [queue.idempotency_key(local), queue.idempotency_key(again)]
            keys[url].append(queue.idempotency_key(queue.enqueue("k", {"x": 2})))
    with LocalQueue(config=BridgeConfig.load(env={}, db_url=first)) as queue:
        newest = queue.enqueue("k", {"x": 3})
        taken = queue.dequeue("k")
        while taken is not None:
            queue.complete(taken, {})
            taken = queue.dequeue("k")
        queue.store.prune(newest.created_at + timedelta(days=1))  # every task pruned
        again = queue.enqueue("k", {"x": 4})
        assert again.id == 1  # SQLite gives a pruned id again ...
        keys[first].append(queue.idempotency_key(again))
    a, b = keys[first], keys[second]
    assert a[-1] != a[0]  # ... and the key is still the new task's own
    assert a[0] == a[1] and a[0] != a[2]  # stable for a task, apart for two tasks
    assert a[0].startswith("local-task-") and b[0].startswith("local-task-")
    assert a[0] != b[0]  # task 1 of two queues


# -- record_once on any database --------------------------------------------------------
def _sqlite3_connection(tmp_path: Path) -> Any:
    conn = sqlite3.connect(tmp_path / "prismq_ideas.db")
    conn.execute("CREATE TABLE IF NOT EXISTS ideas (title TEXT)")
    conn.commit()
    return conn


def _postgres_connection() -> Any:
    reason = pg_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    import psycopg

    conn = psycopg.connect(pg_base_url().replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("CREATE TEMP TABLE ideas (title TEXT)")
    conn.execute("DROP TABLE IF EXISTS taskmanager_bridge_once")
    conn.commit()
    return conn


@pytest.mark.parametrize("kind", ["sqlite3", "psycopg", "sqlalchemy"])
def test_record_once_says_first_time_once_and_rolls_back_with_its_transaction(
    kind: str, tmp_path: Path
):
    engine = None
    if kind == "sqlite3":
        conn = _sqlite3_connection(tmp_path)
    elif kind == "psycopg":
        conn = _postgres_connection()
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'own.db'}")
        conn = engine.connect()
        conn.execute(text("CREATE TABLE ideas (title TEXT)"))
        conn.commit()

    def once(key: str, title: str, *, commit: bool = True) -> bool:
        first = record_once(conn, key)
        if first:
            conn.execute(*_insert(kind, title))
        conn.commit() if commit else conn.rollback()
        return first

    try:
        assert once("taskmanager-task-5", "a") is True
        assert once("taskmanager-task-5", "a again") is False
        assert once("taskmanager-task-6", "b", commit=False) is True  # rolled back ...
        assert once("taskmanager-task-6", "b") is True  # ... so it is still the first
        titles = sorted(row[0] for row in conn.execute(*_select(kind)).fetchall())
        assert titles == ["a", "b"]
        assert forget_once_keys(conn, timedelta(days=1)) == 0
        assert forget_once_keys(conn, timedelta(seconds=-1)) == 2
        conn.commit()
        assert once("taskmanager-task-5", "a third time") is True  # forgotten: first again
        with pytest.raises(ValidationError, match="non-empty text"):
            record_once(conn, "")
    finally:
        conn.close()
        if engine is not None:
            engine.dispose()


def _insert(kind: str, title: str) -> tuple[Any, ...]:
    if kind == "sqlalchemy":
        return (text("INSERT INTO ideas (title) VALUES (:t)"), {"t": title})
    mark = "%s" if kind == "psycopg" else "?"
    return (f"INSERT INTO ideas (title) VALUES ({mark})", (title,))


def _select(kind: str) -> tuple[Any, ...]:
    query = "SELECT title FROM ideas"
    return (text(query),) if kind == "sqlalchemy" else (query,)


def test_record_once_refuses_what_it_cannot_use(tmp_path: Path):
    with pytest.raises(ValidationError, match="SQLAlchemy Connection, or a sqlite3, psycopg"):
        record_once(object(), "k")
    autocommit = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    try:  # every statement its own transaction: the key would be kept without the rows
        with pytest.raises(ValidationError, match="inside a transaction"):
            record_once(autocommit, "k")
        autocommit.execute("BEGIN")  # ... unless the caller began one
        assert record_once(autocommit, "k") is True
        autocommit.execute("ROLLBACK")
    finally:
        autocommit.close()


def test_a_second_transaction_on_postgresql_waits_for_the_first():
    first, second = _postgres_connection(), _postgres_connection()
    answer: list[object] = []

    def record_in_second() -> None:
        try:
            answer.append(record_once(second, "taskmanager-task-77"))
        except Exception as exc:  # shown by the assertion below
            answer.append(exc)

    try:
        assert record_once(first, "taskmanager-task-77") is True
        waiting = threading.Thread(target=record_in_second)
        waiting.start()
        waiting.join(0.5)
        assert answer == [] and waiting.is_alive()  # blocked on the first's uncommitted key
        first.commit()
        waiting.join(10)
        assert answer == [False]
    finally:
        for conn in (second, first):
            conn.rollback()
        first.execute("DROP TABLE IF EXISTS taskmanager_bridge_once")
        first.commit()
        for conn in (first, second):
            conn.close()


def _missing_table(connection: Any) -> None:
    connection.execute(text("INSERT INTO no_such_table (x) VALUES (1)"))


def _swallowed_conflict(connection: Any) -> None:
    connection.execute(text("CREATE TABLE IF NOT EXISTS once_only (k INTEGER PRIMARY KEY)"))
    connection.execute(text("INSERT INTO once_only (k) VALUES (1)"))
    with contextlib.suppress(Exception):  # the handler's author "handles" it, carries on
        connection.execute(text("INSERT INTO once_only (k) VALUES (1)"))


@pytest.mark.parametrize("write", [_missing_table, _swallowed_conflict], ids=["missing", "caught"])
def test_a_write_the_database_refuses_fails_its_task_instead_of_being_waited_out(
    with_ideas: str, write: Any
):
    """A statement error is the write's (a missing table is an OperationalError on SQLite,
    not passing trouble); a caught error PostgreSQL keeps aborts the transaction, so the
    result must not count as stored."""
    with LocalQueue(with_ideas) as queue:
        task = queue.enqueue("w", {"n": 1})

        def handler(params: dict[str, Any], context: Any) -> dict[str, Any]:
            context.write_with_result(write)
            return {"n": 1}

        worker = Worker(queue, {"w": handler}, db_backoff_max_seconds=0.05)
        runner = threading.Thread(target=worker.run, kwargs={"max_tasks": 1}, daemon=True)
        runner.start()
        runner.join(20)
        assert not runner.is_alive(), "the write was waited out as database trouble"
        after = queue.get(task.id)
    postgres = with_ideas.startswith("postgresql")
    if write is _swallowed_conflict and not postgres:
        assert after.status == "done"  # SQLite rolls back the failed statement only
        return
    assert after.status == "failed", (after.status, after.error)
    assert "nothing of it was kept" in (after.error or "")
