"""Another process's commit wakes an idle worker and starts a push (SQLite).

Polling is set slow (5 s) so that only the wake-up can explain a pickup or a
delivery within the bound; PostgreSQL has no such signal and keeps polling.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from bridge import BridgeConfig, LocalQueue, Worker
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.storage.changes import ChangeWatch
from bridge.storage.migrations import upgrade
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from .helpers import wait_until

pytestmark = pytest.mark.integration
SLOW_POLL = 5.0


@contextlib.contextmanager
def watched(url: str) -> Iterator[tuple[LocalQueue, ChangeWatch]]:
    """A fresh queue at ``url`` and a started watch on it (looking every 2 ms)."""
    upgrade(url)
    with LocalQueue(url) as queue:
        watch = ChangeWatch(queue.store.engine, interval=0.002).start()
        try:
            yield queue, watch
        finally:
            watch.close()


def test_the_watch_counts_commits_of_other_connections_only(tmp_path):
    url = str(tmp_path / "w.db")
    with watched(url) as (queue, watch):
        before = watch.generation
        queue.enqueue("t", {"x": 1})  # this process, another connection: a change
        assert watch.wait(before, 5.0) > before
        quiet = watch.generation
        time.sleep(0.1)
        assert watch.generation == quiet  # nothing committed: no wake-up
        # Another process's commit is seen the same way.
        code = f"from bridge import LocalQueue\nLocalQueue({url!r}).enqueue('t', {{'x': 2}})"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert watch.wait(quiet, 5.0) > quiet


def test_the_watch_rests_while_nobody_waits_and_a_commit_meanwhile_wakes_the_next_waiter(
    tmp_path,
):
    """No reads (no timed wake-ups) while no caller waits and no listener is registered;
    a commit made during the rest is still seen by the first waiter, at once."""
    with watched(str(tmp_path / "rest.db")) as (queue, watch):
        resting = watch.generation
        queue.enqueue("t", {"x": 1})
        time.sleep(0.1)
        assert watch.generation == resting  # nobody waited: nothing was read
        started = time.monotonic()
        assert watch.wait(resting, 5.0) > resting
        assert time.monotonic() - started < 1.0
        heard: list[int] = []
        watch.on_change(lambda: heard.append(watch.generation))
        queue.enqueue("t", {"x": 2})
        assert wait_until(lambda: bool(heard), 5, 0.01)  # a listener keeps it looking


def test_the_watch_reads_less_often_once_commits_stop(tmp_path):
    """While commits come the watch reads at its interval; a quarter of a second after
    the last one, at most every 20 ms. An idle daemon's own bookkeeping commits every
    second or two: a longer quiet period kept an idle worker's watch at its fast pace."""
    with watched(str(tmp_path / "quiet.db")) as (queue, watch):  # interval: 2 ms
        before = watch.generation
        queue.enqueue("t", {"x": 1})
        assert watch.wait(before, 5.0) > before
        waiter = threading.Thread(target=watch.wait, args=(watch.generation, 3.0), daemon=True)
        waiter.start()  # someone waits: the watch keeps reading
        time.sleep(0.3)
        reads = watch.reads
        time.sleep(1.0)
        quiet_reads = watch.reads - reads
        waiter.join(5)
    # At 2 ms for the second after the commit (as before), this was some 350 reads.
    assert quiet_reads <= 75, quiet_reads


def test_one_commit_alone_leaves_a_quiet_watch_quiet_and_a_stream_speeds_it(tmp_path):
    """An idle daemon's bookkeeping commits now and then: each alone kept an idle
    worker's watch at its fast pace for a quarter of a second (a third of its reads).
    Two commits close together are a stream, and the watch looks at its pace again."""
    with watched(str(tmp_path / "alone.db")) as (queue, watch):  # interval: 2 ms
        done = threading.Event()

        def wait_on() -> None:  # someone waits all along: the watch keeps reading
            while not done.is_set():
                watch.wait(watch.generation, 0.5)

        waiter = threading.Thread(target=wait_on, daemon=True)
        waiter.start()
        time.sleep(0.4)  # quiet by now: a read every 20 ms
        reads = watch.reads
        queue.enqueue("t", {"x": 1})
        time.sleep(0.25)
        alone = watch.reads - reads  # at 2 ms, some 125
        queue.enqueue("t", {"x": 2})
        time.sleep(0.05)
        reads = watch.reads
        queue.enqueue("t", {"x": 3})  # a stream: 2 ms again
        time.sleep(0.2)
        streaming = watch.reads - reads
        done.set()
        waiter.join(5)
    assert alone <= 25, alone
    assert streaming >= 25, streaming  # at 20 ms, 10


def _done(params):
    return {"ok": True}


async def _done_async(params):
    return {"ok": True}


@pytest.mark.parametrize("handler", [_done, _done_async], ids=["threads", "async"])
def test_an_idle_worker_takes_a_new_task_at_once(tmp_path, handler):
    url = str(tmp_path / "idle.db")
    upgrade(url)
    with LocalQueue(url) as queue:
        worker = Worker(queue, {"t": handler}, poll_seconds=SLOW_POLL)
        runner = threading.Thread(target=worker.run, kwargs={"max_tasks": 1}, daemon=True)
        runner.start()
        time.sleep(0.5)  # the worker has found nothing and waits (up to 5 s)
        with LocalQueue(url) as producer:
            task = producer.enqueue("t", {"x": 1})
            enqueued = time.monotonic()
            assert wait_until(lambda: producer.get(task.id).status == "done", SLOW_POLL - 1)
        picked_within = time.monotonic() - enqueued
        runner.join(10)
    assert picked_within < SLOW_POLL / 2, f"took {picked_within:.2f} s: no wake-up"


@contextlib.contextmanager
def running_daemon(
    url: str, server: EmulatorServer, **settings: Any
) -> Iterator[tuple[LocalQueue, Daemon]]:
    """A daemon for type ``t`` on a fresh queue at ``url``, started, stopped after."""
    upgrade(url)
    config = BridgeConfig.load(env={}, db_url=url, types=["t"], **settings)
    client = TaskManagerClient(
        TaskManagerConfig.from_env({}, api_url=server.url, api_key=server.api_key)
    )
    with LocalQueue(url) as queue:
        daemon = Daemon(DaemonJobs(queue.store, client, config))
        daemon.start()
        try:
            yield queue, daemon
        finally:
            daemon.stop()


def test_a_stored_result_is_pushed_without_waiting_for_the_interval(tmp_path):
    url = str(tmp_path / "push.db")
    with EmulatorServer() as server:
        admin = server.client()
        admin.register_task_type("t", "1", {"type": "object"})
        task_id = admin.create_task("t", {"x": 1})
        slow = {"push_interval_seconds": SLOW_POLL * 4, "reconcile_interval_seconds": 600}
        with running_daemon(url, server, **slow) as (queue, _):
            assert wait_until(lambda: queue.status().tasks.get(("t", "queued")) == 1, 10)
            time.sleep(0.5)  # the first pushes (at start) are behind us
            with LocalQueue(url) as worker_side:
                worker_side.complete(worker_side.dequeue("t"), {"done": True})
            stored = time.monotonic()
            assert wait_until(lambda: admin.get_task(task_id).status == "completed", 10)
            pushed_within = time.monotonic() - stored
    assert pushed_within < SLOW_POLL, f"took {pushed_within:.2f} s: no push on change"


def test_an_idle_daemon_looks_for_commits_ten_times_a_second(tmp_path):
    """Its watch looks every push gap (20 ms) while results come, and as often as the
    interval push runs (0.1 s) once they stop: 50 wake-ups a second idle were a third
    of the idle daemon's."""
    with EmulatorServer() as server:
        server.client().register_task_type("t", "1", {"type": "object"})
        with running_daemon(str(tmp_path / "idle.db"), server) as (_, daemon):
            time.sleep(1.0)  # started, and quiet
            reads = daemon._changes.reads
            time.sleep(1.0)
            idle_reads = daemon._changes.reads - reads
    assert 5 <= idle_reads <= 15, idle_reads


def test_stop_waits_for_a_push_under_way_before_its_last_push(tmp_path):
    url = str(tmp_path / "stop.db")
    upgrade(url)
    with EmulatorServer() as server:
        admin = server.client()
        admin.register_task_type("t", "1", {"type": "object"})
        task_id = admin.create_task("t", {"x": 1})
        config = BridgeConfig.load(
            env={},
            db_url=url,
            types=["t"],
            push_interval_seconds=SLOW_POLL * 4,
            reconcile_interval_seconds=600,
        )
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, backoff_base=0.05
            )
        )
        with LocalQueue(url) as queue:
            daemon = Daemon(DaemonJobs(queue.store, client, config))
            daemon.start()
            stopper = threading.Thread(target=daemon.stop)
            try:
                assert wait_until(lambda: queue.status().tasks.get(("t", "queued")) == 1, 10)
                server.faults.hang_next(1, path="/tasks/*/complete")
                with LocalQueue(url) as worker_side:
                    worker_side.complete(worker_side.dequeue("t"), {"done": True})

                def sent() -> int:
                    return sum(1 for r in server.requests if r.path.endswith("/complete"))

                assert wait_until(lambda: sent() == 1, 10)  # the push on change, hanging
                stopper.start()
                time.sleep(0.5)
                before_release = sent()
                server.faults.release_hangs()
                stopper.join(30)
            finally:
                server.faults.release_hangs()
                if not stopper.is_alive() and not stopper.ident:
                    daemon.stop()
        assert not stopper.is_alive()
        assert before_release == 1  # no second push beside the one under way
        assert admin.get_task(task_id).status == "completed"


def test_a_slot_whose_result_found_nothing_queued_waits_without_looking_again(tmp_path):
    """Storing a result also looks for the slot's next task. When none was queued the
    slot goes straight to its wait: a look of its own (``any_queued``) comes only after
    a wait. Seen in the slot's statements and waits, in order."""
    url = str(tmp_path / "looks.db")
    upgrade(url)
    seen: list[str] = []  # the slot thread's: "stored", "look", "commit", "wait"

    def traced(dbapi_connection, _record, _proxy):
        def note(statement: str) -> None:
            if not threading.current_thread().name.startswith("bridge-worker"):
                return
            text = " ".join(statement.split())
            if text.startswith("SELECT tasks.id FROM tasks"):
                seen.append("look")
            elif text.startswith("UPDATE tasks SET status='done'"):
                seen.append("stored")
            elif text == "COMMIT":
                seen.append("commit")

        dbapi_connection.set_trace_callback(note)

    with LocalQueue(url) as queue:
        event.listen(queue.store.engine, "checkout", traced)
        for n in range(3):
            queue.enqueue("t", {"x": n})
        worker = Worker(queue, {"t": _done}, poll_seconds=SLOW_POLL)
        watch = worker.core.changes
        real_wait = watch.wait

        def noted_wait(generation: int, timeout: float) -> int:
            seen.append("wait")
            return real_wait(generation, timeout)

        watch.wait = noted_wait  # type: ignore[method-assign]
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        assert wait_until(lambda: seen.count("stored") == 3 and "wait" in seen, 10)
        worker.stop()
        runner.join(10)
    assert seen[0] == "look"  # an idle slot looks before it takes
    last_stored = len(seen) - 1 - seen[::-1].index("stored")
    after = seen[last_stored:]
    # Its transaction took no next task: once it committed, the slot waits, neither
    # looking nor beginning another transaction first.
    assert after[after.index("commit") + 1] == "wait", seen
