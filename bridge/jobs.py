"""The daemon's four jobs: pull (claim), push (deliver the outbox), reap, reconcile.

Each is a ``tick(now)`` method (tests call them with a fixed clock) of ``Bridge``;
pull, push and reconcile live in their own modules. ``Daemon`` (``bridge.daemon``)
runs them on a scheduler. Thread-safe: different jobs may run at once.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from taskmanager import (
    TaskManagerClient,
)

from .config import BridgeConfig
from .contact import ServerContact
from .fanout import Fanout
from .logs import task_fields
from .metrics import NullMetrics
from .pull import MAX_DERIVED_CONNECTIONS, PullJob
from .push import PushJob
from .queue import utcnow
from .reconcile import ReconcileJob
from .storage import Store
from .storage.state import (
    LAST_TICK_KEY,
    WORKER_ID_KEY,
    ThrottledState,
)
from .watch import PendingWatch

logger = logging.getLogger("bridge.daemon")


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


class Bridge(PullJob, PushJob, ReconcileJob):
    """The daemon's jobs, over one store and one client."""

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
        self._claims_failed_until: dict[str, datetime] = {}
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
