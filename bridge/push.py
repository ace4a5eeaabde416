"""The push job: delivers the outbox, each task's rows in order, tasks side by side."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from taskmanager.transport import backoff_delay

from .job_state import JobState
from .logs import task_fields
from .models import OutboxEntry
from .outbox import Outcome, Verdict, apply_outcome, deliver
from .schema import FinalOutboxStatus
from .storage.outbox import SettledRow

logger = logging.getLogger("bridge.daemon")


@dataclass
class _PushBatch:
    """One push's running record, shared by its chains: verdicts to store together,
    tasks held back, and whether the push must stop."""

    verdicts: list[SettledRow] = field(default_factory=list)
    # Tasks (None: the rows of no task) whose earlier row must go first.
    held_back: set[int | None] = field(default_factory=set)
    delivered: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _chains(entries: list[OutboxEntry]) -> list[list[OutboxEntry]]:
    """Rows grouped so that each group goes out in order, and groups side by side: one
    per task, and one for the rows of no task (a type's registration before its tasks)."""
    chains: dict[int | None, list[OutboxEntry]] = {}
    for entry in entries:
        chains.setdefault(entry.task_id, []).append(entry)
    return list(chains.values())


class PushJob(JobState):
    def push_tick(self, now: datetime, *, ignore_backoff: bool = False) -> int:
        """Deliver due outbox rows oldest first; returns the number delivered.

        ``ignore_backoff`` tries at once even while backing off from an outage
        (the shutdown's last push).
        """
        tick_started = self.monotonic()
        backing_off = self._next_push is not None and now < self._next_push
        if self.server.paused(now, "push") or (backing_off and not ignore_backoff):
            return 0
        batch = _PushBatch()
        try:
            chains = _chains(self.store.pending_outbox(now, self.config.push_batch))
            deliver_chain = partial(self._deliver_chain, now=now, started=tick_started, batch=batch)
            self._deliveries.run([partial(deliver_chain, chain) for chain in chains])
            if not batch.stopped.is_set():
                with self._push_lock:
                    self._push_failures = 0
                    self._next_push = None
        finally:
            self.store.settle_outbox_many(batch.verdicts, now)
        if batch.delivered:
            logger.info("delivered %d outbox row(s)", batch.delivered)
        return batch.delivered

    def _deliver_chain(
        self, chain: list[OutboxEntry], *, now: datetime, started: float, batch: _PushBatch
    ) -> None:
        """One task's rows in order (or the rows of no task, in order): a row that must be
        tried again holds back the rest; an outage or a 429 stops every chain."""
        for entry in chain:
            if batch.stopped.is_set():
                return
            if not self._apply(entry, deliver(entry, self.client), now, started, batch):
                batch.stopped.set()
                return
            if entry.task_id in batch.held_back:
                return

    def _apply(
        self,
        entry: OutboxEntry,
        outcome: Outcome,
        now: datetime,
        tick_started: float,
        batch: _PushBatch,
    ) -> bool:
        """Act on one row's outcome; False when the push must stop (outage, 429)."""
        if outcome.verdict in (Verdict.OUTAGE, Verdict.AUTH_FAILED):
            if outcome.verdict is Verdict.OUTAGE:
                self.server.unreachable(now, outcome.reason or "no answer")
            else:
                self.server.refused_key(now, outcome.reason or "refused")
            with self._push_lock:
                delay = backoff_delay(
                    self._push_failures, 1.0, self.config.push_backoff_max_seconds, self.rng
                )
                self._push_failures += 1
                self._next_push = now + timedelta(seconds=delay)
            return False
        if outcome.verdict is Verdict.RATE_LIMITED:
            self.server.pause(now, outcome.retry_after, tick_started, "push")
            return False
        self.server.ok(now)
        final, reason = apply_outcome(self.store, entry, outcome, now), outcome.reason
        if final is None:  # RETRY
            final, reason = self._retry_later(entry, outcome, now)
            batch.held_back.add(entry.task_id)
        if final is not None:
            self._record(entry, final, reason, batch.verdicts)
            if final == "delivered":
                with batch.lock:
                    batch.delivered += 1
        return True

    def _retry_later(
        self, entry: OutboxEntry, outcome: Outcome, now: datetime
    ) -> tuple[FinalOutboxStatus | None, str | None]:
        """Schedule the row's next attempt; "dead" once it has had all its attempts."""
        if entry.attempts + 1 >= self.config.outbox_max_attempts:
            return "dead", f"gave up after {entry.attempts + 1} attempts: {outcome.reason}"
        delay = backoff_delay(entry.attempts, 1.0, self.config.push_backoff_max_seconds, self.rng)
        self.store.retry_outbox_at(
            entry.id, now + timedelta(seconds=delay), outcome.reason or "retry"
        )
        self.metrics.retried(entry.kind)
        return None, outcome.reason

    def _record(
        self,
        entry: OutboxEntry,
        status: FinalOutboxStatus,
        reason: str | None,
        verdicts: list[SettledRow],
    ) -> None:
        """Queue a row's final status for the batch's one transaction; count it; log it."""
        verdicts.append((entry.id, status, reason, entry.created_at))
        self.metrics.settled(entry.kind, status)
        if status == "delivered":
            return
        task = self.store.get_task(entry.task_id) if entry.task_id is not None else None
        task_type = task.type if task else entry.payload.get("type") or entry.payload.get("name")
        log = logger.error if status == "dead" else logger.warning
        log(
            "outbox row %d (%s, task %s, remote %s, %s) %s: %s",
            entry.id,
            entry.kind,
            entry.task_id,
            entry.remote_id,
            task_type,
            "is dead" if status == "dead" else "superseded",
            reason,
            extra=task_fields(entry.task_id, entry.remote_id, task_type, outbox_id=entry.id),
        )
