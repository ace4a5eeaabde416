"""CPU per item of the local queue's hot calls against their floors, on SQLite.

``local_queue.py`` measures throughput; on a shared VM a throughput ratio moves with
the disk's fsync time, which is the same for every queue. This script reports the
CPU (user + system of this process) of:

* ``enqueue_many`` in batches of 100 against litequeue's ``put`` in batches in one
  ``transaction()``: both one synced commit a batch;
* the worker loop (``complete_and_dequeue``) against the floor: our exact statements
  on bare sqlite3 (``local_queue.floor_cycle_seeded``), one synced commit a task;
* what bounds the worker loop: the floor's statements with only the work the call
  must do besides them (the result encoded and size-checked, the times stamped, the
  next task built: its times parsed, its JSON decoded), inlined with nothing of ours
  between, once in a bare ``BEGIN IMMEDIATE``/``COMMIT`` and once in the queue's own
  write transaction (``shared_write``: this process's write turn, the group commit
  that lets a worker's slots share one commit, the polled begin);
* the daemon's record of a new claim (``Store.insert_claimed``) against its floor: the
  same statement on bare sqlite3, one transaction a claim at ``synchronous=NORMAL``,
  as the daemon commits them.

Interleaved rounds in one run, median [spread]. To compare two commits, run it in
each tree alternately (``PYTHONPATH=<tree> python3 tests/bench/queue_cpu.py``).

    python3 tests/bench/queue_cpu.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import JSON

from bridge import LocalQueue, LocalTask
from bridge.payloads import stored_result
from bridge.storage.engine import open_engine
from bridge.storage.migrations import upgrade
from bridge.storage.schema import UTCDateTime, _sqlite_datetime_text, _sqlite_datetime_value
from bridge.storage.statements import TASK_COLUMNS, Prepared, json_text
from taskmanager import ClaimedTask

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench import local_queue
from tests.bench.figures import spread

BATCH = 100


def ours_enqueue_many(folder: Path, items: int) -> float:
    url = str(folder / "enqueue.db")
    upgrade(url)
    with LocalQueue(url) as queue:
        queue.enqueue("warm", {"n": -1})
        started = time.process_time()
        for first in range(0, items, BATCH):
            queue.enqueue_many(("bench", {"n": i}) for i in range(first, first + BATCH))
        return (time.process_time() - started) / items


def litequeue_put_batches(folder: Path, items: int) -> float:
    queue = local_queue._litequeue(folder / "lq.db")
    queue.put("warm")
    started = time.process_time()
    for first in range(0, items, BATCH):
        with queue.transaction():
            for i in range(first, first + BATCH):
                queue.put(f'{{"n": {i}}}')
    return (time.process_time() - started) / items


def _seeded(folder: Path, tasks: int) -> str:
    url = str(folder / "loop.db")
    upgrade(url)
    local_queue._seed_remote(url, tasks)
    return url


def ours_loop(folder: Path, tasks: int) -> float:
    return ours_loop_on(_seeded(folder, tasks), tasks)


def ours_loop_on(url: str, tasks: int) -> float:
    """CPU a task of the worker loop on a queue seeded with ``tasks`` (``_seeded``)."""
    with LocalQueue(url) as queue:
        started = time.process_time()
        task = queue.dequeue()
        while task is not None:
            task = queue.complete_and_dequeue(task, {"ok": True, "n": task.params["n"]})
        return (time.process_time() - started) / tasks


def floor_loop(folder: Path, tasks: int) -> float:
    return floor_loop_on(_seeded(folder, tasks), tasks)


def floor_loop_on(url: str, tasks: int) -> float:
    """CPU from its connection's opening on, as ours and the bounds count from their
    queue's (the first take included in all three)."""
    return 1 / local_queue.floor_cycle_seeded(url, tasks, time.process_time)


_TIMES = [i for i, c in enumerate(TASK_COLUMNS) if isinstance(c.type, UTCDateTime)]
_JSON = [i for i, c in enumerate(TASK_COLUMNS) if isinstance(c.type, JSON)]


def _bound_loop(url: str, tasks: int, framed: bool) -> float:
    """The floor's statements, bound by name as the floor binds them, with the call's
    own required work inlined around them (see the module docstring); ``framed``: in
    the queue's write transaction, else in a bare one on the same connection."""
    lock, margin = timedelta(seconds=300.0), timedelta(seconds=5.0)
    with LocalQueue(url) as queue:
        sql, db = queue.store.sql, queue.store.db
        finish, append, dequeue = sql.finish_done.sql, sql.append.sql, sql.dequeue(0).sql

        def finish_and_take(conn: Any, task: LocalTask, result: dict[str, Any]) -> Any:
            now = datetime.now(timezone.utc)
            at, text = _sqlite_datetime_text(now), json_text(result)
            token = {"p_id": task.id, "p_holder": task.locked_by, "p_attempts": task.attempts}
            if not conn.execute(finish, {**token, "p_now": at, "p_result": text}).fetchall():
                raise RuntimeError("no longer held")
            row = {
                "kind": "complete",
                "payload": f'{{"result": {text}}}',
                "status": "pending",
                "attempts": 0,
                "created_at": at,
                "dedupe_key": None,
                "task_id": task.id,
                "remote_id": task.remote_id,
                "remote_attempt": task.remote_attempt,
                "remote_worker_id": task.remote_worker_id,
            }
            conn.execute(append, row)
            take = {
                "p_worker": task.locked_by,
                "p_until": _sqlite_datetime_text(now + lock),
                "p_now": at,
                "p_lease_floor": _sqlite_datetime_text(now + margin),
            }
            found = conn.execute(dequeue, take).fetchone()
            if found is None:
                return None
            values = list(found)
            for i in _TIMES:
                values[i] = _sqlite_datetime_value(values[i])
            for i in _JSON:
                if values[i] is not None:
                    values[i] = json.loads(values[i])
            return LocalTask.from_values(values)

        driver = db.connection().connection.driver_connection
        started = time.process_time()
        task = queue.dequeue()  # leaves the connection at NORMAL: the floor commits at FULL
        if not framed:
            driver.execute("PRAGMA synchronous = FULL")
        while task is not None:
            result, held = stored_result({"ok": True, "n": task.params["n"]}), task
            if framed:
                task = db.shared_write(partial(finish_and_take, task=held, result=result))
            else:
                driver.execute("BEGIN IMMEDIATE")
                task = finish_and_take(driver, held, result)
                driver.execute("COMMIT")
        return (time.process_time() - started) / tasks


def all_done(url: str, tasks: int) -> None:
    """Every task of a loop's queue finished (checked after the loop, outside its count)."""
    with LocalQueue(url) as queue:
        assert queue.status().tasks == {("bench", "done"): tasks}, queue.status().tasks


def bound_loop_bare(folder: Path, tasks: int) -> float:
    cpu = _bound_loop(url := _seeded(folder, tasks), tasks, framed=False)
    all_done(url, tasks)
    return cpu


def bound_loop_framed(folder: Path, tasks: int) -> float:
    cpu = _bound_loop(url := _seeded(folder, tasks), tasks, framed=True)
    all_done(url, tasks)
    return cpu


# The worker loop and what it is measured against, each run on a seeded queue's url
# (``loop_instructions.py`` runs them under valgrind).
LOOPS: dict[str, Callable[[str, int], float]] = {
    "ours": ours_loop_on,
    "floor": floor_loop_on,
    "bound, bare": partial(_bound_loop, framed=False),
    "bound, framed": partial(_bound_loop, framed=True),
}


def ours_record_claims(folder: Path, claims: int) -> float:
    url = str(folder / "claims.db")
    upgrade(url)
    now = datetime.now(timezone.utc)
    batch = [ClaimedTask(n, "bench", {"n": n}, 1, 0, "bench", now) for n in range(1, claims + 1)]
    with LocalQueue(url) as queue:
        started = time.process_time()
        for claim in batch:
            queue.store.insert_claimed(claim, 300, now)
        return (time.process_time() - started) / claims


def floor_record_claims(folder: Path, claims: int) -> float:
    url = str(folder / "claims.db")
    upgrade(url)
    engine = open_engine(url)
    statement = Prepared(engine.dialect).claim_new.sql
    engine.dispose()
    conn = sqlite3.connect(url, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    now, lease = "2026-11-28 12:00:00.000000", "2026-11-28 12:05:00.000000"
    started = time.process_time()
    for n in range(1, claims + 1):
        conn.execute("BEGIN IMMEDIATE")
        values = {
            "c_remote_id": n,
            "c_type": "bench",
            "c_params": json_text({"n": n}),  # the encoder ours uses
            "c_priority": 0,
            "c_created_at": now,
            "c_remote_attempt": 1,
            "c_remote_worker_id": "bench",
            "c_lease_expires_at": lease,
        }
        conn.execute(statement, values).fetchall()
        conn.execute("COMMIT")
    cpu = (time.process_time() - started) / claims
    conn.close()
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000, help="enqueued, per round")
    parser.add_argument("--tasks", type=int, default=2000, help="worker-loop tasks, per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases: dict[str, tuple[Callable[[Path, int], float], int]] = {
        "ours enqueue_many": (ours_enqueue_many, args.items),
        "litequeue put, batched": (litequeue_put_batches, args.items),
        "ours complete_and_dequeue": (ours_loop, args.tasks),
        "floor: our statements on bare sqlite3": (floor_loop, args.tasks),
        "bound: + the call's own work, bare": (bound_loop_bare, args.tasks),
        "bound: + the call's own work, framed": (bound_loop_framed, args.tasks),
        "ours insert_claimed": (ours_record_claims, args.tasks),
        "floor: the claim's statement on sqlite3": (floor_record_claims, args.tasks),
    }
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.rounds):
        order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
        for name in order:
            run, count = cases[name]
            with tempfile.TemporaryDirectory() as folder:
                cpu[name].append(run(Path(folder), count) * 1e6)
    print(f"CPU us an item, median [spread] over {args.rounds} interleaved rounds:")
    for name, values in cpu.items():
        print(f"  {name:40s} {spread(values, 1)}")
    for ours, base in (
        ("ours enqueue_many", "litequeue put, batched"),
        ("ours complete_and_dequeue", "floor: our statements on bare sqlite3"),
        ("bound: + the call's own work, bare", "floor: our statements on bare sqlite3"),
        ("bound: + the call's own work, framed", "floor: our statements on bare sqlite3"),
        ("ours insert_claimed", "floor: the claim's statement on sqlite3"),
    ):
        ratios = [b / a for a, b in zip(cpu[ours], cpu[base], strict=True)]
        print(f"  {base} / {ours} (>= 1.00: ours spends no more): {spread(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
