"""The daemon's decisions, each pinned directly: a scripted client, a settable clock, a
SQLite file copied from one migrated template (no server, no sleeping).

Each test names the decision it pins; docs/RELIABILITY.md lists the mutations of
these decisions that the tests kill (``scripts/mutation_check.py``).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bridge import BridgeConfig, LocalQueue
from bridge.daemon.delivery import Verdict, deliver
from bridge.daemon.jobs import DaemonJobs
from bridge.storage import Store
from bridge.storage.migrations import upgrade
from taskmanager import (
    ClaimedTask,
    CompletionResult,
    Task,
    TaskManagerAuthError,
    TaskManagerConflictError,
    TaskManagerConnectionError,
    TaskManagerNotFoundError,
    TaskManagerRateLimitError,
    TaskManagerServerError,
    TaskManagerValidationError,
)
from tests.in_flight import InFlight

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
TYPE = "t.work"
WORKER = "bridge-under-test"


@dataclass
class Clock:
    """Wall time for the jobs (``now``) and a monotonic time the fake network advances."""

    now: datetime = T0
    mono: float = 100.0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class FakeClient:
    """The part of ``TaskManagerClient`` the daemon uses, scripted per method.

    ``remote`` holds the claimable tasks per type; ``errors[method]`` are raised, in
    order, by that method's next calls; every call costs ``call_seconds`` of the
    monotonic clock (the network's time inside a tick).
    """

    clock: Clock
    remote: dict[str, list[int]] = field(default_factory=dict)
    errors: dict[str, list[Exception]] = field(default_factory=dict)
    log: list[tuple[str, Any]] = field(default_factory=list)  # (method, first argument)
    claimed_rows: list[Task] = field(default_factory=list)
    windows: dict[str, Any] = field(default_factory=dict)  # path -> RateLimitInfo
    lose_next_answer: bool = False
    lost_answers: int = 0
    orphans: list[int] = field(default_factory=list)
    call_seconds: float = 0.0
    answer_seconds: float | None = None  # what the client measured of the round trip
    config: Any = field(default_factory=lambda: SimpleNamespace(worker_id=WORKER))

    def _call(self, method: str, arg: Any) -> None:
        if len(self.log) > 10_000:
            raise AssertionError(f"runaway loop: over 10,000 calls, the last {method}({arg})")
        self.log.append((method, arg))
        self.clock.mono += self.call_seconds
        pending = self.errors.get(method)
        if pending:
            raise pending.pop(0)

    def called(self, method: str) -> list[Any]:
        return [arg for name, arg in self.log if name == method]

    def unanswered(self, path: str) -> int:
        return self.lost_answers

    def quiet_retries_while(self, condition: Any) -> None:
        self.quiet_retries = condition  # the daemon's outage: no retries to quiet here

    def claim_task(self, task_type: str, worker_id: str) -> ClaimedTask | None:
        self._call("claim", task_type)
        ids = self.remote.get(task_type)
        if ids and self.lose_next_answer:  # the server claims one, its answer never comes;
            self.lose_next_answer = False  # the client sends again and gets the next one
            self.orphans.append(ids.pop(0))
            self.lost_answers += 1
        if not ids:
            return None
        return ClaimedTask(ids.pop(0), task_type, {"n": 1}, 1, 0, worker_id, self.clock.now)

    def complete_task(self, task_id: int, result: Any, worker_id: str) -> CompletionResult:
        self._call("complete", task_id)
        return CompletionResult(id=task_id, status="completed")

    def fail_task(self, task_id: int, error: str, worker_id: str) -> CompletionResult:
        self._call("fail", task_id)
        return CompletionResult(id=task_id, status="pending (retry)")

    def update_progress(self, task_id: int, progress: int, message: Any, worker_id: str) -> None:
        self._call("progress", task_id)

    def list_tasks(
        self,
        status: str,
        task_type: str | None = None,
        *,
        page_size: int = 50,
        max_items: int | None = None,
    ) -> Iterator[Task]:
        self._call("list", status)
        if status == "pending":  # what the watch sees: the claimable tasks of each type
            rows = [Task(i, t, "pending") for t, ids in self.remote.items() for i in ids]
        else:
            rows = [row for row in self.claimed_rows if row.status == status]
        yield from [row for row in rows if task_type in (None, row.type)][:max_items]

    def rate_limit_for(self, path: str) -> Any:
        return self.windows.get(path)

    def fastest_answer_seconds(self) -> float | None:
        return self.answer_seconds

    def get_task(self, task_id: int) -> Task:
        self._call("get", task_id)
        return next(row for row in self.claimed_rows if row.id == task_id)

    # The daemon runs its claims and deliveries as steps (``client.calls``): here each
    # call's steps answer at once from the scripted method of the same name, looked up
    # when called so that a test's replacement of a method is what runs.
    runs_together = False  # the fan-out runs them on threads, as on the other libraries

    @property
    def calls(self) -> Any:
        return FakeCalls(self)

    def run(self, steps: Any) -> Any:
        try:
            steps.send(None)
        except StopIteration as done:
            return done.value
        raise AssertionError("a fake call's steps asked for I/O")


class FakeCalls:
    """``Calls`` over a ``FakeClient``: steps that never yield, each the fake's answer."""

    def __init__(self, client: FakeClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        def steps(*args: Any, **kwargs: Any) -> Any:
            if name == "complete_task" and len(args) > 2 and args[2] == "failed":
                task_id, error = args[0], kwargs.pop("error")
                return self._client.fail_task(task_id, error, **kwargs)
            return getattr(self._client, name)(*args, **kwargs)
            yield  # a generator that answers without I/O

        return steps


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "queue.db"
    upgrade(str(path))
    return path


@dataclass
class Rig:
    queue: LocalQueue
    store: Store
    client: FakeClient
    clock: Clock
    make: Callable[..., DaemonJobs]

    def finished_task(self, seconds: float) -> None:
        """A local task that ran for ``seconds`` (what the duration measure reads)."""
        self.queue.enqueue(TYPE, {"n": 1})
        task = self.queue.dequeue(TYPE)
        assert task is not None
        self.clock.advance(seconds)
        self.queue.complete(task, {})


@pytest.fixture
def rig(template: Path, tmp_path: Path) -> Iterator[Rig]:
    db = tmp_path / "queue.db"
    shutil.copy(template, db)
    clock = Clock()
    client = FakeClient(clock)
    with LocalQueue(str(db), clock=clock) as queue:

        def make(**settings: Any) -> DaemonJobs:
            values = {
                "types": [TYPE],
                "prefetch": 5,
                "workers": 2,
                "default_task_seconds": 1.0,
                "poll_min_seconds": 0.5,
                "poll_max_seconds": 8.0,
                **settings,
            }
            config = BridgeConfig.load(env={}, db_url=str(db), **values)
            return DaemonJobs(
                queue.store,
                client,  # type: ignore[arg-type]
                config,
                rng=random.Random(1),
                monotonic=lambda: clock.mono,
            )

        yield Rig(queue, queue.store, client, clock, make)


# -- claim limit -----------------------------------------------------------------------------
def test_claim_limit_is_prefetch_on_an_empty_queue(rig: Rig):
    assert rig.make(prefetch=5).claim_limit(TYPE) == 5


def test_claim_limit_subtracts_what_is_already_queued(rig: Rig):
    # 1 worker x (300 s lease - 30 s margin) / 10 s a task = 27 startable in time
    bridge = rig.make(prefetch=50, workers=1, default_task_seconds=10.0)
    assert bridge.claim_limit(TYPE) == 27
    for n in range(4):
        rig.queue.enqueue(TYPE, {"n": n})
    assert bridge.claim_limit(TYPE) == 23  # startable - queued, not startable


def test_claim_limit_follows_the_measured_duration(rig: Rig):
    bridge = rig.make(prefetch=50, workers=1, default_task_seconds=1.0)
    assert bridge.claim_limit(TYPE) == 50  # 270 startable at the default 1 s: prefetch bounds
    rig.finished_task(seconds=30.0)  # measured: 30 s a task -> 270 / 30 = 9
    assert bridge.claim_limit(TYPE) == 9


# -- pull ------------------------------------------------------------------------------------
def test_pull_claims_what_it_saw_pending_up_to_the_limit_and_no_empty_claim(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 9))
    bridge = rig.make(prefetch=3)
    assert bridge.pull_tick(rig.clock.now) == 3
    assert rig.client.called("claim") == [TYPE] * 3  # no claim beyond the limit
    rig.client.remote[TYPE] = [20]
    bridge = rig.make(prefetch=10)
    rig.client.log.clear()
    assert bridge.pull_tick(rig.clock.now) == 1
    assert rig.client.called("claim") == [TYPE]  # the one task seen: no empty claim after it


def test_a_blind_burst_stops_at_the_limit_and_at_the_first_empty_answer(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 9))
    bridge = rig.make(prefetch=3, watch_interval_seconds=0)
    assert bridge.pull_tick(rig.clock.now) == 3
    assert len(rig.client.called("claim")) == 3
    rig.client.remote[TYPE] = [20]
    bridge = rig.make(prefetch=10, watch_interval_seconds=0)
    rig.client.log.clear()
    assert bridge.pull_tick(rig.clock.now) == 1
    assert rig.client.called("claim") == [TYPE, TYPE]  # the one task, then the empty answer


def test_without_the_watch_idle_polling_doubles_up_to_the_cap_and_resets_on_work(rig: Rig):
    bridge = rig.make(poll_min_seconds=0.5, poll_max_seconds=4.0, watch_interval_seconds=0)
    waits = []
    for _ in range(6):
        before = len(rig.client.called("claim"))
        while len(rig.client.called("claim")) == before:  # step until the next poll
            rig.clock.advance(0.25)
            bridge.pull_tick(rig.clock.now)
        waits.append(bridge._pull_interval[TYPE])
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    rig.client.remote[TYPE] = [7]
    rig.clock.advance(4.0)
    assert bridge.pull_tick(rig.clock.now) == 1
    assert bridge._pull_interval[TYPE] == 0.5
    bridge.pull_tick(rig.clock.now)  # work came: polled again at once, not after 4 s
    assert len(rig.client.called("claim")) == 6 + 2 + 1


def test_a_failed_claim_of_one_type_does_not_stop_the_others(rig: Rig):
    rig.client.errors["claim"] = [TaskManagerServerError(500, "boom")]
    rig.client.remote["t.other"] = [5]
    bridge = rig.make(types=[TYPE, "t.other"])
    assert bridge.pull_tick(rig.clock.now) == 1
    assert rig.client.called("claim") == [TYPE, "t.other"]  # TYPE's probe failed; t.other seen


# -- the 429 pause, per job --------------------------------------------------------------------
def _rate_limited(retry_after: float) -> TaskManagerRateLimitError:
    return TaskManagerRateLimitError(429, "slow down", retry_after=retry_after)


# Which jobs a 429 in each job pauses: the server keeps a window per path, and claims,
# looks and reconcile's lists never share one with a task's completion path.
PAUSES = {"pull": {"pull", "reconcile"}, "reconcile": {"pull", "reconcile"}, "push": {"push"}}


@pytest.mark.parametrize("job", ["pull", "push", "reconcile"])
def test_a_429_pauses_its_job_for_retry_after_counted_from_the_429(rig: Rig, job: str):
    bridge = rig.make()
    rig.client.call_seconds = 3.0  # the tick spends 3 s on the network before its 429
    method = {"pull": "claim", "push": "complete", "reconcile": "list"}[job]
    rig.client.errors[method] = [_rate_limited(10.0)]
    if job == "push":
        _queue_completion(rig, remote_id=1)
    tick = {"pull": bridge.pull_tick, "push": bridge.push_tick, "reconcile": bridge.reconcile_tick}
    started = rig.clock.now
    tick[job](started)
    spent = 3.0 * len(rig.client.log)  # every call before (and with) the 429 took 3 s
    paused_job = "push" if job == "push" else "pull"
    assert bridge.server.paused_until[paused_job] == started + timedelta(seconds=spent + 10)
    rig.client.log.clear()
    _queue_completion(rig, remote_id=2)
    rig.client.remote[TYPE] = [7]
    now = started + timedelta(seconds=spent + 9.9)  # still paused
    for name in ("pull", "push", "reconcile"):
        rig.client.log.clear()
        tick[name](now)
        sent = {method for method, _ in rig.client.log}
        if name in PAUSES[job]:
            assert sent == set(), f"{name} sent {sent} while paused by a 429 in {job}"
        else:
            assert sent, f"{name} was held back by a 429 in {job}"
    after = started + timedelta(seconds=spent + 10.1)
    rig.client.log.clear()
    for name in ("pull", "push", "reconcile"):
        tick[name](after)
    assert {name for name, _ in rig.client.log} >= {"claim", "list"}


# -- push --------------------------------------------------------------------------------------
def _claim(rig: Rig, remote_id: int) -> Any:
    claimed = ClaimedTask(remote_id, TYPE, {"n": remote_id}, 1, 0, WORKER, rig.clock.now)
    rig.store.insert_claimed(claimed, 300, rig.clock.now)
    task = rig.queue.dequeue(TYPE)
    assert task is not None and task.remote_id == remote_id
    return task


def _queue_completion(rig: Rig, remote_id: int) -> None:
    rig.queue.complete(_claim(rig, remote_id), {"ok": remote_id})


def test_a_later_row_of_a_task_never_overtakes_an_earlier_one_waiting_to_retry(rig: Rig):
    task = _claim(rig, remote_id=1)
    rig.queue.fail(task, "attempt 1 broke")  # row 1: fail
    # Row 2 of the same task behind it (a re-claim no longer produces one while the failure
    # is pending, so the store's own append puts it there).
    from bridge.storage.outbox import append_for_task

    with rig.store.db.hot_write() as conn:
        append_for_task(rig.store.sql, conn, "complete", {"result": {"ok": 2}}, rig.clock.now, task)
    bridge = rig.make()
    rig.client.errors["fail"] = [TaskManagerServerError(503, "busy")]
    bridge.push_tick(rig.clock.now)  # the fail is retried later; its task's rows wait
    assert rig.client.called("fail") == [1] and rig.client.called("complete") == []
    for _ in range(3):  # ticks before the fail's retry time: nothing of the task goes
        rig.clock.advance(0.1)
        bridge.push_tick(rig.clock.now)
    assert rig.client.called("complete") == []
    rig.clock.advance(120)  # past any back-off: the fail first, then the completion
    bridge.push_tick(rig.clock.now)
    assert [name for name, _ in rig.client.log] == ["fail", "fail", "complete"]


def test_an_outage_stops_the_push_and_backs_off(rig: Rig):
    _queue_completion(rig, 1)
    _queue_completion(rig, 2)
    bridge = rig.make(push_backoff_max_seconds=60, connections=1)  # one row at a time
    rig.client.errors["complete"] = [TaskManagerConnectionError("refused")]
    assert bridge.push_tick(rig.clock.now) == 0
    assert rig.client.called("complete") == [1]  # the second row was not tried
    assert bridge.in_outage
    assert bridge._next_push is not None and bridge._next_push > rig.clock.now
    assert bridge.push_tick(rig.clock.now) == 0 and rig.client.called("complete") == [1]
    rig.clock.now = bridge._next_push
    assert bridge.push_tick(rig.clock.now) == 2
    assert not bridge.in_outage


def test_a_row_that_keeps_failing_goes_dead_after_its_attempts(rig: Rig):
    _queue_completion(rig, 1)
    bridge = rig.make(outbox_max_attempts=3)
    rig.client.errors["complete"] = [TaskManagerServerError(500, "boom") for _ in range(5)]
    for _ in range(3):
        bridge.push_tick(rig.clock.now)
        rig.clock.advance(3600)
    (row,) = rig.store.outbox_entries()
    assert row.status == "dead" and row.attempts == 3
    assert row.last_error is not None and row.last_error.startswith("gave up after 3 attempts")
    assert len(rig.client.called("complete")) == 3


# -- verdicts: every kind of answer to one row -------------------------------------------------
def _conflict(current: Task | None, read_error: Any = None) -> TaskManagerConflictError:
    error = TaskManagerConflictError(403, "Task is claimed by another worker")
    error.current_task = current
    error.read_error = read_error
    return error


@pytest.mark.parametrize(
    ("kind", "error", "verdict"),
    [
        ("complete", None, Verdict.DELIVERED),
        ("complete", _conflict(Task(1, TYPE, "claimed", attempts=2, claimed_by="x")), "superseded"),
        ("complete", _conflict(None), Verdict.RETRY),
        # The read-back met an outage or a 429: not the row's fault, no attempt spent.
        ("complete", _conflict(None, TaskManagerConnectionError("refused")), Verdict.OUTAGE),
        ("complete", _conflict(None, _rate_limited(30.0)), Verdict.RATE_LIMITED),
        ("complete", _conflict(None, TaskManagerServerError(500, "boom")), Verdict.RETRY),
        ("progress", _conflict(None), Verdict.SUPERSEDED),
        ("complete", TaskManagerNotFoundError(404, "Task not found"), Verdict.DEAD),
        ("complete", TaskManagerValidationError(400, "Validation failed"), Verdict.DEAD),
        ("complete", TaskManagerServerError(500, "boom"), Verdict.RETRY),
        ("complete", TaskManagerConnectionError("refused"), Verdict.OUTAGE),
        ("complete", TaskManagerAuthError(401, "Unauthorized"), Verdict.AUTH_FAILED),
        ("complete", _rate_limited(30.0), Verdict.RATE_LIMITED),
    ],
)
def test_each_answer_gets_its_verdict(rig: Rig, kind: str, error: Exception | None, verdict: Any):
    task = _claim(rig, 1)
    if kind == "progress":
        rig.queue.progress(task, 40)
    else:
        rig.queue.complete(task, {"ok": 1})
    (entry,) = rig.store.pending_outbox(rig.clock.now, 10)
    if error is not None:
        rig.client.errors[kind] = [error]
    outcome = deliver(entry, rig.client)  # type: ignore[arg-type]
    expected = Verdict(verdict) if isinstance(verdict, str) else verdict
    assert outcome.verdict is expected
    if expected is Verdict.RATE_LIMITED:
        assert outcome.retry_after == 30.0
    if expected is Verdict.SUPERSEDED and kind == "complete":
        assert outcome.reason is not None and "claimed by x" in outcome.reason


# -- reconcile ---------------------------------------------------------------------------------
def _server_row(remote_id: int, claimed_by: str, attempts: int = 1) -> Task:
    return Task(
        remote_id,
        TYPE,
        "claimed",
        params={"n": remote_id},
        attempts=attempts,
        claimed_by=claimed_by,
        claimed_at=T0,
    )


def test_reconcile_imports_only_claims_an_open_intent_explains(rig: Rig):
    bridge = rig.make()
    _claim(rig, 1)  # known locally at attempt 1
    asked_at = rig.clock.now
    rig.store.open_claim_intent(TYPE, asked_at)  # a claim of ours whose answer was lost
    rig.client.claimed_rows = [
        _server_row(1, bridge.worker_id),
        _server_row(2, bridge.worker_id),
        _server_row(3, "someone-else"),
        _server_row(4, bridge.worker_id),  # ours too, but no intent left to explain it
    ]
    rig.clock.advance(60)
    assert bridge.reconcile_tick(rig.clock.now) == 1
    assert rig.client.called("get") == [2]
    imported = rig.store.get_task_by_remote_id(2)
    assert imported is not None
    assert imported.lease_expires_at == asked_at + timedelta(seconds=300)  # from our clock
    assert rig.store.get_task_by_remote_id(3) is None
    assert rig.store.get_task_by_remote_id(4) is None
    assert rig.store.claim_intents() == []
    assert rig.store.get_state("foreign_claims") == "1"


def test_intents_older_than_the_lease_explain_nothing(rig: Rig):
    bridge = rig.make(lease_seconds=300)
    rig.store.open_claim_intent(TYPE, rig.clock.now)
    rig.clock.advance(301)
    rig.client.claimed_rows = [_server_row(2, bridge.worker_id)]
    assert bridge.reconcile_tick(rig.clock.now) == 1  # still explained on this tick
    rig.store.open_claim_intent(TYPE, rig.clock.now - timedelta(seconds=400))
    rig.client.claimed_rows = []
    bridge.reconcile_tick(rig.clock.now)
    assert rig.store.claim_intents() == []


def test_a_burst_keeps_its_intent_only_when_an_answer_may_be_lost(rig: Rig):
    bridge = rig.make()
    rig.client.remote[TYPE] = [1]
    bridge.pull_tick(rig.clock.now)  # every answer recorded
    assert rig.store.claim_intents() == []
    rig.client.remote[TYPE] = [2]
    rig.client.errors["claim"] = [TaskManagerConnectionError("no answer")]
    rig.clock.advance(10)
    bridge.pull_tick(rig.clock.now)
    assert [i.task_type for i in rig.store.claim_intents()] == [TYPE]


# -- idle: the watch and the claim window ------------------------------------------------------
TEN = [f"t.type{i}" for i in range(10)]


def _window(remaining: int, resets_in: float, limit: int = 100) -> Any:
    import time

    from taskmanager.protocol import RateLimitInfo

    return RateLimitInfo(limit, remaining, time.time() + resets_in, time.time())


def test_ten_idle_types_spend_at_most_a_tenth_of_the_claim_window(rig: Rig):
    bridge = rig.make(types=TEN)
    rig.client.windows["/tasks/claim"] = _window(remaining=99, resets_in=60)
    for _ in range(1200):  # ten minutes of pull ticks every 0.5 s, nothing to do
        rig.clock.advance(0.5)
        bridge.pull_tick(rig.clock.now)
    claims, looks = len(rig.client.called("claim")), len(rig.client.called("list"))
    assert claims <= 10 * 10, claims  # 10 % of 100 a minute, for ten minutes
    assert claims >= 10 * 9  # and the probes do run: expired leases are still found
    assert 590 <= looks <= 601  # one look a second covers all ten types


def test_a_task_created_after_a_long_idle_is_claimed_at_the_next_look(rig: Rig):
    bridge = rig.make(types=TEN, watch_interval_seconds=1.0)
    for _ in range(600):  # five idle minutes
        rig.clock.advance(0.5)
        bridge.pull_tick(rig.clock.now)
    rig.client.remote["t.type7"] = [77]
    claimed_after = []
    while not claimed_after or not claimed_after[-1]:
        assert len(claimed_after) < 10, "never claimed"
        rig.clock.advance(0.5)
        claimed_after.append(bridge.pull_tick(rig.clock.now))
    assert rig.store.get_task_by_remote_id(77) is not None
    assert len(claimed_after) * 0.5 <= 1.0  # within one watch interval


def test_no_claim_is_sent_while_the_claim_window_is_spent(rig: Rig):
    rig.client.remote[TYPE] = [1, 2]
    rig.client.windows["/tasks/claim"] = _window(remaining=0, resets_in=30)
    bridge = rig.make()
    assert bridge.pull_tick(rig.clock.now) == 0
    assert rig.client.called("claim") == []
    rig.client.windows["/tasks/claim"] = _window(remaining=0, resets_in=-1)  # reset passed
    rig.clock.advance(1)
    assert bridge.pull_tick(rig.clock.now) == 2


def test_no_look_is_sent_while_the_list_window_is_spent(rig: Rig):
    rig.client.windows["/tasks"] = _window(remaining=0, resets_in=30)
    bridge = rig.make()
    for _ in range(4):
        rig.clock.advance(1)
        bridge.pull_tick(rig.clock.now)
    assert rig.client.called("list") == []


def test_no_look_while_tasks_seen_pending_are_still_to_claim_and_one_once_they_run_out(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 11))
    bridge = rig.make(prefetch=4, workers=4, watch_interval_seconds=0.1)
    assert bridge.pull_tick(rig.clock.now) == 4  # a look saw 10; room for 4
    assert len(rig.client.called("list")) == 1
    for task in iter(lambda: rig.queue.dequeue(TYPE), None):
        rig.queue.complete(task, {})  # room again
    rig.clock.advance(0.2)  # a look would be due: the 6 seen are still to claim
    assert bridge.pull_tick(rig.clock.now) == 4
    assert len(rig.client.called("list")) == 1
    for task in iter(lambda: rig.queue.dequeue(TYPE), None):
        rig.queue.complete(task, {})
    rig.client.remote[TYPE].append(99)  # created since the look
    rig.clock.advance(0.2)
    assert bridge.pull_tick(rig.clock.now) == 2  # the last 2 seen: none left to claim
    rig.clock.advance(0.2)
    assert bridge.pull_tick(rig.clock.now) == 1  # so the next tick looks, and finds 99
    assert len(rig.client.called("list")) == 2
    assert rig.store.get_task_by_remote_id(99) is not None


def test_claims_failing_on_tasks_seen_pending_back_off_instead_of_repeating(rig: Rig):
    rig.client.remote[TYPE] = [1, 2, 3]
    rig.client.errors["claim"] = [TaskManagerServerError(500, "boom") for _ in range(50)]
    bridge = rig.make(watch_interval_seconds=0.1, poll_min_seconds=0.1)
    for _ in range(20):  # two seconds of ticks
        bridge.pull_tick(rig.clock.now)
        rig.clock.advance(0.1)
    # Not one claim a tick on the 3 seen: the failure's back-off paces the type.
    assert len(rig.client.called("claim")) <= 6, rig.client.called("claim")
    rig.client.errors["claim"] = []
    for _ in range(100):
        if rig.store.get_task_by_remote_id(3) is not None:
            break
        bridge.pull_tick(rig.clock.now)
        rig.clock.advance(0.1)
    assert rig.store.get_task_by_remote_id(3) is not None  # and it recovers


def test_a_page_full_of_other_types_is_followed_by_a_look_at_ours_by_name(rig: Rig):
    rig.client.remote["someone.else"] = list(range(1000, 1100))  # a full page, none ours
    rig.client.remote[TYPE] = [5]
    bridge = rig.make(types=[TYPE])
    bridge._next_pull[TYPE] = rig.clock.now + timedelta(hours=1)  # no blind probe now
    assert bridge.pull_tick(rig.clock.now) == 1
    assert rig.store.get_task_by_remote_id(5) is not None


def test_an_answer_lost_and_retried_inside_the_client_keeps_its_intent(rig: Rig):
    bridge = rig.make()
    rig.client.remote[TYPE] = [1, 2]
    rig.client.lose_next_answer = True
    assert bridge.pull_tick(rig.clock.now) == 1  # task 2; task 1 is the orphan
    assert rig.client.orphans == [1]
    assert [i.task_type for i in rig.store.claim_intents()] == [TYPE]
    rig.client.claimed_rows = [_server_row(1, bridge.worker_id)]
    assert bridge.reconcile_tick(rig.clock.now) == 1
    assert rig.store.get_task_by_remote_id(1) is not None
    assert rig.store.get_state("foreign_claims") is None


# -- several connections at once ---------------------------------------------------------------
@dataclass
class SlowClaims(FakeClient):
    """Claims that take real time, so that several are in flight together."""

    events: list[tuple[str, int]] = field(default_factory=list)  # ("start"/"task"/"empty", n)
    lock: Any = field(default_factory=lambda: __import__("threading").Lock())
    in_flight: int = 0
    most_in_flight: int = 0

    def claim_task(self, task_type: str, worker_id: str) -> ClaimedTask | None:
        import time

        with self.lock:
            self.events.append(("start", len(self.events)))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            ids = self.remote.get(task_type) or []
            task_id = ids.pop(0) if ids else None
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
            self.events.append(("task" if task_id else "empty", len(self.events)))
        if task_id is None:
            return None
        return ClaimedTask(task_id, task_type, {"n": 1}, 1, 0, worker_id, self.clock.now)


def test_concurrent_claims_stay_within_the_limit_and_start_none_after_an_empty_answer(
    template: Path, tmp_path: Path
):
    db = tmp_path / "queue.db"
    shutil.copy(template, db)
    clock = Clock()
    client = SlowClaims(clock)
    with LocalQueue(str(db), clock=clock) as queue:
        config = BridgeConfig.load(
            env={}, db_url=str(db), types=[TYPE], prefetch=6, workers=4, watch_interval_seconds=0
        )
        bridge = DaemonJobs(queue.store, client, config, monotonic=lambda: clock.mono)  # type: ignore[arg-type]
        client.remote[TYPE] = list(range(1, 20))
        assert bridge.pull_tick(clock.now) == 6  # the limit, claimed 4 at a time
        assert client.most_in_flight == 4
        assert [kind for kind, _ in client.events].count("start") == 6
        client.events.clear()
        client.remote[TYPE] = [50, 51]
        for task in (queue.dequeue(), queue.dequeue(), queue.dequeue(), queue.dequeue()):
            assert task is not None
            queue.complete(task, {})
        clock.advance(1)
        assert bridge.pull_tick(clock.now) == 2
        kinds = [kind for kind, _ in client.events]
        first_empty = kinds.index("empty")
        assert "start" not in kinds[first_empty:], kinds  # no claim begun after an empty one
        assert kinds.count("start") <= 4
        bridge.close()


# -- latency hiding: bursts that claim on, widths from the round trip -------------------------
def _workers_take_after_each_claim(rig: Rig) -> None:
    """A local worker takes (and finishes) one queued task after each claim's answer."""
    claim = rig.client.claim_task

    def claim_then_take(task_type: str, worker_id: str) -> ClaimedTask | None:
        task = claim(task_type, worker_id)
        taken = rig.queue.dequeue(task_type)
        if taken is not None:
            rig.queue.complete(taken, {})
        return task

    rig.client.claim_task = claim_then_take  # type: ignore[method-assign]


def test_a_burst_claims_on_into_the_room_workers_open_for_a_second_at_most(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 200))
    rig.client.call_seconds = 0.05  # each claim: 50 ms of the burst's second
    bridge = rig.make(prefetch=3, watch_interval_seconds=0, connections=1)
    _workers_take_after_each_claim(rig)
    claimed = bridge.pull_tick(rig.clock.now)
    assert 10 < claimed <= 1.0 / 0.05 + 3  # past its first limit of 3; within the second
    assert rig.store.queued_count(TYPE) <= 3  # never more on hand than the prefetch
    rig.client.call_seconds = 0.0
    rig.client.claim_task = FakeClient.claim_task.__get__(rig.client)  # type: ignore[method-assign]
    assert bridge.pull_tick(rig.clock.now) <= 3  # no worker takes: no room opens, no top-up


def test_a_burst_claims_on_only_as_far_as_the_tasks_seen_pending(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 9))
    bridge = rig.make(prefetch=3, connections=1)
    _workers_take_after_each_claim(rig)
    assert bridge.pull_tick(rig.clock.now) == 8
    assert rig.client.called("claim") == [TYPE] * 8  # the eight seen: no empty claim after


def test_a_top_up_counts_the_claims_in_flight_and_ends_with_the_burst_second(rig: Rig):
    bridge = rig.make(prefetch=5)
    rig.queue.enqueue(TYPE, {"n": 1})
    plan = bridge.claim_plan(TYPE)
    top_up = bridge._top_up(TYPE, plan, wanted=100)
    assert top_up(0, 4) == 4  # room for 5, 1 queued
    assert top_up(2, 4) == 2  # two of those still in flight
    assert bridge._top_up(TYPE, plan, wanted=6)(0, 4) == 2  # 6 seen pending, 4 taken
    rig.clock.mono += 1.0
    assert top_up(0, 4) == 0  # the burst's second is over


def test_connections_follow_the_round_trip_unless_set():
    def config(**settings: Any) -> BridgeConfig:
        return BridgeConfig.load(env={}, db_url="/nonexistent/q.db", **settings)

    four = config(workers=4)
    assert [four.connections_now(s) for s in (None, 0.004, 0.010)] == [4, 4, 4]  # close by
    assert four.connections_now(0.023) == 12  # a 20 ms round trip: 3 sets
    assert four.connections_now(0.053) == 16  # at most 16
    assert config(workers=20).connections_now(None) == 8  # one per worker up to 8
    assert config(workers=4, connections=3).connections_now(0.2) == 3  # set: as set


def test_prefetch_grows_to_keep_every_claim_connection_in_room_when_tasks_are_short():
    from bridge.daemon.claim_budget import prefetch_in_use

    assert prefetch_in_use(10, 4, 12, None, 0.001) == 10  # no round trip measured yet
    assert prefetch_in_use(10, 4, 12, 0.023, 0.001) == 12  # one per claim in flight
    assert prefetch_in_use(10, 4, 12, 0.023, 10.0) == 10  # long tasks: the setting
    assert prefetch_in_use(2, 4, 16, 0.05, 0.1) == 2  # 4 x 0.05 / 0.1 = 2 done per claim
    assert prefetch_in_use(2, 4, 16, 0.05, 0.02) == 10  # 10 done while a claim travels


def test_claims_go_as_wide_as_the_round_trip_asks(template: Path, tmp_path: Path):
    db = tmp_path / "queue.db"
    shutil.copy(template, db)
    clock = Clock()
    client = SlowClaims(clock, answer_seconds=0.025)  # a 25 ms round trip: 3 sets of 2
    with LocalQueue(str(db), clock=clock) as queue:
        config = BridgeConfig.load(
            env={}, db_url=str(db), types=[TYPE], prefetch=12, workers=2, watch_interval_seconds=0
        )
        bridge = DaemonJobs(queue.store, client, config, monotonic=lambda: clock.mono)  # type: ignore[arg-type]
        client.remote[TYPE] = list(range(1, 40))
        assert bridge.pull_tick(clock.now) == 12
        assert 2 < client.most_in_flight <= 6
        bridge.close()


def test_deliveries_of_different_tasks_go_side_by_side_and_each_tasks_rows_in_order(rig: Rig):
    bridge = rig.make(workers=4)
    rig.store.queue_register_type("t.new", "1", {"type": "object"}, rig.clock.now)
    rig.store.queue_create_task("t.new", {"n": 1}, 0, "k" * 64, rig.clock.now)
    tasks = [_claim(rig, remote_id=n) for n in range(1, 7)]
    for task in tasks:
        rig.queue.progress(task, 50)
    sent: list[tuple[str, Any]] = []
    in_flight = InFlight()

    def slow(method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with in_flight.one():
                time.sleep(0.02)
            sent.append((method, args[0]))
            return CompletionResult(id=args[0] if isinstance(args[0], int) else 1, status="ok")

        return call

    rig.client.update_progress = slow("progress")  # type: ignore[method-assign]
    rig.client.register_task_type = lambda *a, **k: SimpleNamespace(id=9)  # type: ignore[method-assign]
    rig.client.create_task_detailed = lambda *a, **k: SimpleNamespace(  # type: ignore[method-assign]
        id=10, deduplicated=False
    )
    assert bridge.push_tick(rig.clock.now) == 8
    assert in_flight.most > 1  # side by side
    for task in tasks:
        rig.queue.complete(task, {"ok": task.remote_id})
    rig.client.complete_task = slow("complete")  # type: ignore[method-assign]
    assert bridge.push_tick(rig.clock.now) == 6
    assert rig.store.outbox_entries("pending") == []
    bridge.close()


def test_a_create_never_overtakes_its_types_registration_waiting_to_retry(rig: Rig):
    bridge = rig.make(connections=1)
    rig.store.queue_register_type("t.new", "1", {"type": "object"}, rig.clock.now)
    rig.store.queue_create_task("t.new", {"n": 1}, 0, "k" * 64, rig.clock.now)
    sent: list[str] = []

    def register(*args: Any, **kwargs: Any) -> Any:
        sent.append("register")
        if sent.count("register") == 1:
            raise TaskManagerServerError(503, "busy")
        return SimpleNamespace(id=9)

    def create(*args: Any, **kwargs: Any) -> Any:
        sent.append("create")
        return SimpleNamespace(id=10, deduplicated=False)

    rig.client.register_task_type = register  # type: ignore[attr-defined]
    rig.client.create_task_detailed = create  # type: ignore[attr-defined]
    bridge.push_tick(rig.clock.now)
    for _ in range(3):  # before the registration's retry time: the create waits too
        rig.clock.advance(0.1)
        bridge.push_tick(rig.clock.now)
    assert sent == ["register"]
    rig.clock.advance(120)
    bridge.push_tick(rig.clock.now)
    assert sent == ["register", "register", "create"]


def test_progress_rewritten_while_it_was_being_sent_is_sent_again(rig: Rig):
    bridge = rig.make(connections=1)
    task = _claim(rig, remote_id=1)
    rig.queue.progress(task, 10)
    sent: list[int] = []

    def report(task_id: int, percent: int, message: Any, worker_id: str) -> None:
        sent.append(percent)
        if percent == 10:  # the worker reports again while 10 is on the wire
            rig.clock.advance(0.01)
            rig.queue.progress(task, 60)

    rig.client.update_progress = report  # type: ignore[method-assign]
    bridge.push_tick(rig.clock.now)
    assert sent == [10]
    (row,) = rig.store.outbox_entries("pending")
    assert row.payload["progress"] == 60  # not settled as delivered with 10's answer
    bridge.push_tick(rig.clock.now)
    assert sent == [10, 60] and rig.store.outbox_entries("pending") == []


def test_a_probe_that_finds_a_task_is_followed_by_full_bursts_until_one_comes_back_empty(
    rig: Rig,
):
    """Tasks whose lease ran out are claimable but not pending, so no look shows them:
    only blind claims find them. One probe request first; once it found a task, full
    bursts (not one claim a round trip) until an empty answer; then probes again."""
    rig.client.remote[TYPE] = list(range(1, 21))
    rig.client.list_tasks = lambda *args, **kwargs: iter(())  # type: ignore[method-assign]
    bridge = rig.make(prefetch=10, workers=4, connections=4)
    assert bridge.pull_tick(rig.clock.now) == 1  # the probe: one request
    assert len(rig.client.called("claim")) == 1
    rig.clock.advance(0.1)
    assert bridge.pull_tick(rig.clock.now) == 9  # a full burst, up to the prefetch
    for _ in range(3):
        for task in iter(lambda: rig.queue.dequeue(TYPE), None):
            rig.queue.complete(task, {})
        rig.clock.advance(0.1)
        bridge.pull_tick(rig.clock.now)
    assert rig.client.remote[TYPE] == []  # all 20 claimed
    per_tick = []
    for _ in range(50):  # long enough for several probes of an empty queue
        rig.clock.advance(1.0)
        before = len(rig.client.called("claim"))
        bridge.pull_tick(rig.clock.now)
        per_tick.append(len(rig.client.called("claim")) - before)
    assert max(per_tick) == 1  # the empty burst ended the bursts: one request a probe again
    rig.client.remote[TYPE] = [99]
    calls = len(rig.client.called("claim"))
    for _ in range(200):
        if rig.store.get_task_by_remote_id(99) is not None:
            break
        rig.clock.advance(0.5)
        bridge.pull_tick(rig.clock.now)
    assert rig.store.get_task_by_remote_id(99) is not None  # a later probe finds it
    assert len(rig.client.called("claim")) - calls <= 200


def test_a_probe_respects_a_claim_limit_of_zero_and_failing_claims_go_back_to_probes(rig: Rig):
    rig.client.remote[TYPE] = list(range(1, 21))
    rig.client.list_tasks = lambda *args, **kwargs: iter(())  # type: ignore[method-assign]
    bridge = rig.make(prefetch=4, workers=4, connections=4, poll_min_seconds=0.1)
    for n in range(4):
        rig.queue.enqueue(TYPE, {"n": n})  # the prefetch is full: a claim limit of 0
    assert bridge.claim_limit(TYPE) == 0
    assert bridge.pull_tick(rig.clock.now) == 0
    assert rig.client.called("claim") == []  # not even a probe
    for task in iter(lambda: rig.queue.dequeue(TYPE), None):
        rig.queue.complete(task, {})
    assert bridge.pull_tick(rig.clock.now) == 1  # the probe finds a task
    for task in iter(lambda: rig.queue.dequeue(TYPE), None):
        rig.queue.complete(task, {})  # room for a full burst
    rig.client.errors["claim"] = [TaskManagerServerError(500, "boom") for _ in range(200)]
    claim = rig.client.claim_task

    def slow_claim(task_type: str, worker_id: str) -> ClaimedTask | None:
        time.sleep(0.02)  # a real round trip: a burst's requests are in flight together
        return claim(task_type, worker_id)

    rig.client.claim_task = slow_claim  # type: ignore[method-assign]
    per_try = []
    for _ in range(40):  # the claims fail for good: one request a try, not a burst each
        rig.clock.advance(1.0)
        before = len(rig.client.called("claim"))
        bridge.pull_tick(rig.clock.now)
        per_try.append(len(rig.client.called("claim")) - before)
    assert sum(per_try) >= 2
    assert max(per_try[1:]) == 1, per_try
