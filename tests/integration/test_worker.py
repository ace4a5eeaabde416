"""bridge.Worker: handlers, failures, progress, heartbeat, graceful stop."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import timedelta

import pytest

from bridge import BridgeConfig, BridgeError, LocalQueue
from bridge.storage.migrations import upgrade
from bridge.worker import Worker, load_handler

from .conftest import Clock
from .helpers import wait_until


def square(params):
    return {"square": params["x"] ** 2}


def explode(params):
    raise ValueError(f"cannot handle {params['x']}")


def with_progress(params, context):
    context.progress(50, "half way")
    return None


@pytest.fixture
def local(tmp_path):
    url = str(tmp_path / "w.db")
    upgrade(url)
    with LocalQueue(config=BridgeConfig.load(env={}, db_url=url, lock_seconds=1)) as queue:
        yield queue


def test_results_and_failures_are_recorded(local: LocalQueue):
    ok = [local.enqueue("sq", {"x": i}) for i in range(5)]
    bad = local.enqueue("boom", {"x": 9})
    worker = Worker(local, {"sq": square, "boom": explode}, concurrency=2, poll_seconds=0.05)
    assert worker.run(max_tasks=6) == 6
    assert [local.get(t.id).result for t in ok] == [{"square": i * i} for i in range(5)]
    failed = local.get(bad.id)
    assert failed.status == "failed" and failed.error == "ValueError: cannot handle 9"
    assert (worker.counters.done, worker.counters.failed) == (5, 1)


def test_context_progress_and_non_dict_results(local: LocalQueue):
    task = local.enqueue("p", {"x": 1})
    other = local.enqueue("plain", {"x": 2})
    Worker(local, {"p": with_progress, "plain": lambda params: params["x"] + 1}).run(max_tasks=2)
    assert local.get(task.id).progress == 50 and local.get(task.id).result == {}
    assert local.get(other.id).result == {"result": 3}


def test_heartbeat_keeps_the_lock_of_a_long_task(tmp_path):
    url = str(tmp_path / "hb.db")
    upgrade(url)
    clock = Clock()
    lock = timedelta(seconds=1)
    config = BridgeConfig.load(env={}, db_url=url, lock_seconds=1)
    with LocalQueue(config=config, clock=clock) as queue:
        task = queue.enqueue("slow", {"x": 1})

        def renewed_now() -> bool:
            locked_until = queue.get(task.id).locked_until
            return locked_until is not None and locked_until >= clock.now + lock

        def slow(params):
            for _ in range(3):  # 2.7 s of the queue's clock, well past the 1 s lock
                clock.advance(0.9)
                assert wait_until(renewed_now, 10), f"lock not renewed by {clock.now}"
            assert queue.store.requeue_stale_locks(0, clock.now) == (0, 0)
            return {"slept": True}

        Worker(queue, {"slow": slow}).run(max_tasks=1)
        finished = queue.get(task.id)
    assert finished.status == "done", finished.error
    assert finished.attempts == 1


def test_stop_finishes_the_task_in_hand(local: LocalQueue):
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def long(params):
        ran.append(params["n"])
        started.set()
        assert release.wait(30), "the test never released the handler"
        return {"n": params["n"]}

    for n in range(3):
        local.enqueue("long", {"n": n})
    worker = Worker(local, {"long": long}, poll_seconds=0.05)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    assert started.wait(30), "the worker never started a task"
    worker.stop()  # while the handler is still running
    release.set()
    runner.join(30)
    assert not runner.is_alive(), "the worker did not stop after the task in hand"
    assert ran == [0]
    statuses = sorted(t.status for t in (local.get(i) for i in (1, 2, 3)))
    assert statuses == ["done", "queued", "queued"]


def test_load_handler_errors_are_clear():
    assert load_handler("tests.integration.test_worker:square") is square
    with pytest.raises(BridgeError, match=r"package\.module:function"):
        load_handler("nocolon")
    with pytest.raises(BridgeError, match="cannot import"):
        load_handler("no_such_module_xyz:f")
    with pytest.raises(BridgeError, match="has no attribute"):
        load_handler("tests.integration.test_worker:missing")


def test_worker_needs_handlers(local: LocalQueue):
    with pytest.raises(BridgeError):
        Worker(local, {})
    with pytest.raises(BridgeError):
        Worker(local, {"a": square}, concurrency=0)


def test_a_summary_line_says_what_was_done_and_how_fast(local: LocalQueue):
    summarised = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("last ") and " s: 2 done, 0 failed, 0 retried (" in message:
                summarised.set()

    def waits_for_summary(params):
        if params["n"] == 2:
            assert summarised.wait(30), "no summary line while a task was running"
        return {"n": params["n"]}

    for n in range(3):
        local.enqueue("s", {"n": n})
    ticks = iter(range(0, 10_000, 60))  # each look at the clock: one minute later
    seen, logger = Seen(), logging.getLogger("bridge.worker")
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        worker = Worker(
            local, {"s": waits_for_summary}, summary_seconds=60, clock=lambda: next(ticks)
        )
        assert worker.run(max_tasks=3) == 3
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert summarised.is_set()


def test_a_task_taken_with_a_result_as_the_worker_stops_goes_back_to_the_queue(tmp_path):
    """Storing a result takes the slot's next task in the same transaction. A stop that
    comes while that transaction waits for the write lock leaves the slot holding a
    task it will not run: it goes back to the queue at once, not when its lock runs out."""
    url = str(tmp_path / "back.db")
    upgrade(url)
    release = threading.Event()

    def first_waits(params):
        if params["n"] == 0:
            assert release.wait(30), "the test never released the handler"
        return {"n": params["n"]}

    with LocalQueue(config=BridgeConfig.load(env={}, db_url=url, lock_seconds=300)) as queue:
        first = queue.enqueue("t", {"n": 0}, priority=1)
        second = queue.enqueue("t", {"n": 1})
        worker = Worker(queue, {"t": first_waits}, poll_seconds=0.05)
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        assert wait_until(lambda: queue.get(first.id).status == "running", 10)
        blocker = sqlite3.connect(url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the result's transaction will wait for this
        try:
            release.set()
            time.sleep(0.3)  # the handler returned; its result waits for the write lock
            worker.stop()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        runner.join(30)
        assert not runner.is_alive()
        assert queue.get(first.id).status == "done"
        taken = queue.get(second.id)
        assert taken.status == "queued" and taken.locked_by is None, taken
        assert worker.counters.handed_back == 1
