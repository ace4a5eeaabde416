"""The blocking client's requests carried out by aiohttp, on an event loop of its own.

``TaskManagerClient(config, http="aiohttp")`` keeps every method blocking and
thread-safe, but sends through this transport: the calling thread hands the
request's steps to one loop thread and waits for the result. Why: aiohttp spends
less CPU per request than requests, the hop between threads included (four threads
against the emulator, ``tests/bench/async_client.py``: 0.68-0.74x the CPU of the
whole process, the emulator's share included; docs/BENCHMARKS.md). The bridge's
daemon shares its machine's cores with the workers, so what its requests do not
spend, the workers get.

Retry back-off sleeps on the loop (``asyncio.sleep``): one request waiting out a
``Retry-After`` holds no other. A blocking ``sleep`` given for tests is called
from the loop, as the tests' fake clocks expect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .config import TaskManagerConfig
from .exceptions import TaskManagerConfigError, TaskManagerConnectionError
from .exchange import Steps

_R = TypeVar("_R")

logger = logging.getLogger("taskmanager.client")

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
        self._closing = False
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="taskmanager-http"
        )
        self._thread.start()

    def run(self, steps: Steps[_R]) -> _R:
        """Carry out ``steps`` on the loop and wait for the result (or its exception).

        A request still in flight when the client is closed ends with
        ``TaskManagerConnectionError`` (counted as unanswered: the server may have
        applied it), never with a caller waiting for good."""
        with self._lock:
            if self._closing:
                steps.close()
                raise TaskManagerConfigError("the client is closed")
            future = asyncio.run_coroutine_threadsafe(self._transport.run(steps), self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise TaskManagerConnectionError(
                "the client was closed before the server answered (it may have applied the request)"
            ) from None

    def close(self) -> None:
        """Cancel what is in flight, close the session, stop and close the loop
        (idempotent; a caller still waiting gets ``TaskManagerConnectionError``)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            shutdown.result(CLOSE_SECONDS)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            logger.warning(
                "closing the client: its requests did not end within %g s", CLOSE_SECONDS
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        in_flight = [task for task in asyncio.all_tasks() if task is not current]
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        await self._transport.close()


def _on_the_loop(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    """The back-off's sleep for the loop: ``asyncio.sleep`` for the real one (a blocking
    sleep would hold every request in flight), else the given one, called as is."""
    if sleep is time.sleep:
        return asyncio.sleep

    async def given(seconds: float) -> None:
        sleep(seconds)

    return given
