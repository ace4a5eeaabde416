"""The thread engine's time limits: the handler runs on its slot's own thread, and one
watchman thread fails a task at its limit and lets the slot go on on a new thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bridge import BridgeConfigError, LocalQueue, TaskPolicy, Worker
from bridge.worker.time_limits import Overrun, Watchman

from .conftest import Clock
from .helpers import wait_until
from .test_local_queue import add_remote


def run_in_background(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_a_handler_past_its_limit_fails_its_task_and_its_late_result_is_dropped(
    queue: LocalQueue,
):
    """One slot: the slow handler's slot goes on with the quick tasks on a new thread
    while the old one is still in the handler; what the handler returns later is not
    stored, and its thread then ends instead of serving the slot a second time."""
    release = threading.Event()
    ran_on: dict[str, threading.Thread] = {}

    def handler(params: dict[str, Any]) -> dict[str, Any]:
        ran_on[params["kind"] + str(params.get("n", ""))] = threading.current_thread()
        if params["kind"] == "slow":
            release.wait(30)
            return {"late": True}
        return {"n": params["n"]}

    slow = queue.enqueue("t", {"kind": "slow"})
    quick = [queue.enqueue("t", {"kind": "quick", "n": n}) for n in range(3)]
    worker = Worker(
        queue, {"t": handler}, poll_seconds=0.01, default_policy=TaskPolicy(time_limit=0.3)
    )
    runner = run_in_background(worker)
    try:
        assert wait_until(lambda: all(queue.get(t.id).status == "done" for t in quick), every=0.01)
        failed = queue.get(slow.id)
        assert failed.status == "failed" and (failed.error or "").startswith(
            "timed out after 0.3 s"
        )
        stuck = ran_on["slow"]
        assert stuck.is_alive() and stuck is not ran_on["quick0"]  # the slot went on without it
        release.set()
        assert wait_until(lambda: not stuck.is_alive(), every=0.01), (
            "the old thread ends with its handler"
        )
        time.sleep(0.1)
        after = queue.get(slow.id)
        assert (after.status, after.result) == ("failed", None)
        assert (worker.counters.done, worker.counters.failed) == (3, 1)
        # The slot has one thread serving it again, not two.
        assert len([t for t in threading.enumerate() if t.name == "bridge-worker-0"]) == 1
        late = queue.enqueue("t", {"kind": "quick", "n": 9})
        assert wait_until(lambda: queue.get(late.id).status == "done", every=0.01)
    finally:
        release.set()
        worker.stop()
        runner.join(10)
    assert not runner.is_alive()


def test_handlers_run_on_their_slots_own_threads(queue: LocalQueue, clock: Clock):
    """A remote task runs under its lease's limit on the slot's thread: no helper
    thread, no thread switch a task."""
    add_remote(queue, clock, 1)
    names: list[str] = []
    worker = Worker(queue, {"yt.scrape": lambda p: names.append(threading.current_thread().name)})
    assert worker.run(max_tasks=1) == 1
    assert names == ["bridge-worker-0"]


def test_a_task_whose_lease_is_spent_fails_without_its_handler_starting(
    queue: LocalQueue, clock: Clock
):
    add_remote(queue, clock, 2)  # lease 300 s, margin 30 s
    task = queue.store.get_task_by_remote_id(2)
    assert task is not None
    started: list[int] = []
    worker = Worker(queue, {"yt.scrape": lambda p: started.append(1)})
    held = queue.dequeue(["yt.scrape"], locked_by="test")
    assert held is not None and held.id == task.id
    clock.advance(275)  # past the lease less the margin
    assert worker.core.time_limit(held) == 0.0
    ran = worker.engine._call(0, held, None, 0.0, 0.0)  # type: ignore[union-attr]
    assert ran is not None and ran.kind == "timeout" and started == []


def test_the_watchman_does_not_wake_for_each_task(queue: LocalQueue, clock: Clock):
    """Every remote task has a limit (its lease). Tasks whose deadlines come after the one
    the watchman sleeps until do not wake it: 200 tasks, a few wake-ups."""
    for remote_id in range(1, 201):
        add_remote(queue, clock, remote_id)
    worker = Worker(queue, {"yt.scrape": lambda p: None}, concurrency=2)
    assert worker.run(max_tasks=200) == 200
    assert worker.engine.watchman.wakes <= 5  # type: ignore[union-attr]


def test_an_earlier_deadline_wakes_the_watchman():
    taken: list[Overrun] = []

    def on_overrun(call: Overrun) -> None:
        taken.append(call)
        assert call.replaced is not None
        call.replaced.set()

    watchman = Watchman(on_overrun)
    try:
        long = Overrun(0, 100.0, "long", 0.0)
        watchman.watch(long)
        short = Overrun(1, 0.05, "short", 0.0)
        watchman.watch(short)
        assert wait_until(lambda: taken == [short], 2.0, 0.01)
        assert watchman.returned(short) is False  # its slot went on without it
        assert watchman.returned(long) is True  # returned in time: still its slot's
        assert taken == [short]
    finally:
        watchman.close()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_hung_slot_per_overrun_and_the_rest_keep_their_threads(
    queue: LocalQueue, concurrency: int
):
    """Every slot whose handler hangs is taken over once; the worker keeps
    ``concurrency`` live slot threads, and stops within its grace without waiting
    for the hung handlers."""
    hang = threading.Event()

    def handler(params: dict[str, Any]) -> None:
        if params["hang"]:
            hang.wait(30)

    hung = [queue.enqueue("t", {"hang": True}) for _ in range(concurrency)]
    worker = Worker(
        queue,
        {"t": handler},
        concurrency=concurrency,
        poll_seconds=0.01,
        grace_seconds=5.0,
        default_policy=TaskPolicy(time_limit=0.2),
    )
    runner = run_in_background(worker)
    try:
        assert wait_until(lambda: all(queue.get(t.id).status == "failed" for t in hung), every=0.01)
        after = [queue.enqueue("t", {"hang": False}) for _ in range(5)]
        assert wait_until(lambda: all(queue.get(t.id).status == "done" for t in after), every=0.01)
        started = time.monotonic()
        worker.stop()
        runner.join(10)
        assert not runner.is_alive() and time.monotonic() - started < 2.0
    finally:
        hang.set()


def test_a_limit_longer_than_the_platform_can_wait_still_leaves_the_others_kept(
    queue: LocalQueue,
):
    """A deadline centuries away is waited for in slices: the watchman (every limit's
    keeper) must not die of it, and the next short limit is still kept."""
    release = threading.Event()

    def handler(params: dict[str, Any]) -> None:
        if params["slow"]:
            release.wait(30)
        else:
            time.sleep(0.3)

    big = queue.enqueue("big", {"slow": False})
    small = queue.enqueue("small", {"slow": True})
    policies = {"big": TaskPolicy(time_limit=1e10), "small": TaskPolicy(time_limit=0.3)}
    worker = Worker(queue, {"big": handler, "small": handler}, poll_seconds=0.01, policies=policies)
    runner = run_in_background(worker)
    try:
        assert wait_until(lambda: queue.get(small.id).status == "failed", 5.0, 0.01)
        assert queue.get(big.id).status == "done"
        assert worker.engine.watchman._thread.is_alive()  # type: ignore[union-attr]
    finally:
        release.set()
        worker.stop()
        runner.join(10)


@pytest.mark.parametrize("limit", [float("inf"), float("nan"), -1.0, True])
def test_a_limit_that_is_not_a_finite_number_of_seconds_is_refused(limit: float):
    with pytest.raises(BridgeConfigError, match="time_limit must be a finite number"):
        TaskPolicy(time_limit=limit)


def test_without_a_thread_to_take_the_slot_over_the_task_is_failed_all_the_same(
    queue: LocalQueue,
):
    """A process at its limit of threads: the watchman fails the task itself, and the
    old thread serves the slot again once its handler returns; later limits hold."""
    release = threading.Event()
    ran: list[str] = []

    def handler(params: dict[str, Any]) -> dict[str, Any]:
        ran.append(params["name"])
        if params["name"] == "slow":
            release.wait(30)
            return {"late": True}
        if params["name"] == "slow-again":
            time.sleep(1.0)
        return {"name": params["name"]}

    slow = queue.enqueue("t", {"name": "slow"})
    worker = Worker(
        queue, {"t": handler}, poll_seconds=0.01, default_policy=TaskPolicy(time_limit=0.3)
    )
    engine: Any = worker.engine
    make_thread = engine._thread
    refused: list[int] = []

    def no_new_thread_once(slot: int, target: Any, *args: Any) -> threading.Thread:
        thread = make_thread(slot, target, *args)
        if target == engine._after_overrun and not refused:
            refused.append(slot)

            def start() -> None:
                raise RuntimeError("can't start new thread")

            thread.start = start  # type: ignore[method-assign]
        return thread

    engine._thread = no_new_thread_once
    runner = run_in_background(worker)
    try:
        assert wait_until(lambda: queue.get(slow.id).status == "failed", 5.0, 0.01)
        assert refused == [0]
        quick = queue.enqueue("t", {"name": "quick"})
        time.sleep(0.2)
        assert queue.get(quick.id).status == "queued"  # the slot's one thread is busy
        release.set()  # the old thread comes back and serves the slot
        assert wait_until(lambda: queue.get(quick.id).status == "done", 5.0, 0.01)
        assert queue.get(slow.id).result is None  # its late result is dropped
        again = queue.enqueue("t", {"name": "slow-again"})  # the watchman still keeps limits
        assert wait_until(lambda: queue.get(again.id).status == "failed", 5.0, 0.01)
    finally:
        release.set()
        worker.stop()
        runner.join(10)
    assert not runner.is_alive()
