"""Runs of a job skipped because its previous run is still going (a slow server makes
every job outlive its interval): counted, and said at most once a minute.

APScheduler logs each skip as a warning, twice a second per job during an
outage; that drowned the one line that mattered (the outage's reason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger("bridge.daemon")

SKIPPED_MESSAGE = "maximum number of running instances reached"


class QuietSkips(logging.Filter):
    """Drops the scheduler's per-skip warning; ``SkippedRuns`` reports skips instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return SKIPPED_MESSAGE not in str(record.msg)


class SkippedRuns:
    """Counts skipped runs per job and logs a summary at most every ``every`` seconds."""

    def __init__(
        self,
        on_skip: Callable[[str], None],
        every: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_skip = on_skip  # the metric
        self.every = every
        self.monotonic = monotonic
        self._since_summary: Counter[str] = Counter()
        self._last_summary = monotonic()
        self._lock = threading.Lock()

    def skipped(self, job: str) -> None:
        self.on_skip(job)
        with self._lock:
            self._since_summary[job] += 1
            due = self.monotonic() - self._last_summary >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        """Log what was skipped since the last summary, if anything was."""
        with self._lock:
            counts, self._since_summary = self._since_summary, Counter()
            seconds = self.monotonic() - self._last_summary
            self._last_summary = self.monotonic()
        if counts:
            runs = ", ".join(f"{job} {n}" for job, n in sorted(counts.items()))
            logger.info(
                "runs skipped in the last %.0f s while the previous run was still going: %s "
                "(each job runs alone; a slow or silent server delays the next run)",
                seconds,
                runs,
            )
