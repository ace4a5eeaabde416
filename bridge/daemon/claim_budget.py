"""How many remote tasks of a type the daemon may claim now, and why not more.

A claimed task that cannot start before its lease (less the margin) runs out is
work taken from other bridges for nothing, so claims are bounded by what the
local workers can start in time at the measured task duration. That bound must
never stop claiming for good: a type whose tasks are slower than the lease
allows is still claimed one task at a time while a local worker is idle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from ..config import BridgeConfig


@dataclass(frozen=True)
class ClaimLimit:
    """The limit and its inputs, as ``status`` and the log show them."""

    limit: int
    queued: int
    startable: int
    duration: float
    measured: bool  # False: ``default_task_seconds``, nothing finished yet
    reason: str  # why the limit is below the prefetch room ("" when it is not)

    def to_json(self, now: datetime) -> str:
        return json.dumps({**asdict(self), "at": now.isoformat()})

    def describe(self) -> str:
        source = "measured" if self.measured else "assumed (default_task_seconds)"
        return (
            f"limit {self.limit} ({self.reason or 'prefetch room'}; {self.queued} queued, "
            f"{self.startable} startable in the lease at {self.duration:.1f} s a task, {source})"
        )


def claim_limit(
    *,
    prefetch: int,
    workers: int,
    usable_lease: float,
    duration: float,
    measured: bool,
    queued: int,
    idle_worker: Callable[[], bool],
) -> ClaimLimit:
    """The number of tasks to claim; ``idle_worker`` is asked only when the lease bound is 0."""
    startable = math.floor(workers * usable_lease / max(duration, 0.001))
    room = prefetch - queued
    limit = min(room, startable - queued)
    reason = ""
    if limit < room:
        reason = (
            f"lease: {workers} worker(s) start {startable} task(s) of {duration:.1f} s "
            f"within {usable_lease:.0f} s"
        )
    if limit <= 0 and queued == 0 and idle_worker():
        limit = 1
        reason = (
            f"tasks take {duration:.1f} s, longer than the lease leaves a worker "
            f"({usable_lease:.0f} s): one at a time for an idle worker"
        )
    return ClaimLimit(max(0, limit), queued, startable, duration, measured, reason)


def prefetch_in_use(
    prefetch: int, workers: int, claim_width: int, fastest_answer: float | None, duration: float
) -> int:
    """``prefetch``, or more when the workers finish more tasks than that while one claim
    travels (``fastest_answer``): tasks on hand for that long, up to one per claim in
    flight (``claim_width``), so that claims on every connection find room."""
    if fastest_answer is None:
        return prefetch
    during_a_claim = math.ceil(workers * fastest_answer / max(duration, 0.001))
    return max(prefetch, min(claim_width, during_a_claim))


def lease_warnings(config: BridgeConfig) -> list[str]:
    """Settings under which tasks cannot finish within the server's lease, and what to change."""
    usable = config.lease_seconds - config.lease_margin_seconds
    if config.default_task_seconds <= usable:
        return []
    return [
        f"default_task_seconds ({config.default_task_seconds:g} s) is longer than "
        f"lease_seconds - lease_margin_seconds ({usable:g} s): a task could not finish "
        "within the server's lease, so the daemon claims one task at a time for an idle "
        "worker. Set lease_seconds to the server's claim timeout (300 s by default), or "
        "lower default_task_seconds to a real task's duration."
    ]
