"""``Daemon``: runs the ``DaemonJobs`` on an APScheduler background scheduler.

Each job runs alone (``max_instances=1``) and coalesced; the daemon stops on
SIGTERM/SIGINT after one last bounded push. Nothing is lost by stopping at any
point: every result is already in the local database. On SQLite a worker's commit
starts a push at once (``storage.changes``) instead of at the next interval.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType
from typing import Any

from ..errors import DatabaseError, SchemaError
from ..storage import ChangeWatch, check_schema
from ..times import utcnow
from .claim_budget import lease_warnings
from .jobs import DaemonJobs
from .one_daemon import DaemonAlreadyRunning
from .skipped_runs import QuietSkips, SkippedRuns
from .systemd import Notifier

logger = logging.getLogger("bridge.daemon")

PUSH_GAP_SECONDS = 0.02  # pushes started by a commit: at most one per this, batching the rest
# Once commits stop, the watch looks this often: a result stored after a pause waits no
# longer for its push than the interval push (0.1 s by default) would have it wait,
# and the idle daemon wakes 10 times a second for it instead of 50.
QUIET_PUSH_LOOK_SECONDS = 0.1


class Daemon:
    """Runs the daemon's jobs on APScheduler until told to stop."""

    # The job whose every tick tells systemd's watchdog the scheduler is alive: it runs
    # often (reap_interval_seconds) and does no network I/O, so only a hung daemon stops it.
    WATCHDOG_JOB = "reap"

    def __init__(
        self,
        jobs: DaemonJobs,
        clock: Callable[[], datetime] = utcnow,
        notifier: Notifier | None = None,
    ) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.schedulers.background import BackgroundScheduler

        self.jobs = jobs
        self.clock = clock
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._signals = 0
        self.fatal: str | None = None  # why the daemon stopped by itself, if it did
        scheduler_log = logging.getLogger("jobs.scheduler")
        scheduler_log.setLevel(logging.WARNING)  # its INFO is bookkeeping: jobs added, started
        scheduler_log.addFilter(QuietSkips())
        self.scheduler: Any = BackgroundScheduler(
            timezone=timezone.utc,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
            logger=scheduler_log,
        )
        self.skipped = SkippedRuns(jobs.metrics.skipped_run)
        self.scheduler.add_listener(
            lambda event: self.skipped.skipped(event.job_id), EVENT_JOB_MAX_INSTANCES
        )
        config = jobs.config
        # One push at a time, whether the interval or a commit started it; a push that
        # finds another under way has nothing to add (no skipped-run noise).
        self._push_lock = threading.Lock()
        self._push_wanted = threading.Event()
        self._pusher: threading.Thread | None = None
        # Looked at once a push gap, not at the worker's pace: a push goes out at most
        # that often anyway, and each look is a timed wake-up (a quarter of them now).
        self._changes = ChangeWatch(
            jobs.store.engine, interval=PUSH_GAP_SECONDS, quiet_interval=QUIET_PUSH_LOOK_SECONDS
        )
        self._changes.on_change(self._push_wanted.set)
        self._push = self._guarded("push", jobs.push_tick)
        scheduled: list[tuple[str, Callable[[], object], float]] = [
            ("pull", self._guarded("pull", jobs.pull_tick), config.poll_min_seconds),
            ("push", self._push_alone, config.push_interval_seconds),
            ("reap", self._guarded("reap", jobs.reap_tick), config.reap_interval_seconds),
            (
                "reconcile",
                self._guarded("reconcile", jobs.reconcile_tick),
                config.reconcile_interval_seconds,
            ),
        ]
        start = datetime.now(timezone.utc)
        for name, run, seconds in scheduled:
            self.scheduler.add_job(
                run,
                "interval",
                seconds=seconds,
                id=name,
                name=name,
                next_run_time=start,
            )

    def _guarded(self, name: str, tick: Callable[[datetime], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                tick(self.clock())
            except DatabaseError:
                if not self._schema_gone():
                    logger.exception("%s tick failed; it runs again at its next interval", name)
            except DaemonAlreadyRunning as exc:
                self._stop_fatally(f"{exc}; this one stalled past its lease and stops")
            except Exception:
                logger.exception("%s tick failed; it runs again at its next interval", name)
            if name == self.WATCHDOG_JOB:
                # After a failed tick too: a database outage is waited out (promise 6);
                # the watchdog is for a scheduler that stopped ticking.
                self.notifier.watchdog()

        return run

    def _push_alone(self) -> bool:
        """Push unless a push is under way; False when one was (nothing was done)."""
        if not self._push_lock.acquire(blocking=False):
            return False
        try:
            self._push()
        finally:
            self._push_lock.release()
        return True

    def _push_on_change(self) -> None:
        """A commit by another process (a worker's result): push now, not at the next
        interval; commits within ``PUSH_GAP_SECONDS`` go out together (the watch looks
        that often)."""
        while not self._stop.is_set():
            if not self._push_wanted.wait(0.5):
                continue
            self._push_wanted.clear()
            if self._stop.is_set():
                return
            if not self._push_alone():  # the interval's push may have looked too early
                self._push_wanted.set()
                self._stop.wait(PUSH_GAP_SECONDS)

    def _stop_fatally(self, why: str) -> None:
        """Stop for what the daemon cannot outlive (``run_forever`` then returns 1)."""
        if self.fatal is None:
            self.fatal = why
            logger.error("stopping: %s", why)
            self._stop.set()

    def _schema_gone(self) -> bool:
        """After a database error: is the schema itself wrong now (dropped, downgraded,
        replaced by a newer version's)? Then no tick can succeed: stop, saying which
        command fixes it, instead of failing every tick until someone reads the log.
        A database that is merely locked, full or unreachable is not that: keep going."""
        try:
            check_schema(self.jobs.store.engine)
        except SchemaError as exc:
            self._stop_fatally(f"the queue database changed under the daemon: {exc}")
            return True
        except DatabaseError:
            return False
        return False

    def start(self) -> None:
        for warning in lease_warnings(self.jobs.config):
            logger.warning("settings: %s", warning)
        logger.info(
            "bridge started: worker id %s, types %s",
            self.jobs.worker_id,
            ", ".join(self.jobs.config.types),
        )
        self._check_watchdog()
        self.scheduler.start()
        if self._changes.available:
            self._pusher = threading.Thread(
                target=self._push_on_change, daemon=True, name="bridge-push-on-change"
            )
            self._pusher.start()
            self._changes.start()
        self.notifier.ready()

    def _check_watchdog(self) -> None:
        interval = self.jobs.config.reap_interval_seconds
        limit = self.notifier.watchdog_seconds
        if limit is not None and interval > limit / 2:
            logger.warning(
                "settings: reap_interval_seconds (%g s) is more than half of systemd's "
                "WatchdogSec (%g s): the watchdog may restart a healthy daemon",
                interval,
                limit,
            )

    def stop(self) -> None:
        """Stop claiming, let running jobs end, then one last push within the time allowed."""
        self.notifier.stopping()
        self.jobs.stop_claiming()
        self._stop.set()  # also ends the push on change
        self._changes.close()
        if self._pusher is not None:
            # Like the scheduler's running jobs below: a push under way ends first (its
            # requests are bounded by the client's timeouts), so that the last push never
            # runs beside it and the bridge is not closed under it.
            self._pusher.join()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.skipped.flush()
        try:
            if self.fatal is not None:
                return  # no database to push from, or no longer this daemon's to push
            self._last_push()
            self.jobs.role.release()  # the next daemon may start at once
        finally:
            self.jobs.close()  # after the last push, which still uses the connections

    def _last_push(self) -> None:
        deadline = time.monotonic() + self.jobs.config.shutdown_push_seconds
        while time.monotonic() < deadline:
            pending, _ = self.jobs.store.outbox_backlog()
            if not pending or self.jobs.in_outage:
                break
            if not self.jobs.push_tick(self.clock(), ignore_backoff=True):
                break
        self.jobs.push_summary.flush()
        pending, _ = self.jobs.store.outbox_backlog()
        logger.info("bridge stopped; %d outbox row(s) pending (kept for the next start)", pending)

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second signal: exiting now (everything is in the local database)")
            os._exit(1)
        logger.info("signal %d: stopping (claims stop, last push follows)", signum)
        self._stop.set()

    def handle_signals(self) -> None:
        """SIGTERM/SIGINT stop the daemon gracefully from now on (main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run_forever(self) -> int:
        self.handle_signals()
        self.start()
        # Wait in slices: a signal delivered to a scheduler thread only runs its Python
        # handler once the main thread wakes up.
        while not self._stop.wait(0.2):
            pass
        self.stop()
        return 1 if self.fatal is not None else 0
