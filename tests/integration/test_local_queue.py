"""The local queue's contract, run on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import sqlite3
import stat
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bridge import DatabaseError, LocalQueue, TaskNotHeldError, ValidationError
from bridge.storage.task_queue import ENQUEUE_ORDER, _enqueue_row
from taskmanager import ClaimedTask, dedupe_key

from .conftest import Clock

LEASE = 300.0


def claimed(
    remote_id: int,
    clock: Clock,
    *,
    attempts: int = 1,
    age: float = 0.0,
    task_type: str = "yt.scrape",
    priority: int = 0,
) -> ClaimedTask:
    return ClaimedTask(
        id=remote_id,
        type=task_type,
        params={"n": remote_id},
        attempts=attempts,
        priority=priority,
        worker_id="bridge-host",
        claimed_at=clock.now - timedelta(seconds=age),
    )


def add_remote(queue: LocalQueue, clock: Clock, remote_id: int, **kwargs) -> None:
    queue.store.insert_claimed(claimed(remote_id, clock, **kwargs), LEASE, clock.now)


def test_dequeue_order_priority_then_age_and_type_filter(queue: LocalQueue, clock: Clock):
    low = queue.enqueue("a", {"i": 1}, priority=0)
    high = queue.enqueue("a", {"i": 2}, priority=5)
    other = queue.enqueue("b", {"i": 3}, priority=9)
    low2 = queue.enqueue("a", {"i": 4}, priority=0)
    assert queue.dequeue(types=["a"]).id == high.id
    assert queue.dequeue(types="a").id == low.id
    assert queue.dequeue(types=["a"]).id == low2.id
    assert queue.dequeue(types=["a"]) is None
    task = queue.dequeue()
    assert task.id == other.id and task.status == "running"
    assert task.locked_by == "worker-a" and task.attempts == 1
    assert task.locked_until == clock.now + timedelta(seconds=queue.config.lock_seconds)
    assert queue.dequeue() is None


def test_complete_is_one_transaction_with_its_outbox_row(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 41, attempts=2)
    task = queue.dequeue()
    assert task.remote_id == 41 and task.remote_attempt == 2
    queue.complete(task, {"ideas": 3})
    assert queue.get(task.id).status == "done" and queue.get(task.id).result == {"ideas": 3}
    [row] = queue.outbox()
    assert (row.kind, row.remote_id, row.remote_attempt, row.remote_worker_id, row.payload) == (
        "complete",
        41,
        2,
        "bridge-host",
        {"result": {"ideas": 3}},
    )
    assert row.status == "pending" and row.task_id == task.id


def test_local_only_task_writes_no_outbox_row(queue: LocalQueue):
    queue.enqueue("local", {"x": 1})
    queue.complete(queue.dequeue(), {"ok": True})
    assert queue.outbox() == []


def test_fail_queues_failure_or_retries_locally(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 7)
    task = queue.dequeue()
    queue.fail(task, RuntimeError("page changed"), retry=True)
    again = queue.dequeue()
    assert (
        again.id == task.id and again.attempts == 2 and again.error == "RuntimeError: page changed"
    )
    assert queue.outbox() == []
    queue.fail(again, "still broken")
    assert queue.get(task.id).status == "failed"
    [row] = queue.outbox()
    assert (row.kind, row.payload) == ("fail", {"error": "still broken"})


def test_progress_coalesces_and_is_made_obsolete_by_completion(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 9)
    task = queue.dequeue()
    for percent in (10, 40, 70):
        clock.advance(1)
        queue.progress(task, percent, f"at {percent}")
    [row] = queue.outbox(status="pending")
    assert (row.kind, row.payload) == ("progress", {"progress": 70, "message": "at 70"})
    assert queue.get(task.id).progress == 70
    assert queue.get(task.id).locked_until == clock.now + timedelta(
        seconds=queue.config.lock_seconds
    )
    queue.complete(task, {"done": 1})
    kinds = {(r.kind, r.status) for r in queue.outbox()}
    assert kinds == {("progress", "obsolete"), ("complete", "pending")}
    with pytest.raises(ValidationError):
        queue.progress(task, 101)


def test_outbox_order_is_completion_order(queue: LocalQueue, clock: Clock):
    for remote_id in (1, 2, 3, 4):
        add_remote(queue, clock, remote_id)
    tasks = [queue.dequeue() for _ in range(4)]
    for task in reversed(tasks):
        queue.complete(task, {"id": task.remote_id})
    assert [r.remote_id for r in queue.store.pending_outbox(clock.now, 10)] == [4, 3, 2, 1]


def test_lease_respected_by_dequeue_and_expired_by_reaper(queue: LocalQueue, clock: Clock):
    margin = queue.config.lease_margin_seconds
    add_remote(queue, clock, 100, age=LEASE - margin + 1)  # ends within the margin
    add_remote(queue, clock, 101, age=LEASE - margin - 5)  # 5 s of usable lease
    task = queue.dequeue()
    assert task.remote_id == 101
    assert queue.dequeue() is None
    assert queue.store.expire_unstartable(margin, clock.now) == 1
    assert queue.store.get_task_by_remote_id(100).status == "expired"


def test_lost_lock_is_requeued_and_late_complete_refused(migrated_url: str, clock: Clock):
    with (
        LocalQueue(migrated_url, locked_by="slow", clock=clock) as slow,
        LocalQueue(migrated_url, locked_by="fast", clock=clock) as fast,
    ):
        add_remote(slow, clock, 5)
        held = slow.dequeue(lock_seconds=10)
        clock.advance(11)
        assert slow.store.requeue_stale_locks(slow.config.lease_margin_seconds, clock.now) == (1, 0)
        taken = fast.dequeue()
        assert taken.id == held.id and taken.attempts == 2
        with pytest.raises(TaskNotHeldError, match="now held by fast") as info:
            slow.complete(held, {"by": "slow"})
        assert info.value.current_status == "running"
        with pytest.raises(TaskNotHeldError):
            slow.heartbeat(held)
        with pytest.raises(TaskNotHeldError):
            slow.progress(held, 50)
        assert fast.get(held.id).result is None and fast.outbox() == []
        fast.complete(taken, {"by": "fast"})
        with pytest.raises(TaskNotHeldError, match="it is done now"):
            fast.complete(taken, {"by": "fast again"})
        assert [r.payload for r in fast.outbox()] == [{"result": {"by": "fast"}}]


def test_late_complete_of_an_earlier_attempt_by_the_same_worker_is_refused(
    queue: LocalQueue, clock: Clock
):
    """The claim token is (holder, attempt): the holder alone cannot tell two runs apart."""
    add_remote(queue, clock, 7)
    old = queue.dequeue(lock_seconds=10)
    clock.advance(11)
    assert queue.store.requeue_stale_locks(queue.config.lease_margin_seconds, clock.now) == (1, 0)
    new = queue.dequeue()
    assert new.id == old.id and new.locked_by == old.locked_by
    assert (old.attempts, new.attempts) == (1, 2)
    with pytest.raises(TaskNotHeldError):
        queue.complete(old, {"by": "attempt 1"})
    with pytest.raises(TaskNotHeldError):
        queue.progress(old, 50)
    current = queue.get(old.id)
    assert (current.status, current.result, current.attempts) == ("running", None, 2)
    assert queue.outbox() == []
    queue.complete(new, {"by": "attempt 2"})
    assert [r.payload for r in queue.outbox()] == [{"result": {"by": "attempt 2"}}]


def test_stale_lock_with_expired_lease_is_expired(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 6)
    queue.dequeue(lock_seconds=10)
    clock.advance(LEASE)
    assert queue.store.requeue_stale_locks(queue.config.lease_margin_seconds, clock.now) == (0, 1)
    assert queue.store.get_task_by_remote_id(6).status == "expired"


def test_heartbeat_extends_the_lock(queue: LocalQueue, clock: Clock):
    queue.enqueue("a", {"x": 1})
    task = queue.dequeue(lock_seconds=30)
    clock.advance(20)
    assert queue.heartbeat(task, lock_seconds=30) == clock.now + timedelta(seconds=30)
    clock.advance(20)
    assert queue.store.requeue_stale_locks(0, clock.now) == (0, 0)


def test_insert_claimed_is_idempotent_and_requeues_newer_attempts(queue: LocalQueue, clock: Clock):
    first, created = queue.store.insert_claimed(claimed(50, clock), LEASE, clock.now)
    assert first == queue.get(first.id)  # built from what was inserted: the row, exactly
    again, changed = queue.store.insert_claimed(claimed(50, clock), LEASE, clock.now)
    assert created and not changed and again == first
    task = queue.dequeue()
    queue.fail(task, "boom")
    (failure,) = queue.outbox("pending", 10)
    queue.store.settle_outbox(failure.id, "delivered", None, clock.now)  # the server has it
    clock.advance(60)
    renewed, changed = queue.store.insert_claimed(claimed(50, clock, attempts=2), LEASE, clock.now)
    assert changed and renewed.id == first.id and renewed.status == "queued"
    assert renewed.remote_attempt == 2
    assert renewed.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    done = queue.dequeue()
    queue.complete(done, {"ok": 1})
    # A re-claim of a finished task keeps its result: while its completion is pending the
    # server will take that (same worker id); once the completion was superseded, the
    # result is queued again for the new claim instead of running the task again.
    held, changed = queue.store.insert_claimed(claimed(50, clock, attempts=3), LEASE, clock.now)
    assert changed and held.status == "done" and held.remote_attempt == 3
    completions = [e for e in queue.outbox(None, 10) if e.kind == "complete"]
    assert [(e.status, e.remote_attempt) for e in completions] == [("pending", 2)]
    queue.store.settle_outbox(completions[0].id, "superseded", "lease taken", clock.now)
    held, changed = queue.store.insert_claimed(claimed(50, clock, attempts=4), LEASE, clock.now)
    assert changed and queue.get(first.id).status == "done"
    resent = [e for e in queue.outbox("pending", 10) if e.kind == "complete"]
    assert [(e.payload, e.remote_attempt) for e in resent] == [({"result": {"ok": 1}}, 4)]


def test_a_new_claim_is_recorded_as_sent_whatever_its_zone_and_values(queue: LocalQueue):
    """The task a new claim returns is built from what was inserted, not read back: it
    must be the row exactly (UTC times to the microsecond, the params' values as JSON
    keeps them), and params JSON cannot hold are refused with nothing written."""
    zone = timezone(timedelta(hours=-7, minutes=-30))
    now = datetime(2026, 12, 7, 14, 3, 9, 123457, tzinfo=zone)
    params = {"f": 0.1, "big": 2**70, "text": "žluťoučký kůň", "nested": {"a": [1, None]}}
    task, created = queue.store.insert_claimed(
        ClaimedTask(901, "yt.scrape", params, 2, 7, "bridge-1", now), LEASE, now
    )
    assert created and task == queue.get(task.id)
    assert task.created_at == now and task.created_at.tzinfo == timezone.utc
    assert task.lease_expires_at == now + timedelta(seconds=LEASE)
    unencodable = ClaimedTask(902, "yt.scrape", {"x": {1, 2}}, 1, 0, "bridge-1", now)
    with pytest.raises(TypeError):
        queue.store.insert_claimed(unencodable, LEASE, now)
    assert queue.status().tasks == {("yt.scrape", "queued"): 1}


def test_create_remote_task_offline_validated_and_deduplicated(queue: LocalQueue):
    queue.register_task_type(
        "yt.scrape",
        "1",
        {
            "type": "object",
            "properties": {"url": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["url"],
        },
    )
    entry = queue.create_remote_task("yt.scrape", {"url": "u", "n": 2}, priority=3)
    assert entry.kind == "create_task" and entry.dedupe_key == dedupe_key(
        "yt.scrape", {"n": 2, "url": "u"}
    )
    assert entry.payload == {"type": "yt.scrape", "params": {"n": 2, "url": "u"}, "priority": 3}
    same = queue.create_remote_task("yt.scrape", {"n": 2, "url": "u"})
    assert same.id == entry.id
    with pytest.raises(ValidationError, match="'url' is a required property"):
        queue.create_remote_task("yt.scrape", {"n": 1})
    with pytest.raises(ValidationError, match="n"):
        queue.create_remote_task("yt.scrape", {"url": "u", "n": 1.0})
    with pytest.raises(ValidationError, match="must not be empty"):
        queue.create_remote_task("unknown.type", {})
    assert [r.kind for r in queue.outbox()] == ["register_type", "create_task"]
    assert queue.store.cached_task_type("yt.scrape").remote_id is None


def test_bad_values_refused_and_nothing_changed(queue: LocalQueue):
    queue.enqueue("a", {"x": 1})
    task = queue.dequeue()
    with pytest.raises(ValidationError, match=r"^results\.x: nan is not JSON"):
        queue.complete(task, {"x": float("nan")})
    with pytest.raises(ValidationError):
        queue.complete(task, {"when": object()})
    with pytest.raises(ValidationError):
        queue.register_task_type("t", "1", {"properties": {}})
    with pytest.raises(ValidationError):
        queue.enqueue("a", {"x": {1, 2}})
    assert queue.get(task.id).status == "running"
    queue.complete(task, {"x": "ünïcode 🎉", "deep": [[[[{"k": None}]]]]})
    assert queue.get(task.id).result == {"x": "ünïcode 🎉", "deep": [[[[{"k": None}]]]]}


def test_what_the_server_cannot_store_is_refused_at_once_or_cut_to_fit(
    queue: LocalQueue, clock: Clock
):
    """A result or params over the server's 65,535 bytes would be a 500 "Data too long"
    that no resend cures: refused here, nothing written. A failure's text is cut instead."""
    add_remote(queue, clock, 9)
    task = queue.dequeue()
    descriptions = {"videos": ["a video description, " * 17] * 200}  # about 72 KB
    refused = r"^results: 7\d,\d{3} bytes as the server stores them .* 65,535 bytes"
    with pytest.raises(ValidationError, match=refused):
        queue.complete(task, descriptions)
    with pytest.raises(ValidationError, match=refused):
        queue.complete_and_dequeue(task, descriptions)
    with pytest.raises(ValidationError, match=refused):
        queue.complete_many([(task, descriptions)])
    with pytest.raises(ValidationError, match=r"^params: 70,011 bytes .*\(params_json\)"):
        queue.create_remote_task("yt.scrape", {"blob": "x" * 70_000})
    assert queue.get(task.id).status == "running" and queue.outbox() == []

    queue.fail(task, "Traceback " + "x" * 100_000)
    [row] = queue.outbox()
    error = row.payload["error"]
    assert len(error.encode()) <= 65_535 and error.startswith("Traceback xxx")
    assert error.endswith("[cut: the error text was 100,010 bytes; the server stores 65,535]")
    assert queue.get(task.id).error == error


def test_counts_settle_requeue_and_prune(queue: LocalQueue, clock: Clock):
    for remote_id in (1, 2, 3):
        add_remote(queue, clock, remote_id)
    for _ in range(3):
        queue.complete(queue.dequeue(), {"ok": True})
    rows = queue.store.pending_outbox(clock.now, 10)
    queue.store.settle_outbox(rows[0].id, "delivered", None, clock.now)
    queue.store.settle_outbox(rows[1].id, "dead", "400 Validation failed", clock.now)
    queue.store.retry_outbox_at(rows[2].id, clock.now + timedelta(seconds=30), "503")
    assert queue.store.pending_outbox(clock.now, 10) == []
    counts = queue.status()
    assert counts.tasks == {("yt.scrape", "done"): 3}
    assert counts.outbox == {"delivered": 1, "dead": 1, "pending": 1}
    assert counts.oldest_pending_outbox == clock.now
    assert queue.store.requeue_outbox(None, clock.now) == 1
    assert queue.status().outbox == {"delivered": 1, "pending": 2}
    clock.advance(3600)
    assert queue.store.prune(clock.now) == (1, 1)  # only the delivered row and its task
    assert sorted(queue.status().outbox.items()) == [("pending", 2)]


def test_queued_count_counts_only_the_types_tasks_still_waiting(queue: LocalQueue):
    """What a claim burst's top-up reads before claiming into the room workers opened."""
    for n in range(4):
        queue.enqueue("yt.scrape", {"n": n})
    queue.enqueue("reddit.scrape", {"n": 9})
    assert queue.store.queued_count("yt.scrape") == 4
    queue.complete(queue.dequeue(["yt.scrape"]), {"ok": True})
    assert queue.dequeue(["yt.scrape"]) is not None  # taken: running, no longer waiting
    assert queue.store.queued_count("yt.scrape") == 2
    assert queue.store.queued_count("reddit.scrape") == 1
    assert queue.store.queued_count("no.such.type") == 0


def test_bridge_state_round_trip(queue: LocalQueue, clock: Clock):
    assert queue.store.get_state("worker_id") is None
    queue.store.set_state("worker_id", "host-1", clock.now)
    queue.store.set_state("worker_id", "host-2", clock.now)
    assert queue.store.get_state("worker_id") == "host-2"


def test_sqlite_files_are_private(tmp_path):
    from bridge.storage.migrations import upgrade

    path = tmp_path / "private.db"
    upgrade(str(path))
    with LocalQueue(str(path)) as queue:
        queue.enqueue("a", {"x": 1})
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
            assert mode == 0o600, f"{path}{suffix} is {oct(mode)}"


def test_taking_a_task_skips_the_fsync_but_nothing_after_it_does(tmp_path):
    """Only the dequeue (and a claim's record) commits without waiting for the disk
    (see ``Connector.hot_write``): every durable write after it commits at
    synchronous=FULL, even after a relaxed one failed; and a thread that only takes
    tasks sets the mode once, not around every take."""
    from bridge.storage.migrations import upgrade

    path = str(tmp_path / "q.db")
    upgrade(path)
    with LocalQueue(path) as queue:
        driver = queue.store.db.connection().connection.driver_connection
        assert int(driver.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        mode = ["FULL"]
        commits: list[tuple[str, str]] = []  # (what, the mode it committed at)
        pragmas: list[str] = []

        def trace(statement: str) -> None:
            text = statement.strip().upper()
            if text.startswith("PRAGMA SYNCHRONOUS ="):
                mode[0] = text.rsplit("=", 1)[1].strip()
                pragmas.append(mode[0])
            elif text == "COMMIT" or (text.startswith("INSERT") and not driver.in_transaction):
                commits.append((text.split()[0], mode[0]))

        driver.set_trace_callback(trace)

        queue.enqueue("a", {})
        assert commits[-1] == ("INSERT", "FULL")  # the enqueue commits on its own
        task = queue.dequeue()
        assert task is not None and commits[-1] == ("COMMIT", "NORMAL")
        queue.enqueue("a", {})
        assert commits[-1] == ("INSERT", "FULL")
        pragmas.clear()
        second = queue.dequeue()
        third = queue.dequeue()
        assert second is not None and third is None
        assert pragmas == ["NORMAL"]  # once for both takes
        with pytest.raises(ValueError):
            queue.dequeue(lock_seconds=float("nan"))  # fails inside the transaction
        queue.complete(task, {"ok": True})
        assert commits[-1] == ("COMMIT", "FULL")
        assert queue.get(task.id).status == "done"
        # Recording a claim (covered by the daemon's durable claim intent) is the other.
        claimed = ClaimedTask(77, "a", {}, 1, 0, "bridge-1", queue.clock())
        queue.store.insert_claimed(claimed, 300, queue.clock())
        assert commits[-1] == ("COMMIT", "NORMAL")
        unbindable = ClaimedTask(78, "a", {}, 1, object(), "bridge-1", queue.clock())  # type: ignore[arg-type]
        with pytest.raises(DatabaseError):  # fails inside the relaxed transaction
            queue.store.insert_claimed(unbindable, 300, queue.clock())
        queue.complete(second, {"ok": True})
        assert commits[-1] == ("COMMIT", "FULL")
        before = len(commits)
        with queue.store.db.write() as conn:  # a write through SQLAlchemy's own begin
            conn.exec_driver_sql("UPDATE tasks SET priority = 1 WHERE remote_id = 77")
        assert commits[before:] == [("COMMIT", "FULL")]
        driver.set_trace_callback(None)


def test_a_relaxed_write_interrupted_after_its_pragma_leaves_no_durable_write_relaxed(tmp_path):
    """A SIGINT lands the moment ``PRAGMA synchronous = NORMAL`` returns (Python raises
    it there): the thread keeps its connection, and its next durable write must still
    commit at FULL."""
    from bridge.storage.migrations import upgrade
    from bridge.storage.sqlite_locking import SYNCHRONOUS_NORMAL

    path = str(tmp_path / "q.db")
    upgrade(path)

    class InterruptedAfterPragma:
        def __init__(self, real: Any) -> None:
            self.real = real

        def execute(self, sql: str, *args: Any) -> Any:
            cursor = self.real.execute(sql, *args)
            if sql == SYNCHRONOUS_NORMAL:
                raise KeyboardInterrupt
            return cursor

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    with LocalQueue(path) as queue:
        db = queue.store.db
        queue.enqueue("a", {})
        holder = db._holder()
        real = holder.driver
        holder.driver = InterruptedAfterPragma(real)
        with pytest.raises(KeyboardInterrupt), db.write(durable=False):
            pass
        holder.driver = real
        assert db._holder() is holder  # kept: only driver errors drop it
        mode = ["NORMAL" if int(real.execute("PRAGMA synchronous").fetchone()[0]) == 1 else "FULL"]
        commits: list[tuple[str, str]] = []

        def trace(statement: str) -> None:
            text = statement.strip().upper()
            if text.startswith("PRAGMA SYNCHRONOUS ="):
                mode[0] = text.rsplit("=", 1)[1].strip()
            elif text.startswith("INSERT") and not real.in_transaction:
                commits.append((text.split()[0], mode[0]))

        real.set_trace_callback(trace)
        queue.enqueue("a", {})  # durable, on its own
        real.set_trace_callback(None)
        assert commits == [("INSERT", "FULL")]


def test_a_connection_left_relaxed_is_full_again_for_whoever_takes_it_next(tmp_path):
    """A thread that took a task last leaves its connection at NORMAL; when the thread
    ends the connection goes back to the pool, and the next checkout sets FULL."""
    from bridge.storage.migrations import upgrade

    path = str(tmp_path / "q.db")
    upgrade(path)
    with LocalQueue(path) as queue:
        queue.enqueue("a", {})
        seen: list[int] = []

        def take() -> None:
            assert queue.dequeue() is not None
            driver = queue.store.db.connection().connection.driver_connection
            seen.append(int(driver.execute("PRAGMA synchronous").fetchone()[0]))

        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
        del thread
        gc.collect()  # the thread's connection back to the pool
        with queue.store.engine.connect() as conn:
            after = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        assert seen == [1] and after == 2  # NORMAL in the thread, FULL for the next


def test_complete_and_dequeue_is_one_step(migrated_url: str, clock: Clock):
    with (
        LocalQueue(migrated_url, locked_by="w1", clock=clock) as queue,
        LocalQueue(migrated_url, locked_by="w2", clock=clock) as other,
    ):
        for remote_id in (1, 2, 3):
            add_remote(queue, clock, remote_id)
        first = queue.dequeue()
        second = queue.complete_and_dequeue(first, {"n": 1})
        assert second.remote_id == 2 and second.locked_by == "w1"
        assert queue.get(first.id).status == "done"
        # A refused finish takes nothing: the whole transaction rolls back.
        clock.advance(queue.config.lock_seconds + 1)
        queue.store.requeue_stale_locks(queue.config.lease_margin_seconds, clock.now)
        stolen = other.dequeue()
        assert stolen.id == second.id
        with pytest.raises(TaskNotHeldError):
            queue.complete_and_dequeue(second, {"n": 2})
        assert [t.status for t in (queue.store.get_task_by_remote_id(r) for r in (1, 2, 3))] == [
            "done",
            "running",
            "queued",
        ]
        last = other.complete_and_dequeue(stolen, {"n": 2}, types=["yt.scrape"])
        assert last.remote_id == 3 and other.complete_and_dequeue(last, {"n": 3}) is None
        assert [r.remote_id for r in queue.outbox()] == [1, 2, 3]


def sqlite_queue_file(tmp_path: Path, name: str, busy_timeout: float) -> tuple[Path, Any]:
    """A migrated SQLite queue file and a config that waits ``busy_timeout`` for its lock."""
    from bridge import BridgeConfig
    from bridge.storage.migrations import upgrade

    path = tmp_path / f"{name}.db"
    upgrade(str(path))
    return path, BridgeConfig.load(env={}, db_url=str(path), busy_timeout_seconds=busy_timeout)


@pytest.mark.parametrize("write", ["dequeue", "enqueue", "set_state"])
def test_threads_waiting_for_the_lock_each_give_up_after_the_busy_timeout(
    tmp_path, clock: Clock, write: str
):
    """The process's writers take turns for SQLite's lock: the turn is part of the busy
    timeout, so five threads behind another process's lock all fail after about 0.5 s
    (not 0.5, 1.0, ... 2.5 s), and the busy timeout is back on the connection after.
    Each way of writing: the hot path's polls (dequeue), one statement waiting with
    SQLite's own handler (enqueue), a SQLAlchemy transaction (set_state)."""
    from concurrent.futures import ThreadPoolExecutor

    path, config = sqlite_queue_file(tmp_path, "turns", busy_timeout=0.5)
    with LocalQueue(config=config, clock=clock) as queue:
        queue.enqueue("a", {"n": 1})
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        writes = {
            "dequeue": queue.dequeue,
            "enqueue": lambda: queue.enqueue("a", {"n": 0}),
            "set_state": lambda: queue.store.set_state("k", "v", clock()),
        }

        def refused_after() -> float:
            started = time.monotonic()
            with pytest.raises(DatabaseError, match="locked"):
                writes[write]()
            return time.monotonic() - started

        try:
            with ThreadPoolExecutor(5) as pool:
                waits = list(pool.map(lambda _: refused_after(), range(5)))
        finally:
            holder.rollback()
            holder.close()
        # 0.5 s each, give or take a poll: a turn waited for and then the whole busy timeout
        # again would be ~1 s for some (and 2.5 s for the last with stacked turns).
        assert max(waits) < 0.8, waits
        assert queue.dequeue() is not None  # and the connections work again
        # Between hot transactions the busy timeout stays 0 (they poll); whatever waits
        # with SQLite's own handler (an enqueue's INSERT) has the configured one back.
        queue.enqueue("a", {"n": 2})
        driver = queue.store.db.connection().connection.driver_connection
        assert driver.execute("PRAGMA busy_timeout").fetchone()[0] == 500


def test_a_wait_shortened_by_the_turn_does_not_stick_to_the_connection(tmp_path):
    """An enqueue that waited for this process's turn may wait only what is left for
    SQLite's lock; the next one, uncontended, has the whole busy timeout again."""

    _, config = sqlite_queue_file(tmp_path, "left", busy_timeout=0.5)
    with LocalQueue(config=config) as queue:
        queue.enqueue("a", {"n": 0})
        driver = queue.store.db.connection().connection.driver_connection
        turn = queue.store.db._turn
        assert turn is not None
        holding = threading.Event()

        def hold_the_turn() -> None:
            with turn:
                holding.set()
                time.sleep(0.2)

        other = threading.Thread(target=hold_the_turn)
        other.start()
        holding.wait()
        queue.enqueue("a", {"n": 1})  # waited ~0.2 s for the turn
        other.join()
        assert driver.execute("PRAGMA busy_timeout").fetchone()[0] <= 310
        queue.enqueue("a", {"n": 2})
        assert driver.execute("PRAGMA busy_timeout").fetchone()[0] == 500
        with queue.store.db.write():  # a SQLAlchemy transaction sets the whole back too
            pass
        assert driver.execute("PRAGMA busy_timeout").fetchone()[0] == 500


def test_a_woken_slot_looks_for_queued_work_without_the_write_lock(queue: LocalQueue):
    store = queue.store
    if store.is_postgresql:
        assert store.any_queued(None)  # no look there: dequeue skips locked rows itself
        return
    assert not store.any_queued(None)
    queue.enqueue("a", {"n": 1})
    assert store.any_queued(None) and store.any_queued(["a", "b"])
    assert not store.any_queued(["b"])
    holder = sqlite3.connect(queue.config.db_url.removeprefix("sqlite:///"))
    holder.execute("BEGIN IMMEDIATE")  # another process writing: the look does not wait
    try:
        assert store.any_queued(["a"])
    finally:
        holder.rollback()
        holder.close()
    assert queue.dequeue() is not None
    assert not store.any_queued(None)  # running, not queued


def test_locked_database_is_a_clear_error_and_recovers(tmp_path, clock: Clock):
    import sqlite3

    from bridge import DatabaseError

    path, config = sqlite_queue_file(tmp_path, "locked", busy_timeout=0.2)
    with LocalQueue(config=config, clock=clock) as queue:
        queue.enqueue("a", {"x": 1})
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        try:
            with pytest.raises(DatabaseError, match="locked by another process"):
                queue.dequeue()
            with pytest.raises(DatabaseError, match="locked by another process"):
                queue.enqueue("a", {"x": 2})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        task = queue.dequeue()  # the cause is gone: the same queue works again
        assert task is not None and task.params == {"x": 1}
        queue.complete(task, {"ok": True})
        assert queue.status().tasks == {("a", "done"): 1}  # the refused enqueue left nothing
        added = queue.enqueue("a", {"x": 3})  # its connection was not left mid-transaction
        assert queue.get(added.id).params == {"x": 3}
        assert queue.status().tasks == {("a", "done"): 1, ("a", "queued"): 1}


def test_reaping_takes_the_write_lock_only_when_a_lock_ran_out(tmp_path, clock: Clock):
    """The reaper's search must not stall the workers: with another writer holding
    the lock it still answers, and it waits for the lock only to change something."""
    import sqlite3

    from bridge import DatabaseError

    path, config = sqlite_queue_file(tmp_path, "reap", busy_timeout=0.2)
    with LocalQueue(config=config, clock=clock) as queue:
        queue.enqueue("a", {"x": 1})
        task = queue.dequeue()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a worker in the middle of a write
        try:
            assert queue.store.requeue_stale_locks(30, clock.now) == (0, 0)
            clock.advance(queue.config.lock_seconds + 1)
            with pytest.raises(DatabaseError, match="locked"):
                queue.store.requeue_stale_locks(30, clock.now)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert queue.store.requeue_stale_locks(30, clock.now) == (1, 0)
        assert queue.get(task.id).status == "queued"


def test_explicit_url_overrides_only_the_url_of_a_given_config(tmp_path):
    from bridge import BridgeConfig
    from bridge.storage.migrations import upgrade

    url = str(tmp_path / "override.db")
    upgrade(url)
    config = BridgeConfig.load(env={}, db_url="elsewhere.db", lock_seconds=7)
    with LocalQueue(url, config=config) as queue:
        assert queue.config.db_url == url and queue.config.lock_seconds == 7


def test_concurrent_inserts_of_one_claim_leave_one_row(migrated_url: str, clock: Clock):
    """Two daemons sharing a PostgreSQL queue record the same claim at the same moment."""
    import threading

    if not migrated_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): no race to lose")
    queues = [LocalQueue(migrated_url, clock=clock) for _ in range(2)]
    try:
        for attempt in range(20):  # fresh threads each time: their connections must not leak
            barrier = threading.Barrier(2)
            results: list = []
            errors: list = []

            def insert(
                queue: LocalQueue, remote_id: int, barrier=barrier, results=results, errors=errors
            ) -> None:
                barrier.wait()
                try:
                    results.append(
                        queue.store.insert_claimed(claimed(remote_id, clock), LEASE, clock.now)
                    )
                except Exception as exc:  # the test reports any
                    errors.append(exc)

            threads = [threading.Thread(target=insert, args=(q, 900 + attempt)) for q in queues]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert len({task.id for task, _ in results}) == 1
            assert sorted(created for _, created in results) == [False, True]
    finally:
        for queue in queues:
            queue.close()


def test_short_lived_threads_do_not_exhaust_the_pool(queue: LocalQueue):
    import threading

    def one_call() -> None:
        queue.enqueue("t", {"x": 1})

    for _ in range(100):  # far beyond the pool's size + overflow if connections leaked
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join()
    assert queue.status().tasks == {("t", "queued"): 100}


def test_the_lock_owner_is_named_locked_by_and_the_older_name_is_gone(migrated_url: str):
    with LocalQueue(migrated_url, locked_by="host-1-42") as named:
        named.enqueue("a", {"x": 1})
        named.enqueue("a", {"x": 2})
        assert named.dequeue().locked_by == "host-1-42"
        assert named.dequeue(locked_by="slot-7").locked_by == "slot-7"
        with pytest.raises(TypeError):
            LocalQueue(migrated_url, worker_id="host-1-43")  # type: ignore[call-arg]


# -- batches ---------------------------------------------------------------------------------
def test_enqueue_many_is_one_transaction_all_or_nothing(queue: LocalQueue, clock: Clock):
    added = queue.enqueue_many([("a", {"i": 1}), ("b", {"i": 2})], priority=3, metadata={"m": 1})
    assert [(t.type, t.params, t.priority, t.metadata) for t in added] == [
        ("a", {"i": 1}, 3, {"m": 1}),
        ("b", {"i": 2}, 3, {"m": 1}),
    ]
    assert added[0].id < added[1].id and added[0].created_at == clock.now
    assert [queue.get(t.id) for t in added] == added  # what it returns is what is stored
    with pytest.raises(ValidationError):
        queue.enqueue_many([("a", {"i": 3}), ("a", {"bad": float("nan")})])
    assert queue.status().tasks == {("a", "queued"): 1, ("b", "queued"): 1}
    assert queue.enqueue_many([]) == []


def test_a_batch_with_metadata_of_its_own_per_task_stores_each_one(queue: LocalQueue, clock: Clock):
    shared, own = {"batch": 1}, {"batch": 2}
    items = [("a", {"i": 1}, 0, shared), ("a", {"i": 2}, 1, own), ("b", {}, 2, shared)]
    items.append(("b", {"i": 4}, 3, None))
    added = queue.store.enqueue_many(items, clock.now)
    assert [t.metadata for t in added] == [shared, own, shared, {}]
    assert [queue.get(t.id) for t in added] == added


def test_metadata_encoded_once_a_batch_is_never_taken_for_another_dict():
    """The batch's encoded metadata is found by the dict's identity: a dict freed
    meanwhile must not lend its id (and its text) to the next one."""
    texts: dict[int, Any] = {}
    written = [_enqueue_row(("t", {}, 0, {"n": n}), "now", texts)[3] for n in range(6)]
    assert written == [f'{{"n": {n}}}' for n in range(6)]


def test_rows_bound_by_position_name_their_parameters_in_the_statements_order(
    queue: LocalQueue,
):
    """A batch binds its rows as tuples: an order that is not the SQL's would write one
    column's value into another, so it is refused before anything runs."""
    statement = queue.store.sql.enqueue_rows
    swapped = (ENQUEUE_ORDER[1], ENQUEUE_ORDER[0], *ENQUEUE_ORDER[2:])
    with pytest.raises(ValueError, match="not"):
        statement.positional(swapped)
    added = queue.enqueue_many([("a", {"i": 1}), ("b", {"i": 2})], priority=3, metadata={"m": 1})
    assert [(t.type, t.params, t.priority, t.metadata) for t in added] == [
        ("a", {"i": 1}, 3, {"m": 1}),
        ("b", {"i": 2}, 3, {"m": 1}),
    ]
    assert [queue.get(t.id) for t in added] == added


def test_a_task_is_a_frozen_value_that_pickles_and_copies(queue: LocalQueue):
    task = queue.enqueue("a", {"i": 1}, metadata={"m": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.priority = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(task)) == task
    raised = dataclasses.replace(task, priority=5)
    assert (raised.priority, raised.params, task.priority) == (5, {"i": 1}, 0)
    assert queue.dequeue() == dataclasses.replace(
        task, status="running", attempts=1, locked_by="worker-a",
        locked_until=queue.get(task.id).locked_until, started_at=queue.get(task.id).started_at,
    )  # fmt: skip


def test_dequeue_many_takes_the_best_first_and_respects_types_and_leases(
    queue: LocalQueue, clock: Clock
):
    low = queue.enqueue("a", {"i": 1})
    high = queue.enqueue("a", {"i": 2}, priority=5)
    queue.enqueue("b", {"i": 3}, priority=9)
    add_remote(queue, clock, 7, task_type="a", age=LEASE - 1)  # lease about to run out
    taken = queue.dequeue_many(5, types="a")
    assert [t.id for t in taken] == [high.id, low.id]
    assert all(t.status == "running" and t.locked_by == "worker-a" for t in taken)
    assert all(t.attempts == 1 for t in taken)
    assert queue.dequeue_many(0) == []
    assert [t.type for t in queue.dequeue_many(5)] == ["b"]


def test_complete_many_refuses_only_tasks_no_longer_held(queue: LocalQueue, clock: Clock):
    for remote_id in (1, 2, 3):
        add_remote(queue, clock, remote_id)
    first, second, third = queue.dequeue_many(3)
    queue.fail(second, "boom", retry=True)  # `second` is no longer held
    refused = queue.complete_many([(second, {"n": 2}), (third, {"n": 3}), (first, None)])
    assert [str(e).split(":")[0] for e in refused] == [f"cannot complete task {second.id}"]
    assert queue.get(second.id).status == "queued"
    assert queue.get(third.id).status == "done" and queue.get(third.id).result == {"n": 3}
    assert queue.get(first.id).result == {}
    pending = queue.store.pending_outbox(clock.now, 10)
    assert [(row.task_id, row.payload) for row in pending] == [
        (third.id, {"result": {"n": 3}}),
        (first.id, {"result": {}}),
    ]


def test_complete_many_and_dequeue_is_the_batch_worker_loop(queue: LocalQueue, clock: Clock):
    for remote_id in range(1, 6):
        add_remote(queue, clock, remote_id)
    batch, done = queue.dequeue_many(2), 0
    while batch:
        refused, batch_next = queue.complete_many_and_dequeue(
            [(t, {"n": t.remote_id}) for t in batch], 2
        )
        assert refused == []
        done, batch = done + len(batch), batch_next
    assert done == 5
    assert queue.status().tasks == {("yt.scrape", "done"): 5}
    assert queue.status().outbox == {"pending": 5}
    with pytest.raises(ValidationError):
        queue.complete_many([(queue.get(1), {"x": object()})])
