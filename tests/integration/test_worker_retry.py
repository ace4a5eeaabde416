"""Retry policies, delayed re-queue and time limits, with the queue's settable clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge import LocalQueue, Retry, RetryPolicy, TaskPolicy, Worker

from .conftest import Clock
from .test_local_queue import add_remote


def flaky(failures: int, error: BaseException) -> Any:
    runs: list[int] = []

    def handler(params: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        if len(runs) <= failures:
            raise error
        return {"runs": len(runs)}

    return handler


def worker_for(queue: LocalQueue, handler: Any, retry: RetryPolicy, **kw: Any) -> Worker:
    policy = TaskPolicy(retry=retry)
    return Worker(queue, {"t": handler}, poll_seconds=0.01, default_policy=policy, **kw)


def test_retry_runs_the_task_again_until_it_succeeds(queue: LocalQueue):
    task = queue.enqueue("t", {"x": 1})
    worker = worker_for(queue, flaky(2, Retry("not yet")), RetryPolicy(attempts=3, backoff=0))
    assert worker.run(max_tasks=3) == 3
    after = queue.get(task.id)
    assert (after.status, after.result, after.attempts) == ("done", {"runs": 3}, 3)
    assert (worker.counters.retried, worker.counters.done) == (2, 1)


def test_spent_retries_fail_the_task_with_the_reason(queue: LocalQueue):
    task = queue.enqueue("t", {"x": 1})
    worker = worker_for(queue, flaky(9, Retry("still down")), RetryPolicy(attempts=2, backoff=0))
    assert worker.run(max_tasks=2) == 2
    after = queue.get(task.id)
    assert (after.status, after.error) == ("failed", "Retry: still down")


def test_only_listed_exceptions_retry(queue: LocalQueue):
    listed = queue.enqueue("t", {"x": 1})
    policy = RetryPolicy(attempts=2, backoff=0, retry_on=(TimeoutError,))
    worker = worker_for(queue, flaky(1, TimeoutError("slow")), policy)
    assert worker.run(max_tasks=2) == 2
    assert queue.get(listed.id).status == "done"
    other = queue.enqueue("t", {"x": 2})
    worker = worker_for(queue, flaky(1, ValueError("bad")), policy)
    assert worker.run(max_tasks=1) == 1
    assert (queue.get(other.id).status, queue.get(other.id).error) == ("failed", "ValueError: bad")


def test_a_delayed_retry_is_not_handed_out_before_its_time(queue: LocalQueue, clock: Clock):
    task = queue.enqueue("t", {"x": 1})
    held = queue.dequeue()
    assert held is not None and held.id == task.id
    queue.fail(held, "later", retry=True, delay_seconds=60)
    assert queue.get(task.id).status == "queued" and queue.dequeue() is None
    clock.advance(59.9)
    assert queue.dequeue() is None
    clock.advance(0.2)
    again = queue.dequeue()
    assert again is not None and again.id == task.id and again.attempts == 2


def test_a_retry_past_the_remote_lease_is_left_to_the_server(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 7)  # lease 300 s from now, margin 30 s
    worker = Worker(queue, {"yt.scrape": flaky(1, Retry("wait", after=280))}, poll_seconds=0.01)
    assert worker.run(max_tasks=1) == 1
    task = queue.store.get_task_by_remote_id(7)
    assert task is not None and task.status == "failed"
    assert "would outlast the remote lease" in (task.error or "")
    assert [row.kind for row in queue.outbox("pending")] == ["fail"]


def test_the_time_limit_defaults_to_the_lease_less_the_margin(queue: LocalQueue, clock: Clock):
    add_remote(queue, clock, 8)
    local = queue.enqueue("yt.scrape", {"x": 1})
    remote = queue.store.get_task_by_remote_id(8)
    assert remote is not None
    worker = Worker(queue, {"yt.scrape": flaky(0, Retry())})
    assert worker.core.time_limit(remote) == pytest.approx(270)
    assert worker.core.time_limit(local) is None
    clock.advance(100)
    assert worker.core.time_limit(remote) == pytest.approx(170)
    capped = Worker(queue, {"yt.scrape": flaky(0, Retry())}, default_policy=TaskPolicy(10))
    assert capped.core.time_limit(remote) == 10 and capped.core.time_limit(local) == 10


def test_backoff_doubles_with_pinned_jitter_and_is_capped():
    policy = RetryPolicy(attempts=10, backoff=1, backoff_max=5, jitter=0.5)
    low, high = random.Random(), random.Random()
    low.random = lambda: 0.0  # type: ignore[method-assign]
    high.random = lambda: 1.0  # type: ignore[method-assign]
    error = Retry()
    assert [policy.delay(n, error, low) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.5]
    assert [policy.delay(n, error, high) for n in (1, 2, 3, 4)] == [1.5, 3.0, 6.0, 7.5]
    assert policy.delay(10, error, low) is None  # attempts spent
    assert policy.delay(1, ValueError(), low) is None  # not a retrying error
    assert policy.delay(1, Retry(after=42), low) == 42
