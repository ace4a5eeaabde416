"""Several threads' writes in one SQLite transaction: one commit, one fsync for all.

A worker's slots finish tasks at the same moments, and SQLite lets one writer in at
a time: each slot's own transaction would wait for the others' (this process's turn,
then the file's lock) and pay its own fsync, its own ``BEGIN`` and ``COMMIT``, and
the wake-ups of all that waiting. Here the first thread to arrive leads: once it
holds the write lock it takes every write that arrived meanwhile, runs them one
after another in its transaction and commits once; the others wait for that commit,
which is when their writes are durable, as if each had committed its own.

One write refused by its own rules (``TaskNotHeldError``: it changed nothing) does
not spoil the others; any other error ends the transaction for all of them (nothing
of it is kept) and each gets that error, to retry with its own patience. Whoever
arrives while a transaction runs waits for the next one, led by the first of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from ..errors import TaskNotHeldError

T = TypeVar("T")


class _Write(Generic[T]):
    __slots__ = ("action", "done", "error", "leads", "value", "woken")

    def __init__(self, action: Callable[[Any], T]) -> None:
        self.action = action
        self.done = threading.Lock()  # held until the write's transaction ended
        self.done.acquire()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.leads = False  # handed the lead: run the next transaction
        self.woken = False  # set before ``done`` is released

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class GroupCommit:
    """Runs ``action(connection)`` calls of many threads in shared transactions opened by
    ``transaction()`` (a context manager yielding the connection, committing on exit)."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[Any]]) -> None:
        self._transaction = transaction
        self._lock = threading.Lock()
        self._waiting: list[_Write[Any]] = []
        self._leading = False

    def run(self, action: Callable[[Any], T]) -> T:
        """``action``'s value once its transaction committed, or what it raised; any
        error of the transaction itself is raised to every write it carried."""
        write = _Write(action)
        with self._lock:
            self._waiting.append(write)
            leads = not self._leading
            self._leading = True
        interrupted: BaseException | None = None
        if not leads:
            # An interrupt while waiting (a KeyboardInterrupt in a main thread) waits for
            # the write's end all the same: the write is in line, maybe running, and
            # may be handed the lead; walking away would leave the others without one.
            interrupted = _wait_uninterrupted(write)
            if not write.leads:
                if interrupted is not None:
                    raise interrupted
                return write.outcome()
        self._lead(write)
        if interrupted is not None:
            raise interrupted
        return write.outcome()

    def _lead(self, own: _Write[Any]) -> None:
        batch: list[_Write[Any]] = []
        try:
            with self._transaction() as connection:
                with self._lock:  # everyone who came while the lock was waited for
                    batch, self._waiting = self._waiting, []
                for write in batch:
                    try:
                        write.value = write.action(connection)
                    except TaskNotHeldError as exc:  # it changed nothing: the rest stands
                        write.error = exc
        except Exception as exc:
            for write in batch:
                write.value, write.error = None, exc
            if not batch:  # it never began: this write fails, the others get a turn
                own.error = exc
                with self._lock:
                    self._waiting.remove(own)
        except BaseException as exc:
            if was_committed(exc):  # interrupted the moment the commit returned: it stands
                raise
            # The leading thread itself was interrupted (a KeyboardInterrupt in a main
            # thread): the others' writes, rolled back with its own, are not theirs to
            # fail; they go again, first, in the next transaction.
            with self._lock:
                if batch:
                    for write in batch:
                        write.value, write.error = None, None
                    self._waiting[:0] = [write for write in batch if write is not own]
                else:
                    self._waiting.remove(own)
            batch = []
            raise
        finally:
            self._hand_over(own, batch)

    def _hand_over(self, own: _Write[Any], batch: list[_Write[Any]]) -> None:
        with self._lock:
            following = self._waiting[0] if self._waiting else None
            if following is None:
                self._leading = False
            else:
                following.leads = True
        for write in _others(batch, own):
            write.woken = True
            write.done.release()
        if following is not None:
            following.woken = True
            following.done.release()


def _others(batch: list[_Write[Any]], own: _Write[Any]) -> Iterator[_Write[Any]]:
    return (write for write in batch if write is not own)


def _wait_uninterrupted(write: _Write[Any]) -> BaseException | None:
    """Wait until ``write`` is woken (done, or handed the lead), through interrupts too;
    the first interrupt, to raise after. ``woken`` is set before ``done`` is released,
    so an interrupt that lands after the acquire returned never waits again."""
    interrupted: BaseException | None = None
    while not write.woken:
        try:
            write.done.acquire()
        except BaseException as exc:
            interrupted = interrupted or exc
    return interrupted


_COMMITTED = "_bridge_committed"


def mark_committed(exc: BaseException) -> None:
    """Note on an interrupt that it came after the transaction's commit (the transaction
    factory's part: only it can tell, by the connection's state)."""
    setattr(exc, _COMMITTED, True)


def was_committed(exc: BaseException) -> bool:
    return bool(getattr(exc, _COMMITTED, False))
