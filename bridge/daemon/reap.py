"""The reap job: what can no longer run goes, what a vanished worker held comes back.

Queued remote tasks whose lease ends within the margin are expired (no worker may
start them); running tasks whose local lock ran out (their worker died) are
re-queued while the lease allows, expired otherwise; a task still running close to
its lease's end is named once. Its tick also marks the daemon alive (``LAST_TICK_KEY``,
read by ``health``) and is the systemd watchdog's heartbeat.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from ..logs import task_fields
from ..storage import LAST_TICK_KEY
from ..times import iso
from .job_state import JobState

logger = logging.getLogger("bridge.daemon")


WORKERS_KEPT = timedelta(days=1)  # a worker row silent this long is forgotten
WORKERS_PRUNED_EVERY = timedelta(minutes=10)


class ReapJob(JobState):
    def reap_tick(self, now: datetime) -> tuple[int, int, int]:
        """(expired before start, re-queued after a worker vanished, expired while running)."""
        self.role.renew(now)  # another daemon took over while this one stalled: it stops
        self._forget_old_workers(now)
        margin = self.config.lease_margin_seconds
        expired = self.store.expire_unstartable(margin, now)
        requeued, lost = self.store.requeue_stale_locks(margin, now)
        if expired:
            logger.warning(
                "%d queued task(s) expired: their lease ran out before a worker started them",
                expired,
            )
        if requeued or lost:
            logger.warning("worker locks ran out: %d task(s) re-queued, %d expired", requeued, lost)
        for task in self.store.leases_at_risk(margin, now):
            if task.id not in self._risk_logged:
                self._risk_logged.add(task.id)
                logger.warning(
                    "lease at risk: task %d (remote %s, %s) still running, lease ends %s",
                    task.id,
                    task.remote_id,
                    task.type,
                    iso(task.lease_expires_at),
                    extra=task_fields(task.id, task.remote_id, task.type),
                )
        self.state.write(LAST_TICK_KEY, now.isoformat(), now)
        return expired, requeued, lost

    def _forget_old_workers(self, now: datetime) -> None:
        """Worker rows whose last beat is a day old (stopped or lost long ago) go, at most
        every ten minutes."""
        if self._workers_pruned is not None and now - self._workers_pruned < WORKERS_PRUNED_EVERY:
            return
        self._workers_pruned = now
        self.store.prune_workers(now - WORKERS_KEPT)
