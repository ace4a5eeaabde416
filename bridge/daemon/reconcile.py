"""The reconcile job: imports claims of ours that a claim intent explains, and reports
claims made with our worker id that this bridge did not make (a shared worker id).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from taskmanager import (
    ClaimedTask,
    TaskManagerAuthError,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerRateLimitError,
)

from ..storage import FOREIGN_CLAIMS_KEY
from .job_state import JobState

logger = logging.getLogger("bridge.daemon")


class ReconcileJob(JobState):
    def reconcile_tick(self, now: datetime) -> int:
        """Import claims of ours that an open intent explains; report the others."""
        tick_started = self.monotonic()
        if self.server.paused(now, "pull"):
            return 0
        try:
            with self._claims_lock:  # never while a burst's answers are being recorded
                imported, foreign = self._import_orphans(now)
        except TaskManagerRateLimitError as exc:
            self.server.pause(now, exc.retry_after, tick_started, "pull")
            return 0
        except TaskManagerAuthError as exc:
            self.server.refused_key(now, str(exc))
            return 0
        except TaskManagerConnectionError as exc:
            self.server.unreachable(now, str(exc))
            return 0
        except TaskManagerError as exc:
            logger.warning("reconcile failed: %s", exc)
            return 0
        self.server.ok(now)
        self._drop_stale_intents(now)
        self._report_foreign_claims(foreign, now)
        if imported:
            logger.warning("reconciled %d orphan claim(s) held by %s", imported, self.worker_id)
        return imported

    def _import_orphans(self, now: datetime) -> tuple[int, int]:
        """(claims imported, claims by our worker id that no intent of ours explains)."""
        intents = {intent.key: intent for intent in self.store.claim_intents()}
        imported = foreign = 0
        for row in self.client.list_tasks(status="claimed", page_size=100):
            if row.claimed_by != self.worker_id:
                continue
            local = self.store.get_task_by_remote_id(row.id)
            if local is not None and (local.remote_attempt or 0) >= row.attempts:
                continue
            intent = next((i for i in intents.values() if i.task_type == row.type), None)
            if intent is None:
                foreign += 1
                continue
            used = dataclasses.replace(intent, count=intent.count - 1)
            if used.count:
                intents[intent.key] = used
            else:
                del intents[intent.key]
            imported += self._import_claim(row.id, intent.opened_at, now)
            self.store.set_claim_intent(used, now)
        return imported, foreign

    def _import_claim(self, remote_id: int, asked_at: datetime, now: datetime) -> int:
        full = self.client.get_task(remote_id)
        claim = ClaimedTask(
            id=full.id,
            type=full.type,
            params=full.params or {},
            attempts=full.attempts,
            priority=full.priority,
            worker_id=self.worker_id,
            claimed_at=asked_at,  # our clock: the server's timestamps are data only
        )
        return int(self._record_claim(claim, now))

    def _drop_stale_intents(self, now: datetime) -> None:
        """An intent older than the lease explains nothing any more: its claim, if there
        was one, has been free for anyone to take since."""
        lease = timedelta(seconds=self.config.lease_seconds)
        for intent in self.store.claim_intents():
            if now - intent.opened_at > lease:
                self.store.delete_state(intent.key)

    def _report_foreign_claims(self, foreign: int, now: datetime) -> None:
        known = self.store.get_state(FOREIGN_CLAIMS_KEY)
        if foreign and not known:
            logger.error(
                "%d task(s) on the server are claimed by worker id %s but unknown to this "
                "bridge: another bridge uses the same worker id (TASKMANAGER_WORKER_ID or "
                "[taskmanager] worker_id must be unique per bridge), or this database lost "
                "them. They are not run here.",
                foreign,
                self.worker_id,
            )
        if foreign:
            self.store.set_state(FOREIGN_CLAIMS_KEY, str(foreign), now)
        elif known:
            logger.info("no claims of worker id %s are unknown here any more", self.worker_id)
            self.store.delete_state(FOREIGN_CLAIMS_KEY)
