"""Calls side by side within a width, and a burst's budget that tops itself up."""

from __future__ import annotations

import time

import pytest

from bridge.daemon.parallel_calls import Fanout, Slots
from tests.in_flight import InFlight


def test_a_fanout_runs_at_most_the_width_asked_and_keeps_the_order():
    fanout = Fanout(8, "test")
    running = InFlight()

    def call(n: int) -> int:
        with running.one():
            time.sleep(0.02)
        return n

    try:
        assert fanout.run([lambda n=n: call(n) for n in range(12)], 3) == list(range(12))
        assert 2 <= running.most <= 3
        running.most = 0
        assert fanout.run([lambda n=n: call(n) for n in range(12)], 50) == list(range(12))
        assert running.most <= 8  # never past the fan-out's own width
    finally:
        fanout.close()


def test_a_fanout_raises_the_first_error_after_every_call_ran():
    fanout = Fanout(4, "test")
    ran: list[int] = []

    def call(n: int) -> int:
        ran.append(n)
        if n in (2, 5):
            raise ValueError(f"call {n}")
        return n

    try:
        with pytest.raises(ValueError, match="call 2"):
            fanout.run([lambda n=n: call(n) for n in range(8)], 2)
        assert sorted(ran) == list(range(8))
    finally:
        fanout.close()


def test_slots_top_up_with_what_is_in_flight_and_stop_for_good():
    asked: list[tuple[int, int]] = []
    grants = iter([2, 0])

    def top_up(in_flight: int, taken: int) -> int:
        asked.append((in_flight, taken))
        return next(grants)

    slots = Slots(2, top_up)
    assert slots.take() and slots.take()
    slots.settle()  # one answer recorded, one still in flight
    assert slots.take()  # the grant was spent: topped up by 2
    assert asked == [(1, 2)]
    assert slots.take()
    slots.settle()
    slots.settle()
    assert not slots.take()  # the next top-up grants nothing
    assert asked[-1] == (1, 4) and slots.granted == 4
    stopped = Slots(5, lambda in_flight, taken: 5)
    stopped.stop()
    assert not stopped.take()
