"""The handler the crash harness's worker processes run (imported by path tests.faults.handlers).

It records each run (start and end, with the process id) in the file named by
CRASH_RUN_LOG, one O_APPEND line at a time, so the harness can check that no
two runs of one task overlapped, even across killed processes.
"""

from __future__ import annotations

import os
import time
from typing import Any


def expected(params: dict[str, Any]) -> dict[str, Any]:
    return {"n": params["n"], "square": params["n"] ** 2}


def _log(event: str, n: int) -> None:
    line = f"{os.getpid()} {event} {n} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["CRASH_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def compute(params: dict[str, Any]) -> dict[str, Any]:
    _log("start", params["n"])
    time.sleep(0.3 if params["n"] % 4 == 0 else 0.02 + (params["n"] % 5) * 0.01)
    result = expected(params)
    _log("end", params["n"])
    return result


POISONS = ("set", "nan", "exit", "interrupt")


def compute_or_poison(params: dict[str, Any]) -> Any:
    """``compute``, or for a task with a ``poison`` param what users' bugs do: a result that
    is not JSON, ``sys.exit()``, ``KeyboardInterrupt``."""
    poison = params.get("poison")
    if poison == "set":
        return {"seen": {params["n"]}}
    if poison == "nan":
        return {"score": float("nan")}
    if poison == "exit":
        raise SystemExit(1)
    if poison == "interrupt":
        raise KeyboardInterrupt
    return compute(params)


def descriptions(params: dict[str, Any]) -> dict[str, Any]:
    """A scraper's result: ``count`` video descriptions. 200 of them are about 70 KB, more
    than the server stores (65,535 bytes); a few are an ordinary result."""
    text = "A video about the day we tried every recipe in the book, " * 6
    return {"videos": [{"n": i, "description": text} for i in range(params["count"])]}


async def descriptions_async(params: dict[str, Any]) -> dict[str, Any]:
    """``descriptions`` as a coroutine: the worker runs it on its event loop."""
    return descriptions(params)
