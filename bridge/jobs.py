"""The daemon's four jobs: pull (claim), push (deliver the outbox), reap, reconcile.

Each is a ``tick(now)`` method (tests call them with a fixed clock); ``Daemon``
(``bridge.daemon``) runs them on a scheduler. Thread-safe: different jobs may run
at once.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from taskmanager import (
    ClaimedTask,
    TaskManagerAuthError,
    TaskManagerClient,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerRateLimitError,
)
from taskmanager.transport import backoff_delay

from .claiming import ClaimLimit, claim_limit
from .config import BridgeConfig
from .contact import ServerContact
from .fanout import Fanout, Slots
from .logs import task_fields
from .metrics import NullMetrics
from .models import OutboxEntry
from .outbox import Outcome, Verdict, apply_outcome, deliver
from .queue import utcnow
from .schema import FinalOutboxStatus
from .storage import Store
from .storage.state import (
    CLAIM_PLAN_KEY,
    FOREIGN_CLAIMS_KEY,
    LAST_TICK_KEY,
    WORKER_ID_KEY,
    ClaimIntent,
    ThrottledState,
)
from .watch import CLAIM_PATH, LIST_PATH, PendingWatch, probe_interval, window_free_at

logger = logging.getLogger("bridge.daemon")

MAX_DERIVED_CONNECTIONS = 8  # the default: one connection per worker, up to this
BUSY_LOOK_SECONDS = 0.2  # looks while work comes, on a server that sends no rate limit
BLIND = 1_000_000  # a claim burst with no count to go by: until the limit or an empty answer
WATCH_OFF_AFTER_ERROR = timedelta(minutes=5)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


@dataclass
class _PushBatch:
    """One push's running record, shared by its chains: verdicts to store together,
    tasks held back, and whether the push must stop."""

    verdicts: list[tuple[int, FinalOutboxStatus, str | None]] = field(default_factory=list)
    held_back: set[int] = field(default_factory=set)  # tasks whose earlier row must go first
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


class Bridge:
    """The daemon's jobs. Thread-safe: the scheduler may run different jobs at once."""

    def __init__(
        self,
        store: Store,
        client: TaskManagerClient,
        config: BridgeConfig,
        *,
        rng: random.Random | None = None,
        metrics: NullMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics or NullMetrics()
        self.store = store
        self.client = client
        self.config = config
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self._claims_lock = threading.Lock()  # a claim burst, or reconcile's import
        self._push_lock = threading.Lock()  # the push back-off, set from delivery threads
        width = config.connections or min(config.workers, MAX_DERIVED_CONNECTIONS)
        self._claims = Fanout(width, "bridge-claim")
        self._deliveries = Fanout(width, "bridge-push")
        self._claiming = threading.Event()
        self._claiming.set()
        self._next_pull: dict[str, datetime] = {}
        self._pull_interval: dict[str, float] = {}
        self._next_push: datetime | None = None
        self._push_failures = 0
        self._backlog_paused = False
        self._risk_logged: set[int] = set()
        self._claim_reasons: dict[str, str] = {}
        self._watch = PendingWatch(client, config.types)
        self._known: dict[str, int] = {}  # pending tasks seen per type, not yet claimed
        self._next_look: datetime | None = None
        self._watch_off_until: datetime | None = None
        self.state = ThrottledState(store)
        self.server = ServerContact(store, self.state, config.api_key_source, monotonic, utcnow())
        self.worker_id = self._stable_worker_id()

    # -- identity and shared state -----------------------------------------------------
    def _stable_worker_id(self) -> str:
        """The remote worker id, fixed in the database on first start.

        Stable across restarts so that our claims stay ours and reconcile finds them.
        """
        known = self.store.get_state(WORKER_ID_KEY)
        if known:
            return known
        chosen = (
            self.config.explicit_worker_id
            or f"{socket.gethostname()}-bridge-{uuid.uuid4().hex[:8]}"
        )
        self.store.set_state(WORKER_ID_KEY, chosen, utcnow())
        return chosen

    def close(self) -> None:
        """Stop the connection threads (the daemon's stop; idle threads cost nothing)."""
        self._claims.close()
        self._deliveries.close()

    @property
    def in_outage(self) -> bool:
        return self.server.in_outage

    def stop_claiming(self) -> None:
        self._claiming.clear()

    # -- pull ----------------------------------------------------------------------------
    def claim_limit(self, task_type: str) -> int:
        """How many tasks of a type may be claimed now (see ``bridge.claiming``)."""
        return self.claim_plan(task_type).limit

    def claim_plan(self, task_type: str) -> ClaimLimit:
        """The claim limit with its inputs and reason."""
        measured = self.store.recent_duration(task_type)
        config = self.config
        return claim_limit(
            prefetch=config.prefetch,
            workers=config.workers,
            usable_lease=config.lease_seconds - config.lease_margin_seconds,
            duration=measured or config.default_task_seconds,
            measured=measured is not None,
            queued=self.store.queued_count(task_type),
            idle_worker=lambda: self.store.running_count() < config.workers,
        )

    def _outbox_too_far_behind(self, now: datetime) -> bool:
        pending, oldest = self.store.outbox_backlog()
        age = (now - oldest).total_seconds() if oldest else 0.0
        behind = (
            pending > self.config.outbox_pause_rows or age > self.config.outbox_pause_age_seconds
        )
        if behind != self._backlog_paused:
            self._backlog_paused = behind
            if behind:
                logger.warning(
                    "claiming paused: %d outbox rows pending, oldest %.0f s old "
                    "(results first, new work second)",
                    pending,
                    age,
                )
            else:
                logger.info("claiming resumed: outbox backlog is back under its limits")
        return behind

    def pull_tick(self, now: datetime) -> int:
        """Claim what the local queue has room for; returns the number claimed.

        Claims go to tasks seen pending (``bridge.watch``); a blind claim per type
        (the probe, for tasks whose lease ran out) runs at an interval that keeps
        idle claims within their share of the server's claim window.
        """
        tick_started = self.monotonic()
        if not self._claiming.is_set() or self.server.paused(now):
            return 0
        if self._outbox_too_far_behind(now) or not self._look_for_work(now, tick_started):
            return 0
        total = 0
        for task_type in self.config.types:
            wanted = self._wanted(task_type, now)
            if wanted is None:
                continue
            plan = self.claim_plan(task_type)
            self._note_claim_plan(task_type, plan, now)
            limit = min(plan.limit, wanted)
            # A blind claim while watching is a probe: one request (what it finds, the next
            # look sees); without the watch, blind bursts are all there is: full width.
            probe = wanted == BLIND and self._watching(now)
            width = 1 if probe else min(self._claims.width, limit)
            claimed, error = self._claim_burst(task_type, limit, now, width)
            total += claimed
            self.metrics.claimed(task_type, claimed)
            if error is None:
                self.server.ok(now)
                self._after_claims(task_type, claimed, limit, now)
            elif not self._claim_failed(task_type, error, now, tick_started):
                break
        if total:
            logger.info("claimed %d task(s)", total)
        return total

    def _watching(self, now: datetime) -> bool:
        return self.config.watch_interval_seconds > 0 and (
            self._watch_off_until is None or now >= self._watch_off_until
        )

    def _look_for_work(self, now: datetime, tick_started: float) -> bool:
        """Refresh the pending counts when a look is due; False when the tick must stop."""
        if not self._watching(now) or (self._next_look is not None and now < self._next_look):
            return True
        if window_free_at(self.client.rate_limit_for(LIST_PATH)) > 0:
            return True  # the list's window is spent: look again when it resets
        self._next_look = now + timedelta(seconds=self.config.watch_interval_seconds)
        try:
            seen = self._watch.look()
        except TaskManagerRateLimitError as exc:
            self.server.pause(now, exc.retry_after, tick_started)
            return False
        except TaskManagerAuthError as exc:
            self.server.refused_key(now, str(exc))
            return False
        except TaskManagerConnectionError as exc:
            self.server.unreachable(now, str(exc))
            return False
        except TaskManagerError as exc:
            logger.warning("looking for pending tasks failed (%s): blind claims for 5 min", exc)
            self._watch_off_until = now + WATCH_OFF_AFTER_ERROR
            return True
        self.server.ok(now)
        self._known = {task_type: seen.get(task_type, 0) for task_type in self.config.types}
        if any(self._known.values()):  # busy: look again soon, as fast as the window allows
            self._next_look = now + timedelta(seconds=self._busy_look_seconds())
        return True

    def _busy_look_seconds(self) -> float:
        window = self.client.rate_limit_for(LIST_PATH)
        pace = 60.0 / window.limit * 1.2 if window and window.limit else BUSY_LOOK_SECONDS
        return max(self.config.poll_min_seconds, pace)

    def _wanted(self, task_type: str, now: datetime) -> int | None:
        """How many claims a type is worth now: what was seen pending, else one blind
        burst when its poll (or probe) is due; ``None``: not now."""
        known = self._known.get(task_type, 0)
        if known > 0:
            return known
        due = self._next_pull.get(task_type)
        if due is not None and now < due:
            return None
        return BLIND

    def _after_claims(self, task_type: str, claimed: int, limit: int, now: datetime) -> None:
        known = self._known.get(task_type, 0)
        if known > 0:  # claims of tasks seen pending; an empty answer means none are left
            if limit > 0:
                self._known[task_type] = known - claimed if claimed == limit else 0
            return
        if claimed > 0 or limit == 0:  # blind claims found work, or had no room: again soon
            self._schedule_pull(task_type, now, found_work=True)
        elif self._watching(now):  # an empty probe: the next one within the idle budget
            self._next_pull[task_type] = now + self._probe_interval()
        else:
            self._schedule_pull(task_type, now, found_work=False)

    def _probe_interval(self) -> timedelta:
        window = self.client.rate_limit_for(CLAIM_PATH)
        return probe_interval(
            len(self.config.types),
            self.config.poll_max_seconds,
            self.config.idle_claim_share,
            window.limit if window is not None else None,
        )

    def _note_claim_plan(self, task_type: str, plan: ClaimLimit, now: datetime) -> None:
        """One log line when the reason for holding claims back changes; the plan in
        ``bridge_state`` for ``status`` and the metrics."""
        changed = self._claim_reasons.get(task_type) != plan.reason
        if changed:
            self._claim_reasons[task_type] = plan.reason
            log = logger.warning if "longer than the lease" in plan.reason else logger.info
            log("claiming %s: %s", task_type, plan.describe())
        self.state.write(CLAIM_PLAN_KEY + task_type, plan.to_json(now), now, force=changed)

    def _claim_burst(
        self, task_type: str, limit: int, now: datetime, width: int = 1
    ) -> tuple[int, TaskManagerError | None]:
        """Claim up to ``limit`` tasks of a type, stopping at the first empty answer.

        An intent is recorded before the first request, for as many claims as can be in
        flight at once, and deleted once every answer is recorded. When attempts got no
        answer (even ones the client retried) or the burst ended on an error that may
        hide a committed claim (5xx), it stays, for as many claims as may be lost, for
        reconcile to import them.
        """
        if limit <= 0:
            return 0, None
        with self._claims_lock:
            # One per request that can be in flight: a kill mid-burst may orphan them all.
            key = self.store.open_claim_intent(task_type, now, count=min(width, limit))
            unanswered = self.client.unanswered(CLAIM_PATH)
            claimed, error = self._claim_until(task_type, limit, now, width)
            lost = self.client.unanswered(CLAIM_PATH) - unanswered  # retried or not
            refused = isinstance(error, (TaskManagerRateLimitError, TaskManagerAuthError))
            keep = 0 if error is None or refused else 1  # a 5xx may hide a committed claim
            self.store.set_claim_intent(ClaimIntent(key, task_type, now, max(lost, keep)), now)
        return claimed, error

    def _claim_until(
        self, task_type: str, limit: int, now: datetime, width: int
    ) -> tuple[int, TaskManagerError | None]:
        """Claim on up to ``connections`` connections at once, never more than ``limit``
        requests, and none started after an empty answer."""
        slots = Slots(limit)
        width = min(width, limit)
        claimer = partial(self._claimer, task_type, slots, now)
        results = self._claims.run([claimer] * width)
        errors = [error for _, error in results if error is not None]
        return sum(claimed for claimed, _ in results), (errors[0] if errors else None)

    def _claimer(
        self, task_type: str, slots: Slots, now: datetime
    ) -> tuple[int, TaskManagerError | None]:
        claimed = 0
        try:
            while self._claiming.is_set() and slots.take():
                if window_free_at(self.client.rate_limit_for(CLAIM_PATH), self._claims.width) > 0:
                    slots.stop()  # the claim window is spent: a claim now would be refused
                    break
                task = self.client.claim_task(task_type=task_type, worker_id=self.worker_id)
                if task is None:
                    slots.stop()
                    break
                self._record_claim(task, now)
                claimed += 1
        except TaskManagerError as exc:
            slots.stop()
            return claimed, exc
        return claimed, None

    def _claim_failed(
        self, task_type: str, error: TaskManagerError, now: datetime, tick_started: float
    ) -> bool:
        """Act on a failed claim; True when the other types may still be claimed."""
        if isinstance(error, TaskManagerRateLimitError):
            self.server.pause(now, error.retry_after, tick_started)
            return False
        if isinstance(error, TaskManagerAuthError):
            self.server.refused_key(now, str(error))
            self._schedule_pull(task_type, now, found_work=False)  # back off while refused
            return False
        if isinstance(error, TaskManagerConnectionError):
            self.server.unreachable(now, str(error))
            return False
        logger.warning("claiming %s failed: %s", task_type, error)
        self._schedule_pull(task_type, now, found_work=False)
        return True

    def _schedule_pull(self, task_type: str, now: datetime, *, found_work: bool) -> None:
        """Adaptive polling: again at once while work comes, doubling up to the cap when idle."""
        if found_work:
            interval = self.config.poll_min_seconds
        else:
            previous = self._pull_interval.get(task_type, self.config.poll_min_seconds / 2)
            interval = min(self.config.poll_max_seconds, previous * 2)
        self._pull_interval[task_type] = interval
        self._next_pull[task_type] = now + timedelta(seconds=0 if found_work else interval)

    # -- push ----------------------------------------------------------------------------
    def push_tick(self, now: datetime, *, ignore_backoff: bool = False) -> int:
        """Deliver due outbox rows oldest first; returns the number delivered.

        ``ignore_backoff`` tries at once even while backing off from an outage
        (the shutdown's last push).
        """
        tick_started = self.monotonic()
        backing_off = self._next_push is not None and now < self._next_push
        if self.server.paused(now) or (backing_off and not ignore_backoff):
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
            if entry.task_id is not None and entry.task_id in batch.held_back:
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
            self.server.pause(now, outcome.retry_after, tick_started)
            return False
        self.server.ok(now)
        final, reason = apply_outcome(self.store, entry, outcome, now), outcome.reason
        if final is None:  # RETRY
            final, reason = self._retry_later(entry, outcome, now)
            if entry.task_id is not None:
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
        verdicts: list[tuple[int, FinalOutboxStatus, str | None]],
    ) -> None:
        """Queue a row's final status for the batch's one transaction; count it; log it."""
        verdicts.append((entry.id, status, reason))
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

    # -- reap ----------------------------------------------------------------------------
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
                    _iso(task.lease_expires_at),
                    extra=task_fields(task.id, task.remote_id, task.type),
                )
        self.state.write(LAST_TICK_KEY, _iso(now), now)
        return expired, requeued, lost

    # -- reconcile -----------------------------------------------------------------------
    def reconcile_tick(self, now: datetime) -> int:
        """Import claims of ours that an open intent explains; report the others."""
        tick_started = self.monotonic()
        if self.server.paused(now):
            return 0
        try:
            with self._claims_lock:  # never while a burst's answers are being recorded
                imported, foreign = self._import_orphans(now)
        except TaskManagerRateLimitError as exc:
            self.server.pause(now, exc.retry_after, tick_started)
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

    def _record_claim(self, claim: ClaimedTask, now: datetime) -> bool:
        task, changed = self.store.insert_claimed(claim, self.config.lease_seconds, now)
        if changed and task.status == "done":
            logger.warning(
                "task %d (remote %d, %s) was claimed again while its result is kept here: "
                "sending that result for the new claim (attempt %d) instead of running it again",
                task.id,
                claim.id,
                task.type,
                claim.attempts,
                extra=task_fields(task.id, claim.id, task.type),
            )
        return changed

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
