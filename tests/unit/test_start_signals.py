"""A stop signal that comes while the daemon's start succeeds is kept, never lost."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from bridge.cli.process_commands import _wait_for_database


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_sigterm_during_a_start_that_succeeds_is_left_for_the_daemon(restored_handlers):
    stop_asked = threading.Event()

    def start() -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # as the role became visible
        return "jobs"

    assert _wait_for_database(start, lambda: None, stop_asked) == "jobs"
    assert stop_asked.is_set()  # the caller stops cleanly at once
    os.kill(os.getpid(), signal.SIGTERM)  # until the daemon's own handler is in: not a kill
    assert stop_asked.is_set()


def test_a_start_that_fails_puts_the_previous_handlers_back(restored_handlers):
    def mine(_signum: int, _frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)

    def start() -> str:
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError):
        _wait_for_database(start, lambda: None, threading.Event())
    assert signal.getsignal(signal.SIGTERM) is mine
