"""The reap job: what can no longer run goes, what a vanished worker held comes back.

Queued remote tasks whose lease ends within the margin are expired (no worker may
start them); running tasks whose local lock ran out (their worker died) are
re-queued while the lease allows, expired otherwise; a task still running close to
its lease's end is named once. Its tick also marks the daemon alive (``LAST_TICK_KEY``,
read by ``health``) and is the systemd watchdog's heartbeat.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ..logs import task_fields
from ..storage import LAST_TICK_KEY
from ..times import iso
from .job_state import JobState

logger = logging.getLogger("bridge.daemon")


class ReapJob(JobState):
    def reap_tick(self, now: datetime) -> tuple[int, int, int]:
        """(expired before start, re-queued after a worker vanished, expired while running)."""
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
