"""What one handler call came to (``Ran``), whichever engine or process ran it.

The thread engine runs a call on its slot's own thread (``time_limits`` keeps the
limit), the event-loop engine on the loop, ``--pool process`` in a handler process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

RanKind = Literal["ok", "error", "timeout"]


@dataclass(frozen=True)
class Ran:
    """What one handler call came to: its value, what it raised, or the time limit."""

    kind: RanKind
    value: Any = None
    error: BaseException | None = None
    # The handler's own writes for its result's transaction (``write_with_result``).
    writes: tuple[Callable[[Any], Any], ...] = ()
    # The traceback, when ``error`` cannot carry its own (it came from another process).
    detail: str | None = None


def run_call(call: Callable[[], Any]) -> Ran:
    """Whatever the call raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is its
    own outcome: in a worker thread neither can come from a signal (Python raises those in
    the main thread only), so they belong to the handler's task, not to the process."""
    try:
        return Ran("ok", call())
    except BaseException as exc:
        return Ran("error", error=exc)
