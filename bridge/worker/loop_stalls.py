"""Noticing that an event loop was blocked, and when.

An async handler that calls something blocking (``time.sleep``, a blocking HTTP
client, heavy CPU) holds every coroutine of its loop: their time limits run out
while none of them could run. A tick every 50 ms that comes more than 250 ms late
marks a stall; the async worker asks whether a time limit ran out during one
before it fails a task "timed out", and the operator gets one warning a minute
naming the usual causes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

logger = logging.getLogger("bridge.worker")


class LoopStalls:
    """When the event loop was blocked (a handler that did not await, a stopped
    process): a time limit that ran out during a stall is not the task's fault."""

    TICK = 0.05
    STALL = 0.25  # a tick this much late is a stall

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self.spans: collections.deque[tuple[float, float]] = collections.deque(maxlen=32)
        self._told = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` (call on it): a callback every ``TICK``, not a task, so that a
        handler cancelling every task of the loop cannot end the watch."""
        self.last_tick = time.monotonic()
        loop.call_later(self.TICK, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        before, self.last_tick = self.last_tick, now
        if now - before - self.TICK > self.STALL:
            self.spans.append((before, now))
            if now - self._told > 60:  # at most one warning a minute
                self._told = now
                logger.warning(
                    "the event loop was blocked for %.1f s: an async handler called "
                    "something that blocks (time.sleep, a blocking client, heavy CPU); "
                    "await it, or use asyncio.to_thread",
                    now - before,
                )
        loop.call_later(self.TICK, self.tick, loop)

    def since(self, started: float, now: float) -> bool:
        """Whether the loop stalled between ``started`` and ``now`` (monotonic), or is
        only now coming back from one the watch has not yet seen."""
        if now - self.last_tick > self.STALL:
            return True
        return any(end >= started and begin <= now for begin, end in self.spans)
