"""Local queue throughput vs litequeue and persist-queue, and vs a bare PostgreSQL loop.

    python tests/bench/local_queue.py [N] [--repeat R] [--no-postgres]

Every queue runs on SQLite in WAL mode with ``synchronous=FULL`` (litequeue
defaults to NORMAL and persist-queue leaves the default; both are set to FULL
here so a commit means the same everywhere). Ours writes the outbox row in the
same transaction as the completion; the peers write nothing of the kind.
"dequeue+complete" is one dequeue transaction plus one completion transaction
per task for everyone. Figures are medians of R rounds, each round running every
measure once (interleaved, so the machine's drift hits all alike); ratios are
against the fastest peer. Needs: pip install litequeue persist-queue.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge import LocalQueue
from bridge.storage.migrations import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.seed
from tests.seed import seed_claimed_tasks

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _seed_remote(url: str, n: int) -> None:
    seed_claimed_tasks(url, range(1, n + 1), task_type="bench", worker_id="bench")


def _ours_drain(url: str, ready: Any = None) -> int:
    done = 0
    with LocalQueue(url) as queue:
        _ready(ready)
        while (task := queue.dequeue()) is not None:
            queue.complete(task, {"ok": True, "n": task.params["n"]})
            done += 1
    return done


def _ours_drain_fast(url: str, ready: Any = None) -> int:
    """The worker loop's fast path: finish and take the next in one transaction."""
    done = 0
    with LocalQueue(url) as queue:
        _ready(ready)
        task = queue.dequeue()
        while task is not None:
            task = queue.complete_and_dequeue(task, {"ok": True, "n": task.params["n"]})
            done += 1
    return done


def _ready(barrier: Any) -> None:
    """A worker process has imported and opened its queue: wait for the others."""
    if barrier is not None:
        barrier.wait()


class _OpenClock:
    """One process: the clock starts once the queue is open (``_ready``), as the floor's
    does after connecting, so opening a queue is not counted as its loop's time."""

    started = 0.0

    def wait(self) -> None:
        self.started = time.perf_counter()

    def rate(self, n: int) -> float:
        return n / (time.perf_counter() - self.started)


STARTS: dict[str, list[float]] = {}  # seconds from spawning the processes to all ready


def _in_processes(
    target: Callable[..., Any], args: tuple[Any, ...], procs: int, name: str
) -> float:
    """Seconds for ``procs`` processes to run ``target(*args, ready)`` to the end, counted
    from the moment all of them have started (imported and opened their queue, then met
    at ``ready``): the steady-state drain. The start itself is recorded in ``STARTS``;
    with N = 2,000 it is longer than the drain (an import of SQLAlchemy is ~0.5 s of
    CPU; the peers import one small module), and the first figures of issue 15 mixed
    the two."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(procs + 1)
    workers = [context.Process(target=target, args=(*args, ready)) for _ in range(procs)]
    spawned = time.perf_counter()
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.perf_counter()
    STARTS.setdefault(name, []).append(started - spawned)
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    return time.perf_counter() - started


# -- ours ---------------------------------------------------------------------------
def ours_enqueue(folder: Path, n: int) -> float:
    url = str(folder / "ours.db")
    upgrade(url)
    with LocalQueue(url) as queue:
        started = time.perf_counter()
        for i in range(n):
            queue.enqueue("bench", {"n": i})
        return n / (time.perf_counter() - started)


BATCH = 100  # a producer's batch (enqueue_many; the peers' put in one transaction)
TAKE = 10  # a batch worker's tasks per transaction (dequeue_many, complete_many_and_dequeue)


def ours_enqueue_many(folder: Path, n: int) -> float:
    url = str(folder / "ours.db")
    upgrade(url)
    with LocalQueue(url) as queue:
        started = time.perf_counter()
        for first in range(0, n, BATCH):
            queue.enqueue_many(("bench", {"n": i}) for i in range(first, min(first + BATCH, n)))
        return n / (time.perf_counter() - started)


def _ours_drain_batches(url: str, ready: Any = None) -> int:
    """The batch worker loop: finish TAKE tasks and take the next TAKE in one transaction."""
    done = 0
    with LocalQueue(url) as queue:
        _ready(ready)
        batch = queue.dequeue_many(TAKE)
        while batch:
            finished = [(task, {"ok": True, "n": task.params["n"]}) for task in batch]
            refused, batch = queue.complete_many_and_dequeue(finished, TAKE)
            assert not refused
            done += len(finished)
    return done


def ours_cycle(url: str, n: int, procs: int, fast: bool | str = False) -> float:
    upgrade(url)
    _seed_remote(url, n)
    drain = {False: _ours_drain, True: _ours_drain_fast, "batches": _ours_drain_batches}[fast]
    if procs == 1:
        clock = _OpenClock()
        assert drain(url, clock) == n
        return clock.rate(n)
    elapsed = _in_processes(drain, (url,), procs, "ours")
    with LocalQueue(url) as queue:
        assert queue.status().tasks == {("bench", "done"): n}
        assert queue.status().outbox == {"pending": n}
    return n / elapsed


def floor_cycle(url: str, n: int) -> float:
    """Our exact worker-loop statements on bare sqlite3: no SQLAlchemy, no models.

    The floor of this design (finish + outbox row + next dequeue, one commit), to
    tell our overhead from the work the design itself requires.
    """

    upgrade(url)
    _seed_remote(url, n)
    return floor_cycle_seeded(url, n)


def floor_cycle_seeded(url: str, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """``floor_cycle`` on a queue already seeded with ``n`` tasks; ``clock`` starts once
    connected (``time.process_time`` for its CPU), as ours starts once its queue is open."""
    import json
    import sqlite3

    from bridge.storage.engine import open_engine
    from bridge.storage.statements import Prepared

    engine = open_engine(url)
    prepared = Prepared(engine.dialect)
    engine.dispose()
    finish, append, dequeue = prepared.finish_done.sql, prepared.append.sql, prepared.dequeue(0).sql
    conn = sqlite3.connect(url, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    now, until, floor = "2026-11-28 12:00:00.000000", "2099-01-01 00:00:00.000000", "2000-01-01"
    take = {"p_worker": "bench", "p_until": until, "p_now": now, "p_lease_floor": floor}
    started = clock()
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(dequeue, take).fetchone()
    conn.execute("COMMIT")
    done = 0
    while row is not None:
        conn.execute("BEGIN IMMEDIATE")
        token = {"p_id": row[0], "p_holder": "bench", "p_attempts": row[5]}
        conn.execute(
            finish, {**token, "p_now": now, "p_result": json.dumps({"ok": True})}
        ).fetchall()
        conn.execute(
            append,
            {
                "kind": "complete",
                "payload": json.dumps({"result": {"ok": True}}),
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "dedupe_key": None,
                "task_id": row[0],
                "remote_id": row[8],
                "remote_attempt": row[9],
                "remote_worker_id": row[10],
            },
        )
        row = conn.execute(dequeue, take).fetchone()
        conn.execute("COMMIT")
        done += 1
    assert done == n
    return n / (clock() - started)


# -- litequeue -------------------------------------------------------------------------
def _litequeue(path: Path) -> Any:
    from litequeue import LiteQueue

    queue = LiteQueue(str(path), timeout=30)  # our busy timeout (sqlite3's default: 5 s)
    queue.conn.execute("PRAGMA synchronous = FULL")
    return queue


def litequeue_enqueue(folder: Path, n: int) -> float:
    queue = _litequeue(folder / "lq.db")
    started = time.perf_counter()
    for i in range(n):
        queue.put(f'{{"n": {i}}}')
    return n / (time.perf_counter() - started)


def litequeue_put_batches(folder: Path, n: int) -> float:
    queue = _litequeue(folder / "lq.db")
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        with queue.transaction():
            for i in range(first, min(first + BATCH, n)):
                queue.put(f'{{"n": {i}}}')
    return n / (time.perf_counter() - started)


def _litequeue_drain(path: str, ready: Any = None) -> None:
    queue = _litequeue(Path(path))
    _ready(ready)
    while (message := queue.pop()) is not None:
        queue.done(message.message_id)


def litequeue_cycle(folder: Path, n: int, procs: int) -> float:
    path = folder / "lq-cycle.db"
    queue = _litequeue(path)
    with queue.transaction():
        for i in range(n):
            queue.put(f'{{"n": {i}}}')
    if procs == 1:
        clock = _OpenClock()
        _litequeue_drain(str(path), clock)
        return clock.rate(n)
    return n / _in_processes(_litequeue_drain, (str(path),), procs, "litequeue")


# -- persist-queue (threads only: not multi-process safe) ------------------------------
def _persistqueue(folder: Path) -> Any:
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(folder), auto_commit=True)
    queue._conn.execute("PRAGMA synchronous = FULL")
    return queue


def persistqueue_enqueue(folder: Path, n: int) -> float:
    queue = _persistqueue(folder / "pq")
    started = time.perf_counter()
    for i in range(n):
        queue.put({"n": i})
    return n / (time.perf_counter() - started)


def persistqueue_cycle(folder: Path, n: int) -> float:
    queue = _persistqueue(folder / "pq-cycle")
    for i in range(n):
        queue.put({"n": i})
    started = time.perf_counter()
    for _ in range(n):
        item = queue.get(block=False)
        queue.ack(item)
    return n / (time.perf_counter() - started)


# -- PostgreSQL: ours vs a bare FOR UPDATE SKIP LOCKED loop -------------------------------
def _pg_schema(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")  # type: ignore[arg-type]
        conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
    return f"{PG_URL}?options=-csearch_path%3D{name}"


def _bare_pg_drain(url: str, ready: Any = None) -> None:
    import psycopg

    dsn, schema = url.split("?")[0], url.split("%3D")[1]
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
        _ready(ready)
        while True:
            with conn.transaction():
                row = conn.execute(
                    "UPDATE bare_q SET status = 'running' WHERE id = (SELECT id FROM bare_q "
                    "WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) "
                    "RETURNING id"
                ).fetchone()
            if row is None:
                return
            with conn.transaction():
                conn.execute(
                    "UPDATE bare_q SET status = 'done', result = %s WHERE id = %s",
                    ('{"ok": true}', row[0]),
                )


def bare_pg_cycle(n: int, procs: int) -> float:
    import psycopg

    url = _pg_schema("bench_bare")
    with psycopg.connect(PG_URL, options="-csearch_path=bench_bare", autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bare_q (id serial PRIMARY KEY, payload jsonb, "
            "status text NOT NULL DEFAULT 'queued', result jsonb)"
        )
        conn.execute(
            "INSERT INTO bare_q (payload) SELECT jsonb_build_object('n', g) "
            "FROM generate_series(1, %s) g",
            (n,),
        )
    return n / _in_processes(_bare_pg_drain, (url,), procs, "bare PostgreSQL")


def ours_pg_cycle(n: int, procs: int) -> float:
    return ours_cycle(_pg_schema("bench_ours"), n, procs)


def interleaved_rounds(
    rounds: int, measures: dict[str, Callable[[Path], float]]
) -> dict[str, list[float]]:
    """Each measure once per round, rounds one after the other: every rate of every round.

    This machine's fsync speed drifts by +-20% over a minute; measuring all of A
    then all of B turned that drift into a ratio. Interleaved, each round sees the
    same conditions for everyone, and a ratio is taken within a round.
    """
    rates: dict[str, list[float]] = {name: [] for name in measures}
    for number in range(rounds):
        for name, measure in measures.items():
            with tempfile.TemporaryDirectory() as folder:
                rates[name].append(measure(Path(folder)))
        print(f"  round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    n = args.n

    measures: dict[str, Callable[[Path], float]] = {
        "ours enqueue": lambda f: ours_enqueue(f, n),
        "litequeue put": lambda f: litequeue_enqueue(f, n),
        "persist-queue put": lambda f: persistqueue_enqueue(f, n),
        f"ours enqueue_many (batches of {BATCH})": lambda f: ours_enqueue_many(f, n),
        f"litequeue put (batches of {BATCH} in its transaction())": lambda f: litequeue_put_batches(
            f, n
        ),
        "ours dequeue+complete (1 proc)": lambda f: ours_cycle(str(f / "o.db"), n, 1),
        "ours complete_and_dequeue (1 proc)": lambda f: ours_cycle(
            str(f / "o.db"), n, 1, fast=True
        ),
        "floor: our statements on bare sqlite3 (1 proc)": lambda f: floor_cycle(
            str(f / "floor.db"), n
        ),
        f"ours batch loop, {TAKE} a transaction (1 proc)": lambda f: ours_cycle(
            str(f / "o.db"), n, 1, fast="batches"
        ),
        "litequeue pop+done (1 proc)": lambda f: litequeue_cycle(f, n, 1),
        "persist-queue get+ack (1 proc)": lambda f: persistqueue_cycle(f, n),
        "ours dequeue+complete (4 procs)": lambda f: ours_cycle(str(f / "o.db"), n, 4),
        "ours complete_and_dequeue (4 procs)": lambda f: ours_cycle(
            str(f / "o.db"), n, 4, fast=True
        ),
        f"ours batch loop, {TAKE} a transaction (4 procs)": lambda f: ours_cycle(
            str(f / "o.db"), n, 4, fast="batches"
        ),
        "litequeue pop+done (4 procs)": lambda f: litequeue_cycle(f, n, 4),
    }
    if not args.no_postgres:
        measures.update(
            {
                "ours PostgreSQL dequeue+complete (1 proc)": lambda _f: ours_pg_cycle(n, 1),
                "bare SKIP LOCKED loop (1 proc)": lambda _f: bare_pg_cycle(n, 1),
                "ours PostgreSQL dequeue+complete (4 procs)": lambda _f: ours_pg_cycle(n, 4),
                "bare SKIP LOCKED loop (4 procs)": lambda _f: bare_pg_cycle(n, 4),
            }
        )
    rates = interleaved_rounds(args.repeat, measures)
    report(rates, n, args.repeat, postgres=not args.no_postgres)


def report(rates: dict[str, list[float]], n: int, rounds: int, postgres: bool) -> None:
    """Medians and ranges of the rates; each ratio taken within a round, then its median
    and its range over the rounds (the spread a claim must beat)."""
    print(f"N = {n} tasks, {rounds} interleaved rounds, ops/s: median [min-max]")
    for name, values in rates.items():
        print(
            f"  {name:55s} {statistics.median(values):7.0f} [{min(values):.0f}-{max(values):.0f}]"
        )
    for name, values in STARTS.items():
        print(f"  start of the worker processes, {name:24s} {statistics.median(values):7.2f} s")

    def ratio(ours: str, *peers: str) -> None:
        per_round = [rates[ours][i] / max(rates[peer][i] for peer in peers) for i in range(rounds)]
        best = max(peers, key=lambda p: statistics.median(rates[p]))
        print(
            f"  {ours} / {best if len(peers) == 1 else 'fastest of ' + ', '.join(peers)}: "
            f"{statistics.median(per_round):.2f}x "
            f"[{min(per_round):.2f}-{max(per_round):.2f}]"
        )

    one = ("litequeue pop+done (1 proc)", "persist-queue get+ack (1 proc)")
    floor = "floor: our statements on bare sqlite3 (1 proc)"
    print("ratios per round, median [min-max] (>= 1.00: ours at least as fast):")
    ratio("ours enqueue", "litequeue put", "persist-queue put")
    ratio(
        f"ours enqueue_many (batches of {BATCH})",
        f"litequeue put (batches of {BATCH} in its transaction())",
    )
    ratio("ours dequeue+complete (1 proc)", *one)
    ratio("ours complete_and_dequeue (1 proc)", *one)
    ratio(f"ours batch loop, {TAKE} a transaction (1 proc)", *one)
    ratio(floor, *one)
    ratio("ours complete_and_dequeue (1 proc)", floor)
    ratio("ours dequeue+complete (4 procs)", "litequeue pop+done (4 procs)")
    ratio("ours complete_and_dequeue (4 procs)", "litequeue pop+done (4 procs)")
    ratio(f"ours batch loop, {TAKE} a transaction (4 procs)", "litequeue pop+done (4 procs)")
    if postgres:
        ratio("ours PostgreSQL dequeue+complete (1 proc)", "bare SKIP LOCKED loop (1 proc)")
        ratio("ours PostgreSQL dequeue+complete (4 procs)", "bare SKIP LOCKED loop (4 procs)")


if __name__ == "__main__":
    main()
