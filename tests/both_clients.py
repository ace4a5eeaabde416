"""Both clients behind one blocking interface, so that one scenario tests each.

``BlockingAsyncClient`` runs an ``AsyncTaskManagerClient`` on an event loop of
its own thread and turns each coroutine into a call that waits for it: every
request still goes through aiohttp, the retry loop still sleeps with the
async ``sleep`` it was given. Tests parametrised over ``CLIENT_KINDS`` build
their client with ``make_client`` and read the same either way.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.async_client import AsyncTaskManagerClient

CLIENT_KINDS = ("sync", "async")
# The blocking client sending through aiohttp on its own loop thread (http="aiohttp").
LOOP = "loop"
# The blocking client sending through http.client in the calling thread (http="stdlib").
STDLIB = "stdlib"
# The same, each call's steps carried out by ``run_together`` (the daemon's way).
IN_FLIGHT = "in_flight"


def in_flight(client: TaskManagerClient) -> TaskManagerClient:
    """``client`` (``http="stdlib"``) with every call's steps carried out by
    ``run_together``, one at a time: every quirk scenario then runs through the
    one-thread driver too (each method runs its steps through ``_run``)."""
    assert client.runs_together
    client._run = lambda steps: client.run_together([steps], 1)[0]  # type: ignore[method-assign]
    return client


class BlockingAsyncClient:
    """An ``AsyncTaskManagerClient`` whose coroutines are called like blocking methods."""

    def __init__(self, make: Callable[[], AsyncTaskManagerClient]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.inner = make()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if inspect.isasyncgenfunction(attr):
            return lambda *args, **kwargs: self._iterate(attr(*args, **kwargs))
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self.wait(attr(*args, **kwargs))
        return attr

    def wait(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self.wait(iterator.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.wait(self.inner.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingAsyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def make_client(
    kind: str,
    config: TaskManagerConfig,
    *,
    sleep: Callable[[float], None] | None = None,
    **options: Any,
) -> Any:
    """A ``TaskManagerClient`` (``"sync"``; ``"loop"``: with ``http="aiohttp"``;
    ``"stdlib"``: with ``http="stdlib"``) or a
    ``BlockingAsyncClient`` (``"async"``) with the same config and options; ``sleep``
    (blocking) is given to the async client as a coroutine that calls it."""
    if kind in ("sync", LOOP, STDLIB, IN_FLIGHT):
        if sleep is not None:
            options["sleep"] = sleep
        if kind != "sync":
            options["http"] = "aiohttp" if kind == LOOP else "stdlib"
        client = TaskManagerClient(config, **options)
        return in_flight(client) if kind == IN_FLIGHT else client
    if sleep is not None:
        blocking_sleep = sleep

        async def async_sleep(seconds: float) -> None:
            blocking_sleep(seconds)

        options["sleep"] = async_sleep
    return BlockingAsyncClient(lambda: AsyncTaskManagerClient(config, **options))
