"""The push job: delivers the outbox, each task's rows in order, tasks side by side.

Rows of no task (registrations and creates) are ordered per type name: a type's
registration goes before the creates behind it; creates need no order among
themselves (the server deduplicates them), so one waiting for its retry, or one
refused for good, holds back no other create.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from taskmanager.exchange import Steps
from taskmanager.transport import backoff_delay

from ..logs import task_fields
from ..models import FinalOutboxStatus, OutboxEntry
from ..storage import SettledRow
from .delivery import Outcome, Verdict, apply_outcome, delivery
from .job_state import JobState

logger = logging.getLogger("bridge.daemon")


@dataclass
class _PushBatch:
    """One push's running record, shared by its chains: verdicts to store together,
    tasks held back, and whether the push must stop."""

    verdicts: list[SettledRow] = field(default_factory=list)
    # Rows left for a later attempt: what must follow them waits too (``must_follow``).
    retrying: set[int] = field(default_factory=set)
    delivered: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _chain_key(entry: OutboxEntry) -> tuple[str, int | str]:
    """The rows that keep an order among them: a task's, or a type's registration and
    creates (the row of a task since pruned goes alone, as ``pending_outbox`` sees it)."""
    if entry.task_id is not None:
        return ("task", entry.task_id)
    name = entry.payload.get("name") or entry.payload.get("type")
    return ("type", str(name)) if name is not None else ("row", entry.id)


def must_follow(earlier: OutboxEntry, later: OutboxEntry) -> bool:
    """Whether ``later`` (of the same chain) may go only once ``earlier`` went: always,
    except between two creates, which the server deduplicates and which need no order.
    ``pending_outbox`` applies the same rule to rows waiting for their retry."""
    return not (earlier.kind == later.kind == "create_task")


def _chains(entries: list[OutboxEntry]) -> list[list[OutboxEntry]]:
    """Rows grouped so that each group goes out in order, and groups side by side: one
    per task, and one per type for the rows of no task (a type's registration before its
    creates), so that one type's troubles never hold up another's creates."""
    chains: dict[tuple[str, int | str], list[OutboxEntry]] = {}
    for entry in entries:
        chains.setdefault(_chain_key(entry), []).append(entry)
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
            deliveries = [
                self._deliver_chain(chain, now=now, started=tick_started, batch=batch)
                for chain in chains
            ]
            width = self.config.connections_now(self.client.fastest_answer_seconds())
            self._deliveries.run_steps(self.client, deliveries, width)
            if not batch.stopped.is_set():
                with self._push_lock:
                    self._push_failures = 0
                    self._next_push = None
        finally:
            self.store.settle_outbox_many(batch.verdicts, now)
        self.push_summary.pushed(batch.delivered)
        return batch.delivered

    def _deliver_chain(
        self, chain: list[OutboxEntry], *, now: datetime, started: float, batch: _PushBatch
    ) -> Steps[None]:
        """One chain's rows in order: a row that must be tried again holds back what must
        follow it (``must_follow``: a task's later rows, a type's creates behind its
        registration), and what is held back holds back its own followers; an outage or
        a 429 stops every chain."""
        waiting: list[OutboxEntry] = []
        for entry in chain:
            if batch.stopped.is_set():
                return
            if any(must_follow(earlier, entry) for earlier in waiting):
                waiting.append(entry)
                continue
            outcome = yield from delivery(entry, self.client.calls)
            if not self._apply(entry, outcome, now, started, batch):
                batch.stopped.set()
                return
            if entry.id in batch.retrying:
                waiting.append(entry)

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
            if final is None:
                with batch.lock:
                    batch.retrying.add(entry.id)
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
