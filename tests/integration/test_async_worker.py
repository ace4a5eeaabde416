"""Async handlers: many at once on one event loop in one thread, every worker promise kept.

Real SQLite files; the worker runs in a thread of the test and is stopped by
``max_tasks`` or ``stop()``. (The process-level promises, with async handlers
too, are in test_worker_runtime.py.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from bridge import BridgeConfig, LocalQueue, Retry, RetryPolicy, TaskPolicy
from bridge.storage.migrations import upgrade
from bridge.worker import AsyncTaskContext, Worker

from .conftest import Clock

pytestmark = pytest.mark.integration


@pytest.fixture
def local(tmp_path):
    url = str(tmp_path / "aw.db")
    upgrade(url)
    with LocalQueue(config=BridgeConfig.load(env={}, db_url=url, lock_seconds=2)) as queue:
        yield queue


def test_handlers_run_concurrently_on_one_thread(local: LocalQueue):
    width = 40
    ids = [local.enqueue("io", {"n": n}).id for n in range(width)]
    threads: set[int] = set()
    in_flight = 0
    peak = 0
    all_in = asyncio.Event()

    async def io(params: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, peak
        threads.add(threading.get_ident())
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == width:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 20)  # returns only once all 40 wait at once
        in_flight -= 1
        return {"n": params["n"]}

    before = threading.active_count()
    worker = Worker(local, {"io": io}, concurrency=width, poll_seconds=0.05)
    assert worker.run(max_tasks=width) == width
    assert peak == width and len(threads) == 1 and threading.get_ident() not in threads
    assert [local.get(i).result for i in ids] == [{"n": n} for n in range(width)]
    assert threading.active_count() <= before + 1  # no thread per handler was left
    assert "pool asyncio" in worker.describe()


def test_progress_from_a_coroutine_and_non_dict_results(local: LocalQueue):
    seen: list[Any] = []

    async def with_progress(params: dict[str, Any], context: AsyncTaskContext) -> None:
        seen.append(context)
        await context.progress(50, "half way")

    task = local.enqueue("p", {"x": 1})
    other = local.enqueue("plain", {"x": 2})

    async def plus_one(params: dict[str, Any]) -> int:
        return int(params["x"]) + 1

    Worker(local, {"p": with_progress, "plain": plus_one}).run(max_tasks=2)
    assert isinstance(seen[0], AsyncTaskContext)
    assert local.get(task.id).progress == 50 and local.get(task.id).result == {}
    assert local.get(other.id).result == {"result": 3}


def test_blocking_and_async_handlers_share_one_worker(local: LocalQueue):
    def blocking(params: dict[str, Any], context: Any) -> dict[str, Any]:
        context.progress(10)
        return {"thread": threading.get_ident()}

    async def coroutine(params: dict[str, Any]) -> dict[str, Any]:
        return {"thread": threading.get_ident()}

    a = local.enqueue("blocking", {"x": 1})
    b = local.enqueue("coroutine", {"x": 1})
    Worker(local, {"blocking": blocking, "coroutine": coroutine}, concurrency=2).run(max_tasks=2)
    ran_a, ran_b = local.get(a.id), local.get(b.id)
    assert (ran_a.status, ran_b.status, ran_a.progress) == ("done", "done", 10)
    assert ran_a.result["thread"] != ran_b.result["thread"]  # the blocking one, off the loop


def test_a_bad_result_fails_its_task_and_not_its_batch(local: LocalQueue):
    async def handler(params: dict[str, Any]) -> Any:
        await asyncio.sleep(0.05)  # all finish together, into one batch
        return {"bad": {1, 2}} if params["n"] == 3 else {"n": params["n"]}

    ids = [local.enqueue("t", {"n": n}).id for n in range(8)]
    worker = Worker(local, {"t": handler}, concurrency=8)
    worker.run(max_tasks=8)
    statuses = {n: local.get(i).status for n, i in enumerate(ids)}
    assert statuses == {n: ("failed" if n == 3 else "done") for n in range(8)}
    assert "result refused: results.bad: set is not JSON" in (local.get(ids[3]).error or "")
    assert (worker.counters.done, worker.counters.failed) == (7, 1)


def test_exits_interrupts_and_time_limits_end_their_task_only(local: LocalQueue):
    async def handler(params: dict[str, Any]) -> Any:
        kind = params["kind"]
        if kind == "exit":
            raise SystemExit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "hang":
            await asyncio.Event().wait()
        return {"ok": True}

    kinds = ["exit", "interrupt", "hang", "good", "good"]
    ids = [local.enqueue("t", {"kind": k}).id for k in kinds]
    policy = TaskPolicy(time_limit=0.3)
    worker = Worker(local, {"t": handler}, concurrency=5, default_policy=policy)
    assert worker.run(max_tasks=5) == 5
    errors = {k: local.get(i).error or "" for k, i in zip(kinds, ids, strict=True)}
    assert errors["exit"].startswith("SystemExit: 3 (the handler called sys.exit()")
    assert errors["interrupt"].startswith("KeyboardInterrupt")
    assert (
        errors["hang"]
        == "timed out after 0.3 s (time limit; the handler's coroutine was cancelled)"
    )
    assert [local.get(i).status for i in ids[3:]] == ["done", "done"]
    assert worker.counters.timed_out == 1


def test_retries_follow_the_types_policy(local: LocalQueue):
    runs: list[int] = []

    async def flaky(params: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        if len(runs) < 3:
            raise Retry("not yet")
        return {"runs": len(runs)}

    task = local.enqueue("t", {"x": 1})
    policy = TaskPolicy(retry=RetryPolicy(attempts=3, backoff=0))
    worker = Worker(local, {"t": flaky}, poll_seconds=0.01, default_policy=policy)
    assert worker.run(max_tasks=3) == 3
    after = local.get(task.id)
    assert (after.status, after.result, after.attempts) == ("done", {"runs": 3}, 3)
    assert worker.counters.retried == 2


def test_max_tasks_takes_no_more_than_it_may_run(local: LocalQueue):
    async def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {}

    for n in range(30):
        local.enqueue("t", {"n": n})
    worker = Worker(local, {"t": quick}, concurrency=10)
    assert worker.run(max_tasks=12) == 12
    counts = local.status().tasks
    assert (counts.get(("t", "done")), counts.get(("t", "queued"))) == (12, 18)


def test_a_result_whose_lock_was_lost_is_not_recorded(local: LocalQueue):
    runs: list[int] = []

    async def stolen(params: dict[str, Any], context: AsyncTaskContext) -> dict[str, Any]:
        runs.append(context.task.attempts)
        if len(runs) == 1:
            # Another worker's view: the lock ran out and the task went back to the queue.
            await asyncio.to_thread(local.release, context.task, "lock expired")
        return {"run": len(runs)}

    task = local.enqueue("t", {"x": 1})
    worker = Worker(local, {"t": stolen})
    worker.run(max_tasks=1)  # the refused result is not "handled": the second run is
    assert (worker.counters.not_recorded, worker.counters.done) == (1, 1)
    after = local.get(task.id)
    assert (after.status, after.result, runs) == ("done", {"run": 2}, [1, 2])


def test_heartbeats_keep_the_lock_of_a_long_coroutine(tmp_path):
    url = str(tmp_path / "hb.db")
    upgrade(url)
    clock = Clock()
    config = BridgeConfig.load(env={}, db_url=url, lock_seconds=1)
    with LocalQueue(config=config, clock=clock) as queue:
        task = queue.enqueue("slow", {"x": 1})

        def renewed_now() -> bool:
            locked_until = queue.get(task.id).locked_until
            return locked_until is not None and locked_until >= clock.now + timedelta(seconds=1)

        async def slow(params: dict[str, Any]) -> dict[str, Any]:
            for _ in range(3):  # 2.7 s of the queue's clock, well past the 1 s lock
                clock.advance(0.9)
                for _ in range(500):
                    if await asyncio.to_thread(renewed_now):
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError(f"lock not renewed by {clock.now}")
            return {"slept": True}

        Worker(queue, {"slow": slow}).run(max_tasks=1)
        finished = queue.get(task.id)
    assert (finished.status, finished.attempts) == ("done", 1), finished.error


def test_stop_lets_running_coroutines_finish_within_the_grace(local: LocalQueue):
    release = threading.Event()
    started = threading.Event()

    async def long(params: dict[str, Any]) -> dict[str, Any]:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return {"n": params["n"]}

    for n in range(3):
        local.enqueue("long", {"n": n})
    worker = Worker(local, {"long": long}, concurrency=1, poll_seconds=0.05)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    assert started.wait(30)
    worker.stop()
    release.set()
    runner.join(30)
    assert not runner.is_alive()
    assert sorted(t.status for t in (local.get(i) for i in (1, 2, 3))) == [
        "done",
        "queued",
        "queued",
    ]


def test_async_handlers_refuse_the_process_pool(local: LocalQueue):
    async def handler(params: dict[str, Any]) -> None:
        return None

    from bridge import BridgeError

    with pytest.raises(BridgeError, match="event loop: --pool process is for blocking"):
        Worker(local, {"t": handler}, pool="process")


def test_a_wrong_signature_and_a_handlers_own_cancellation_fail_their_task(local: LocalQueue):
    async def needs_three(params: dict[str, Any], context: Any, extra: Any) -> None:
        return None

    async def cancelled_child(params: dict[str, Any]) -> None:
        child = asyncio.ensure_future(asyncio.sleep(10))
        child.cancel()
        await asyncio.gather(child)  # raises the child's CancelledError in the handler

    a = local.enqueue("three", {"x": 1})
    b = local.enqueue("child", {"x": 1})
    worker = Worker(local, {"three": needs_three, "child": cancelled_child}, concurrency=2)
    assert worker.run(max_tasks=2) == 2
    assert local.get(a.id).status == "failed"
    assert "TypeError" in (local.get(a.id).error or "")
    assert (local.get(b.id).status, local.get(b.id).error) == ("failed", "CancelledError: ")


def test_a_handler_that_blocks_the_loop_does_not_time_out_the_others(
    local: LocalQueue, caplog: pytest.LogCaptureFixture
):
    async def handler(params: dict[str, Any]) -> dict[str, Any]:
        if params["kind"] == "blocks":
            await asyncio.sleep(0.1)  # the others are under way, their limits running
            time.sleep(1.0)  # the mistake: a blocking call in a coroutine
        else:
            await asyncio.sleep(0.3)
        return {"kind": params["kind"]}

    blocker = local.enqueue("t", {"kind": "blocks"})
    others = [local.enqueue("t", {"kind": "awaits"}) for _ in range(3)]
    policy = TaskPolicy(time_limit=0.5)
    worker = Worker(local, {"t": handler}, concurrency=4, default_policy=policy)
    caplog.set_level("WARNING", "bridge.worker")
    worker.run(max_tasks=4)
    assert [local.get(t.id).status for t in [blocker, *others]] == ["done"] * 4
    assert worker.counters.timed_out == 0 and worker.counters.handed_back >= 1
    assert "the event loop was blocked for" in caplog.text


def test_stuck_blocking_handlers_do_not_hold_back_the_rest(local: LocalQueue):
    release = threading.Event()

    def stuck(params: dict[str, Any]) -> None:
        release.wait(30)

    async def quick(params: dict[str, Any]) -> dict[str, Any]:
        return {"n": params["n"]}

    stuck_ids = [local.enqueue("stuck", {"n": n}).id for n in range(2)]
    quick_ids = [local.enqueue("quick", {"n": n}).id for n in range(3)]
    policy = TaskPolicy(time_limit=0.3)
    worker = Worker(local, {"stuck": stuck, "quick": quick}, concurrency=2, default_policy=policy)
    try:
        assert worker.run(max_tasks=5) == 5
    finally:
        release.set()
    assert [local.get(i).status for i in quick_ids] == ["done"] * 3
    assert all((local.get(i).error or "").startswith("timed out after 0.3 s") for i in stuck_ids)


def test_a_stop_while_taking_on_a_locked_database_keeps_the_grace(tmp_path):
    url = str(tmp_path / "locked.db")
    upgrade(url)
    config = BridgeConfig.load(env={}, db_url=url, busy_timeout_seconds=0.1)
    with LocalQueue(config=config) as queue:
        task = queue.enqueue("t", {"x": 1})
        started, release = threading.Event(), threading.Event()

        async def handler(params: dict[str, Any]) -> dict[str, Any]:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
            return {"finished": True}

        worker = Worker(queue, {"t": handler}, concurrency=2, grace_seconds=30, poll_seconds=0.05)
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        assert started.wait(30)
        holder = sqlite3.connect(url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the free slot's take meets the lock
        time.sleep(0.5)
        worker.stop()  # the take gives up; the running handler keeps its grace
        time.sleep(0.3)
        release.set()
        time.sleep(0.3)
        holder.execute("COMMIT")  # the result can be stored now
        holder.close()
        runner.join(30)
        assert not runner.is_alive()
        assert queue.get(task.id).status == "done", worker.counters.line()
        assert worker.counters.handed_back == 0 and worker.exit_code == 0


def test_progress_without_await_is_still_recorded(local: LocalQueue):
    async def forgetful(params: dict[str, Any], context: AsyncTaskContext) -> dict[str, Any]:
        context.progress(70, "forgot the await")
        await asyncio.sleep(0.2)
        return {}

    task = local.enqueue("t", {"x": 1})
    Worker(local, {"t": forgetful}).run(max_tasks=1)
    assert local.get(task.id).progress == 70


def test_a_plain_function_returning_a_coroutine_fails_its_task_saying_why(local: LocalQueue):
    async def real(params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def wrapper(params: dict[str, Any]) -> Any:  # a decorator without async def
        return real(params)

    async def other(params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    for handlers in ({"t": wrapper}, {"t": wrapper, "u": other}):  # thread, then async worker
        task = local.enqueue("t", {"x": 1})
        Worker(local, handlers).run(max_tasks=1)
        after = local.get(task.id)
        assert after.status == "failed"
        assert "the handler returned a coroutine; make it async def" in (after.error or "")


def test_max_tasks_zero_returns_at_once_and_negative_is_refused(local: LocalQueue):
    async def handler(params: dict[str, Any]) -> None:
        return None

    local.enqueue("t", {"x": 1})
    assert Worker(local, {"t": handler}).run(max_tasks=0) == 0
    assert local.status().tasks.get(("t", "queued")) == 1
    from bridge import BridgeError

    with pytest.raises(BridgeError, match="max_tasks"):
        Worker(local, {"t": handler}).run(max_tasks=-1)
