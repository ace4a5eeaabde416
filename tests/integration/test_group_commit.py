"""Several threads' results in one SQLite transaction (``bridge.storage.group_commit``).

Real files, real threads. The first thread's transaction is held at its start until
the others wait behind it, so that what they share is decided, not left to timing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge import LocalQueue, TaskNotHeldError
from bridge.storage.group_commit import GroupCommit
from bridge.storage.migrations import upgrade

from ..seed import seed_claimed_tasks
from .helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(tmp_path) -> Iterator[LocalQueue]:
    url = str(tmp_path / "group.db")
    upgrade(url)
    with LocalQueue(url) as opened:
        driver = sqlite3.connect(url)
        driver.execute("CREATE TABLE kept (n INTEGER)")
        driver.commit()
        driver.close()
        yield opened


class Held:
    """``hot_write`` transactions, the first held open at its start until ``release``;
    counts the transactions opened."""

    def __init__(self, queue: LocalQueue, fail_first: BaseException | None = None) -> None:
        self.queue = queue
        self.opened = 0
        self.gate = threading.Event()
        self.fail_first = fail_first

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.opened += 1
        if self.opened == 1:
            assert self.gate.wait(10)
            if self.fail_first is not None:
                raise self.fail_first
        with self.queue.store.db.hot_write() as conn:
            yield conn


def insert(n: int) -> Callable[[Any], int]:
    def action(conn: Any) -> int:
        conn.execute("INSERT INTO kept (n) VALUES (?)", (n,))
        return n * 10

    return action


def refused(conn: Any) -> int:
    raise TaskNotHeldError("cannot complete task 7: no longer held", "done", 7)


def broken(conn: Any) -> int:
    raise RuntimeError("a bug in one write")


def run_together(group: GroupCommit, held: Held, actions: list[Callable[[Any], int]]) -> list[Any]:
    """Each action from its own thread, the first leading; every outcome (value or error)."""
    outcomes: list[Any] = [None] * len(actions)

    def call(i: int) -> None:
        try:
            outcomes[i] = group.run(actions[i])
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(actions))]
    threads[0].start()
    assert wait_until(lambda: held.opened == 1, 5, 0.005)  # the first leads, held open
    for thread in threads[1:]:
        thread.start()
    assert wait_until(lambda: len(group._waiting) == len(actions), 5, 0.005)
    held.gate.set()
    for thread in threads:
        thread.join(10)
    return outcomes


def kept(queue: LocalQueue) -> list[int]:
    driver = sqlite3.connect(queue.store.engine.url.database)
    try:
        return sorted(n for (n,) in driver.execute("SELECT n FROM kept"))
    finally:
        driver.close()


def test_writes_that_arrive_while_one_waits_share_its_transaction(queue):
    held = Held(queue)
    group = GroupCommit(held.transaction)
    outcomes = run_together(group, held, [insert(n) for n in range(4)])
    assert outcomes == [0, 10, 20, 30]
    assert kept(queue) == [0, 1, 2, 3]
    assert held.opened == 1  # one transaction, one commit for the four


def test_a_refused_write_changes_nothing_and_spoils_none_of_the_others(queue):
    held = Held(queue)
    group = GroupCommit(held.transaction)
    outcomes = run_together(group, held, [insert(1), refused, insert(3)])
    assert outcomes[0] == 10 and outcomes[2] == 30
    assert isinstance(outcomes[1], TaskNotHeldError)
    assert kept(queue) == [1, 3]


def test_any_other_error_keeps_nothing_and_reaches_every_write_it_carried(queue):
    held = Held(queue)
    group = GroupCommit(held.transaction)
    outcomes = run_together(group, held, [insert(1), broken, insert(3)])
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes
    assert kept(queue) == []  # the first write ran, and was rolled back with the rest
    # The group goes on: the next write has a transaction of its own.
    assert group.run(insert(5)) == 50
    assert kept(queue) == [5]


def test_a_transaction_that_cannot_begin_fails_its_leader_only(queue):
    locked = sqlite3.OperationalError("database is locked")
    held = Held(queue, fail_first=locked)
    group = GroupCommit(held.transaction)
    outcomes = run_together(group, held, [insert(1), insert(2), insert(3)])
    assert outcomes[0] is locked
    assert outcomes[1:] == [20, 30]  # the next in line led a transaction of its own
    assert kept(queue) == [2, 3]
    assert held.opened == 2


def test_results_of_many_threads_are_each_kept_once_with_their_outbox_rows(queue):
    """Through the queue itself (its own group): 8 threads completing 200 tasks at once;
    a task completed twice is refused to the second caller, as without grouping."""
    seed_claimed_tasks(queue.store.engine.url.database, range(1, 201), task_type="t", worker_id="w")
    taken = [queue.dequeue("t") for _ in range(200)]
    assert all(task is not None for task in taken)
    refusals: list[TaskNotHeldError] = []
    lock = threading.Lock()

    def finish(tasks: list[Any]) -> None:
        for task in tasks:
            for _ in range(2):  # the second is a replay of the same completion
                try:
                    queue.complete(task, {"n": task.params["n"]})
                except TaskNotHeldError as exc:
                    with lock:
                        refusals.append(exc)

    threads = [threading.Thread(target=finish, args=(taken[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(refusals) == 200
    assert queue.status().tasks == {("t", "done"): 200}
    assert queue.status().outbox == {"pending": 200}  # one completion each, not two
    for task in taken[::37]:
        assert queue.get(task.id).result == {"n": task.params["n"]}


def test_an_interrupted_leader_leaves_the_others_writes_to_the_next_transaction(queue):
    """A KeyboardInterrupt in the leading thread (a main thread) is its own: the writes it
    carried are rolled back with its own and written again in the next transaction."""

    def interrupted(conn: Any) -> int:
        conn.execute("INSERT INTO kept (n) VALUES (0)")
        raise KeyboardInterrupt

    held = Held(queue)
    group = GroupCommit(held.transaction)
    outcomes = run_together(group, held, [interrupted, insert(1), insert(2)])
    assert isinstance(outcomes[0], KeyboardInterrupt)
    assert outcomes[1:] == [10, 20]
    assert kept(queue) == [1, 2]
    assert held.opened == 2
