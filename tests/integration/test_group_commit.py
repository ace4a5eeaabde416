"""Several threads' results in one SQLite transaction (``bridge.storage.group_commit``).

Real files, real threads. The first thread's transaction is held at its start until
the others wait behind it, so that what they share is decided, not left to timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge import LocalQueue, TaskNotHeldError
from bridge.storage.group_commit import GroupCommit, mark_committed
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


class Interrupt(BaseException):
    """What a signal handler raises in the main thread (as KeyboardInterrupt would)."""


@contextlib.contextmanager
def interrupts_on(signum: int) -> Iterator[threading.Event]:
    """A handler raising ``Interrupt`` in the main thread once, when armed."""
    armed = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        if armed.is_set():
            armed.clear()
            raise Interrupt

    previous = signal.signal(signum, handler)
    try:
        yield armed
    finally:
        signal.signal(signum, previous)


def test_a_follower_interrupted_while_waiting_still_waits_for_its_write_and_leaves_the_lead(
    queue,
):
    """An interrupt in a waiting follower (the main thread) is raised once its write is
    settled: it is kept, and the group goes on. The follower comes after the leader took
    its batch, so it is next in line: walking away would hand the lead to nobody."""
    group = GroupCommit(queue.store.db.hot_write)
    running, finish = threading.Event(), threading.Event()

    def slow(conn: Any) -> int:
        running.set()
        assert finish.wait(10)
        return insert(1)(conn)

    leader = threading.Thread(target=group.run, args=(slow,))
    leader.start()
    assert running.wait(5)  # the leader's batch is taken and running
    with interrupts_on(signal.SIGUSR1) as armed:
        armed.set()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        # The leader finishes only once the interrupt was handled: no signal comes late.
        handled = threading.Thread(
            target=lambda: (wait_until(lambda: not armed.is_set(), 10, 0.01), finish.set())
        )
        handled.start()
        with pytest.raises(Interrupt):
            group.run(insert(2))  # waits behind the running leader; interrupted at 0.2 s
        assert not armed.is_set()  # the interrupt did come while it waited
        handled.join(10)
    leader.join(10)
    assert kept(queue) == [1, 2]
    later: list[int] = []
    after = threading.Thread(target=lambda: later.append(group.run(insert(3))))
    after.start()
    after.join(10)
    assert later == [30], "the group stopped: nobody took the lead"


def test_an_interrupt_after_the_commit_leaves_every_write_kept_once(queue):
    """The transaction says an interrupt came after its commit (``mark_committed``): the
    others' writes stand and are not run again; the leader gets the interrupt."""
    ran: list[int] = []

    def counted(n: int) -> Callable[[Any], int]:
        def action(conn: Any) -> int:
            ran.append(n)
            return insert(n)(conn)

        return action

    held = Held(queue)

    @contextlib.contextmanager
    def commit_then_interrupt() -> Iterator[Any]:
        with held.transaction() as conn:
            yield conn
        if held.opened == 1:
            interrupt = Interrupt()
            mark_committed(interrupt)
            raise interrupt

    group = GroupCommit(commit_then_interrupt)
    outcomes = run_together(group, held, [counted(1), counted(2), counted(3)])
    assert isinstance(outcomes[0], Interrupt)
    assert outcomes[1:] == [20, 30]
    assert sorted(ran) == [1, 2, 3]  # each once
    assert kept(queue) == [1, 2, 3]
