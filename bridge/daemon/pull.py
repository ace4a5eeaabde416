"""The pull job: claims remote tasks into the local queue.

Claims go to tasks seen pending (``bridge.watch``), within the claim limit
(``bridge.claiming``), on several connections at once (``bridge.fanout``), with a
claim intent recorded first so that reconcile can import a claim whose answer was
lost. A blind claim per type (the probe) finds tasks whose lease ran out.

A burst does not end when its first limit is spent: while workers take tasks (the room
opens again) it claims on, for up to ``TOP_UP_SECONDS``, so that claims keep flowing
between ticks instead of waiting for the next one with every connection idle.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from taskmanager import (
    TaskManagerAuthError,
    TaskManagerConfigError,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerRateLimitError,
)
from taskmanager.exchange import Steps

from ..storage import CLAIM_PLAN_KEY, ClaimIntent
from .claim_budget import ClaimLimit, claim_limit, prefetch_in_use
from .job_state import JobState
from .parallel_calls import Slots, TopUp
from .pending_probe import CLAIM_PATH, LIST_PATH, probe_interval, window_free_at

logger = logging.getLogger("bridge.daemon")

BUSY_LOOK_SECONDS = 0.1  # looks while work comes, on a server that sends no rate limit
BLIND = 1_000_000  # a claim burst with no count to go by: until the limit or an empty answer
WATCH_OFF_AFTER_ERROR = timedelta(minutes=5)
# How long one burst keeps claiming into room opened after it began: long enough to
# carry claims across many ticks, short enough that the other types, the outbox
# backlog check and the look for pending tasks come round every second.
TOP_UP_SECONDS = 1.0


class PullJob(JobState):
    def claim_limit(self, task_type: str) -> int:
        """How many tasks of a type may be claimed now (see ``bridge.claiming``)."""
        return self.claim_plan(task_type).limit

    def claim_plan(self, task_type: str) -> ClaimLimit:
        """The claim limit with its inputs and reason."""
        measured = self.store.recent_duration(task_type)
        config = self.config
        duration = measured or config.default_task_seconds
        fastest = self.client.fastest_answer_seconds()
        return claim_limit(
            prefetch=prefetch_in_use(
                config.prefetch, config.workers, self._claim_width(), fastest, duration
            ),
            workers=config.workers,
            usable_lease=config.lease_seconds - config.lease_margin_seconds,
            duration=duration,
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
        if not self._claiming.is_set() or self.server.paused(now, "pull"):
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
            # A blind claim while watching is a probe: one request (what it finds, the next
            # look sees). Once a probe found a task, the type's next blind claims are full
            # bursts until one comes back empty or fails: a probe claiming on, one after
            # another, held claims to one a round trip until the next look. Without the
            # watch, blind bursts are all there is: full width.
            probe = wanted == BLIND and self._watching(now) and task_type not in self._probe_found
            limit = min(plan.limit, 1 if probe else wanted)
            width = 1 if probe else min(self._claim_width(), limit)
            top_up = None if probe else self._top_up(task_type, plan, wanted)
            claimed, granted, error = self._claim_burst(task_type, limit, now, width, top_up)
            total += claimed
            self.metrics.claimed(task_type, claimed)
            if error is None:
                self.server.ok(now)
                self._after_claims(task_type, claimed, granted, now)
                continue
            self._probe_found.discard(task_type)  # failing claims: single probes again
            if not self._claim_failed(task_type, error, now, tick_started):
                break
        if total:
            logger.info("claimed %d task(s)", total)
        return total

    def _claim_width(self) -> int:
        """Claims in flight at once now: ``connections``, or from the round trip."""
        return self.config.connections_now(self.client.fastest_answer_seconds())

    def _top_up(self, task_type: str, plan: ClaimLimit, wanted: int) -> TopUp:
        """More claims for a burst whose grant is spent: the room workers opened since
        (the plan's ceiling, less what is queued and what is still in flight), never past
        ``wanted`` in all, and nothing once the burst is ``TOP_UP_SECONDS`` old."""
        ceiling = plan.limit + plan.queued  # what may be queued at once (prefetch, lease)
        until = self.monotonic() + TOP_UP_SECONDS

        def top_up(in_flight: int, taken: int) -> int:
            if self.monotonic() >= until or not self._claiming.is_set():
                return 0
            room = ceiling - self.store.queued_count(task_type) - in_flight
            return max(0, min(room, wanted - taken))

        return top_up

    def _watching(self, now: datetime) -> bool:
        return self.config.watch_interval_seconds > 0 and (
            self._watch_off_until is None or now >= self._watch_off_until
        )

    def _look_for_work(self, now: datetime, tick_started: float) -> bool:
        """Refresh the pending counts when a look is due; False when the tick must stop."""
        if not self._watching(now) or (self._next_look is not None and now < self._next_look):
            return True
        if all(self._known.get(task_type, 0) > 0 for task_type in self.config.types):
            return True  # every type still has tasks seen pending to claim: nothing to learn
        if window_free_at(self.client.rate_limit_for(LIST_PATH)) > 0:
            return True  # the list's window is spent: look again when it resets
        self._next_look = now + timedelta(seconds=self.config.watch_interval_seconds)
        try:
            seen = self._watch.look()
        except TaskManagerRateLimitError as exc:
            self.server.pause(now, exc.retry_after, tick_started, "pull")
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
        failed_until = self._claims_failed_until.get(task_type)
        if failed_until is not None and now < failed_until:
            return None  # its last claim failed: not before the back-off, pending or not
        known = self._known.get(task_type, 0)
        if known > 0:
            return known
        due = self._next_pull.get(task_type)
        if due is not None and now < due:
            return None
        return BLIND

    def _after_claims(self, task_type: str, claimed: int, granted: int, now: datetime) -> None:
        """``granted``: the claims the burst was allowed, top-ups included."""
        self._claims_failed_until.pop(task_type, None)
        known = self._known.get(task_type, 0)
        if known > 0:  # claims of tasks seen pending; an empty answer means none are left
            if granted > 0:
                self._known[task_type] = known - claimed if claimed == granted else 0
            if claimed < granted:
                self._probe_found.discard(task_type)
            return
        if claimed > 0 and self._watching(now):
            self._probe_found.add(task_type)
        elif claimed == 0 and granted > 0:
            self._probe_found.discard(task_type)
        if claimed > 0 or granted == 0:  # blind claims found work, or had no room: again soon
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
        self,
        task_type: str,
        limit: int,
        now: datetime,
        width: int = 1,
        top_up: TopUp | None = None,
    ) -> tuple[int, int, TaskManagerError | None]:
        """Claim up to ``limit`` tasks of a type (and what ``top_up`` adds), stopping at
        the first empty answer; the number claimed, the number granted, the error.

        An intent is recorded before the first request, for as many claims as can be in
        flight at once, and deleted once every answer is recorded. When attempts got no
        answer (even ones the client retried) or the burst ended on an error that may
        hide a committed claim (5xx), it stays, for as many claims as may be lost, for
        reconcile to import them.
        """
        if limit <= 0:
            return 0, 0, None
        with self._claims_lock:
            # One per request that can be in flight: a kill mid-burst may orphan them all.
            key = self.store.open_claim_intent(task_type, now, count=min(width, limit))
            unanswered = self.client.unanswered(CLAIM_PATH)
            claimed, granted, error = self._claim_until(task_type, limit, now, width, top_up)
            lost = self.client.unanswered(CLAIM_PATH) - unanswered  # retried or not
            refused = isinstance(error, (TaskManagerRateLimitError, TaskManagerAuthError))
            keep = 0 if error is None or refused else 1  # a 5xx may hide a committed claim
            self.store.set_claim_intent(ClaimIntent(key, task_type, now, max(lost, keep)), now)
        return claimed, granted, error

    def _claim_until(
        self, task_type: str, limit: int, now: datetime, width: int, top_up: TopUp | None
    ) -> tuple[int, int, TaskManagerError | None]:
        """Claim on up to ``width`` connections at once, never more than ``limit``
        requests (and what ``top_up`` grants), and none started after an empty answer."""
        slots = Slots(limit, top_up)
        width = min(width, limit)
        claimers = [self._claimer(task_type, slots, now, width) for _ in range(width)]
        try:
            results = self._claims.run_steps(self.client, claimers, width)
        except TaskManagerConfigError as exc:  # the client was closed (a stop): none sent
            return 0, slots.granted, exc
        errors = [error for _, error in results if error is not None]
        claimed = sum(count for count, _ in results)
        return claimed, slots.granted, (errors[0] if errors else None)

    def _claimer(
        self, task_type: str, slots: Slots, now: datetime, width: int
    ) -> Steps[tuple[int, TaskManagerError | None]]:
        """One connection's claims, one after another, each recorded as it comes."""
        claimed = 0
        try:
            while self._claiming.is_set() and slots.take():
                if window_free_at(self.client.rate_limit_for(CLAIM_PATH), width) > 0:
                    slots.stop()  # the claim window is spent: a claim now would be refused
                    slots.settle()
                    break
                try:
                    task = yield from self.client.calls.claim_task(task_type, self.worker_id)
                    if task is None:
                        slots.stop()
                        break
                    self._record_claim(task, now)
                finally:
                    slots.settle()
                claimed += 1
        except TaskManagerError as exc:
            slots.stop()
            return claimed, exc
        return claimed, None

    def _claim_failed(
        self, task_type: str, error: TaskManagerError, now: datetime, tick_started: float
    ) -> bool:
        """Act on a failed claim; True when the other types may still be claimed.

        The type's next claim waits for the back-off (or the pause) even when tasks
        were seen pending: a claim failing for good must not repeat at every tick."""
        if isinstance(error, TaskManagerRateLimitError):
            self.server.pause(now, error.retry_after, tick_started, "pull")
            return False
        if isinstance(error, TaskManagerAuthError):
            self.server.refused_key(now, str(error))
            self._schedule_pull(task_type, now, found_work=False)  # back off while refused
            self._claims_failed_until[task_type] = self._next_pull[task_type]
            return False
        if isinstance(error, TaskManagerConnectionError):
            self.server.unreachable(now, str(error))
            return False
        logger.warning("claiming %s failed: %s", task_type, error)
        self._schedule_pull(task_type, now, found_work=False)
        self._claims_failed_until[task_type] = self._next_pull[task_type]
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
