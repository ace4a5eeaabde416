"""Network storms against the running daemon: its real scheduler threads, a worker
running handlers, and the emulator over HTTP, one storm after another:

5xx bursts, a 429 storm with Retry-After, latency spikes beyond the client's
timeout (answers lost after the server committed), and an outage with the
server gone from its port (STORM_OUTAGE_SECONDS, default 8; ``--soak``: 120).

At the end: every task completed remotely once, with its worker's result; no
outbox row pending or dead; no request on a path before the Retry-After of a
429 on that path ran out; no job of the daemon overlapping itself although
ticks ran far longer than their interval.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.jobs import DaemonJobs
from bridge.daemon.service import Daemon
from bridge.storage.migrations import upgrade
from bridge.worker import Worker
from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

from ..integration.helpers import wait_until

pytestmark = pytest.mark.integration
TYPE = "storm.work"
WAVE = 12
OUTAGE_SECONDS = float(os.environ.get("STORM_OUTAGE_SECONDS", "8"))
RETRY_AFTER = 1
JOBS = ("pull", "push", "reap", "reconcile")


def handler(params: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.05)
    return {"n": params["n"], "double": params["n"] * 2}


class TickLog:
    """When each of the daemon's jobs ran: (start, end) per job, to check overlaps."""

    def __init__(self) -> None:
        self.intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._lock = threading.Lock()

    def wrap(self, name: str, tick: Callable[..., Any]) -> Callable[..., Any]:
        def timed(now: datetime, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return tick(now, *args, **kwargs)
            finally:
                with self._lock:
                    self.intervals[name].append((started, time.monotonic()))

        return timed

    def overlaps(self) -> list[str]:
        found = []
        for name, runs in self.intervals.items():
            for (s1, e1), (s2, e2) in itertools.pairwise(sorted(runs)):
                if s2 < e1:
                    found.append(f"{name}: [{s1:.3f}, {e1:.3f}] and [{s2:.3f}, {e2:.3f}]")
        return found

    def longest(self, name: str) -> float:
        return max((end - start for start, end in self.intervals[name]), default=0.0)


def early_requests_after_429(server: EmulatorServer) -> list[str]:
    """Requests on a path sent after a 429 on that path was answered and before its
    Retry-After ran out (one already in flight beside the refused one could not know)."""
    refusals: dict[str, list[float]] = {}
    for record in server.requests:
        if record.status == 429:
            refusals.setdefault(record.path, []).append(record.answered)
    early = []
    for record in server.requests:
        for answered in refusals.get(record.path, []):
            if answered + 0.05 < record.at < answered + RETRY_AFTER - 0.05:
                wait = answered + RETRY_AFTER - record.at
                early.append(f"{record.method} {record.path} {wait:.2f} s early")
    return early


@dataclass
class Storm:
    """The storm's phases, each a wave of tasks through one fault, each fully delivered."""

    server: EmulatorServer
    queue: LocalQueue
    gate: threading.Event  # the workers' handler runs only while it is open
    wave: Callable[[], None]
    remote_done: Callable[[], int]
    created: Callable[[], int]

    def _all_done(self, phase: str, seconds: float = 30) -> None:
        assert wait_until(lambda: self.remote_done() == self.created(), seconds), f"after {phase}"

    def five_hundreds(self) -> None:
        self.wave()  # 5xx burst on every path
        self.server.faults.fail_next(25, status=503)
        assert wait_until(lambda: self.server.faults.pending() == 0, 30)
        self._all_done("5xx burst")

    def deadlocks(self) -> None:
        self.wave()  # the real server's deadlock 500s: rolled back, safe to send again
        self.server.faults.deadlock(6, path="/tasks/*/complete")
        self.server.faults.deadlock(4, path="/tasks/claim")
        assert wait_until(lambda: self.server.faults.pending() == 0, 30)
        self._all_done("deadlock burst")

    def rate_limits(self) -> None:
        self.wave()  # 429 storm
        self.server.faults.fail_next(15, status=429, headers={"Retry-After": str(RETRY_AFTER)})
        assert wait_until(lambda: self.server.faults.pending() == 0, 60)
        self._all_done("429 storm")

    def latency(self) -> None:
        self.wave()  # latency beyond the client's timeout: answers lost after commit
        self.server.faults.latency = 0.8
        time.sleep(3)  # the fault's length, not a wait for an event
        self.server.faults.latency = 0.0
        self._all_done("latency")

    def outage(self) -> None:
        """Claimed tasks are finished locally while the server is gone. The gate holds
        the workers until the wave is claimed and the server is down."""
        self.gate.clear()
        self.wave()
        assert wait_until(lambda: self.queue.status().tasks.get((TYPE, "queued"), 0) > 0, 30), (
            "the outage wave was never claimed"
        )
        done_before = self.queue.status().tasks.get((TYPE, "done"), 0)
        with self.server.outage():
            down_at = time.monotonic()
            self.gate.set()

            def finished_offline() -> bool:
                now = self.queue.status()
                return (
                    now.tasks.get((TYPE, "done"), 0) > done_before
                    and now.outbox.get("pending", 0) > 0
                )

            assert wait_until(finished_offline, 30), (
                "workers finished nothing while the server was down",
                self.queue.status(),
            )
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))


@pytest.mark.timeout(120 + 2 * OUTAGE_SECONDS)
def test_storms_lose_nothing_and_change_remote_state_once(tmp_path):
    db = str(tmp_path / "q.db")
    upgrade(db)
    ticks = TickLog()
    with EmulatorServer() as server, LocalQueue(db) as queue:
        admin = server.client()
        admin.register_task_type(TYPE, "1", {"type": "object"})
        config = BridgeConfig.load(
            env={},
            db_url=db,
            types=[TYPE],
            prefetch=WAVE,
            poll_min_seconds=0.05,
            poll_max_seconds=0.3,
            push_interval_seconds=0.05,
            push_backoff_max_seconds=1.0,
            reap_interval_seconds=0.2,
            reconcile_interval_seconds=1.0,
        )
        client = TaskManagerClient(
            TaskManagerConfig.from_env(
                {},
                api_url=server.url,
                api_key=server.api_key,
                timeout=0.5,
                retry_attempts=2,
                backoff_base=0.05,
                retry_deadline=3,
            )
        )
        bridge = DaemonJobs(queue.store, client, config)
        for job in JOBS:
            tick_name = f"{job}_tick"
            setattr(bridge, tick_name, ticks.wrap(job, getattr(bridge, tick_name)))
        daemon = Daemon(bridge)
        gate = threading.Event()  # the handler runs only while it is open
        gate.set()

        def gated(params: dict[str, Any]) -> dict[str, Any]:
            if not gate.wait(60):
                raise RuntimeError("the test never opened the gate")
            return handler(params)

        worker = Worker(queue, {TYPE: gated}, concurrency=2, poll_seconds=0.05)
        worker_thread = threading.Thread(target=worker.run, daemon=True)
        created: list[tuple[int, int]] = []

        def wave() -> None:
            start = len(created)
            for n in range(start, start + WAVE):
                created.append((admin.create_task(TYPE, {"n": n}), n))

        def remote_done() -> int:
            return server.store.count_tasks("completed")

        daemon.start()
        worker_thread.start()
        storm = Storm(server, queue, gate, wave, remote_done, lambda: len(created))
        try:
            storm.five_hundreds()
            storm.deadlocks()
            storm.rate_limits()
            storm.latency()
            storm.outage()
            wave()  # new work after the outage
            assert wait_until(lambda: remote_done() == len(created), 60), "after outage"
        finally:
            server.faults.clear()
            gate.set()
            worker.stop()
            daemon.stop()
            worker_thread.join(10)

        counts = queue.status()
        pending, dead = queue.outbox("pending", 1000), queue.outbox("dead", 1000)
        wrong = [
            (task_id, task.status, task.result)
            for task_id, n in created
            if (task := admin.get_task(task_id)).status != "completed"
            or task.result != {"n": n, "double": 2 * n}
        ]
        accepted: dict[str, int] = defaultdict(int)
        for record in server.requests:
            if record.path.endswith("/complete") and record.status == 200:
                accepted[record.path] += 1

    by_status: dict[str, int] = defaultdict(int)
    for record in server.requests:
        by_status[str(record.status)] += 1
    print(
        f"tasks {len(created)}, outage {OUTAGE_SECONDS:.0f} s, requests by answer "
        f"{dict(sorted(by_status.items()))}, longest pull tick {ticks.longest('pull'):.2f} s, "
        f"ticks { ({job: len(ticks.intervals[job]) for job in JOBS}) }, overlaps "
        f"{len(ticks.overlaps())}, accepted completions per task "
        f"{set(accepted.values())}"
    )
    assert wrong == [], wrong[:5]
    assert pending == [] and dead == [], (counts.outbox, [d.last_error for d in dead[:3]])
    assert {path: n for path, n in accepted.items() if n > 1} == {}, "completed twice"
    assert len(accepted) == len(created)
    assert {"503", "429", "500"} <= set(by_status)
    assert early_requests_after_429(server) == []
    assert ticks.overlaps() == []
    # Under load: a pull tick outlived its interval many times over (it could have
    # overlapped itself), and every job kept running.
    assert ticks.longest("pull") > 10 * config.poll_min_seconds
    assert all(len(ticks.intervals[job]) > 3 for job in JOBS)
