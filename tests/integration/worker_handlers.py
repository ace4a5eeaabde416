"""Handlers the worker-runtime tests run in real worker processes (``--handler
tests.integration.worker_handlers:NAME``): what users' code really does."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bridge import Retry


def mixed(params: dict[str, Any]) -> Any:
    """Good results with the types scrapers return, and every kind of poison."""
    kind = params["kind"]
    if kind == "good":
        return {
            "n": params["n"],
            "seen_at": dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc),
            "price": decimal.Decimal("9.99"),
            "id": uuid.UUID(int=params["n"]),
            "pair": (1, 2),
        }
    if kind == "set":
        return {"items": [0, 1, 2, {"seen_at": {1, 2}}]}
    if kind == "nan":
        return float("nan")
    if kind == "object":
        return {"x": object()}
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "abort":
        os.abort()
    if kind == "hang":
        threading.Event().wait()
    if kind == "retry":
        raise Retry("not yet", after=0)
    raise ValueError(f"unknown kind {kind!r}")


def gated(params: dict[str, Any]) -> dict[str, Any]:
    """Runs until the file named by the ``gate`` param exists (the test opens it), then
    returns a result of ``size`` bytes: a result finished at the moment the test chooses."""
    gate = Path(params["gate"])
    while not gate.exists():
        time.sleep(0.02)
    return {"n": params["n"], "text": "r" * params.get("size", 10)}


def leaky(params: dict[str, Any]) -> dict[str, Any]:
    """Keeps 8 MiB per run in the process (a leak), and says which process ran it."""
    _LEAK.append(bytearray(8 * 2**20))
    return {"pid": os.getpid(), "n": params["n"]}


_LEAK: list[bytearray] = []


def with_progress(params: dict[str, Any], context: Any) -> dict[str, Any]:
    context.progress(40, "on the way")
    return {"pid": os.getpid()}


# -- the same, as coroutines (an async handler puts the worker on its event loop) -------
async def mixed_async(params: dict[str, Any]) -> Any:
    """``mixed``, awaiting between: "hang" waits on the loop (cancellable by the time
    limit); the rest returns or raises as ``mixed`` does."""
    await asyncio.sleep(0)
    if params["kind"] == "hang":
        await asyncio.Event().wait()
    return mixed(params)


async def gated_async(params: dict[str, Any]) -> dict[str, Any]:
    """``gated`` without blocking the loop."""
    gate = Path(params["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    return {"n": params["n"], "text": "r" * params.get("size", 10)}


async def with_progress_async(params: dict[str, Any], context: Any) -> dict[str, Any]:
    await context.progress(40, "on the way")
    return {"pid": os.getpid(), "thread": threading.get_ident()}
