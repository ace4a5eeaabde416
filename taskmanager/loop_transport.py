"""The blocking client's requests carried out by aiohttp, on an event loop of its own.

``TaskManagerClient(config, http="aiohttp")`` keeps every method blocking and
thread-safe, but sends through this transport: the calling thread hands the
request's steps to one loop thread and waits for the result. Why: aiohttp spends
about half the CPU of requests per request, the hop between threads included
(measured from four threads against the emulator: ~0.7 vs ~1.4 ms a request;
docs/BENCHMARKS.md). The bridge's daemon shares its machine's cores with the
workers, so what its requests do not spend, the workers get.

Retry back-off sleeps on the loop (``asyncio.sleep``): one request waiting out a
``Retry-After`` holds no other. A blocking ``sleep`` given for tests is called
from the loop, as the tests' fake clocks expect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .config import TaskManagerConfig
from .exceptions import TaskManagerConfigError
from .exchange import Steps

_R = TypeVar("_R")

CLOSE_SECONDS = 5.0  # closing waits this long for the session's connections to close


class LoopTransport:
    """``Transport``'s blocking ``run``, over ``AsyncTransport`` on a private loop thread."""

    def __init__(self, config: TaskManagerConfig, sleep: Callable[[float], None]) -> None:
        try:
            from .async_transport import AsyncTransport
        except ImportError as missing:
            raise TaskManagerConfigError(
                'http="aiohttp" needs aiohttp: pip install "taskmanager-bridge[async]"'
            ) from missing
        self._transport = AsyncTransport(config, sleep=_on_the_loop(sleep))
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="taskmanager-http"
        )
        self._thread.start()

    def run(self, steps: Steps[_R]) -> _R:
        """Carry out ``steps`` on the loop and wait for the result (or its exception)."""
        if self._loop.is_closed():
            steps.close()
            raise TaskManagerConfigError("the client is closed")
        return asyncio.run_coroutine_threadsafe(self._transport.run(steps), self._loop).result()

    def close(self) -> None:
        """Close the session, then stop and close the loop (idempotent)."""
        with self._lock:
            if self._loop.is_closed():
                return
            closing = asyncio.run_coroutine_threadsafe(self._transport.close(), self._loop)
            try:
                closing.result(CLOSE_SECONDS)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(CLOSE_SECONDS)
                if not self._thread.is_alive():
                    self._loop.close()


def _on_the_loop(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    """The back-off's sleep for the loop: ``asyncio.sleep`` for the real one (a blocking
    sleep would hold every request in flight), else the given one, called as is."""
    if sleep is time.sleep:
        return asyncio.sleep

    async def given(seconds: float) -> None:
        sleep(seconds)

    return given
