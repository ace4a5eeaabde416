"""What the daemon's jobs share: their state, declared and set up here, the remote
worker id, and recording a claim (pull and reconcile).

Each job lives in its own module (``pull``, ``push``, ``reconcile``, ``reap``) as a
class over this state; ``jobs.DaemonJobs`` is all of them.
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
    ClaimedTask,
    TaskManagerClient,
)

from ..config import BridgeConfig
from ..logs import task_fields
from ..storage import WORKER_ID_KEY, Store, ThrottledState
from ..times import utcnow
from .metrics_sink import MetricsSink
from .one_daemon import DaemonRole
from .parallel_calls import Fanout
from .pending_probe import PendingWatch
from .push_summary import PushSummary
from .server_contact import ServerContact

logger = logging.getLogger("bridge.daemon")


class JobState:
    """The state every job shares, over one store and one client."""

    def __init__(
        self,
        store: Store,
        client: TaskManagerClient,
        config: BridgeConfig,
        *,
        rng: random.Random | None = None,
        metrics: MetricsSink | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics or MetricsSink()
        self.store = store
        self.client = client
        self.config = config
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self._claims_lock = threading.Lock()  # a claim burst, or reconcile's import
        self._push_lock = threading.Lock()  # the push back-off, set from delivery threads
        width = config.most_connections
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
        self._probe_found: set[str] = set()  # types whose last blind claim found a task
        self._next_look: datetime | None = None
        self._watch_off_until: datetime | None = None
        self._workers_pruned: datetime | None = None  # the reap job's last forgetting
        # The role first: a second daemon on this queue and worker id must change nothing.
        self.worker_id = self._stable_worker_id()
        self.role = DaemonRole(store, self.worker_id, config.reap_interval_seconds)
        self.role.take(utcnow())
        if store.get_state(WORKER_ID_KEY) != self.worker_id:  # what status shows
            store.set_state(WORKER_ID_KEY, self.worker_id, utcnow())
        self.state = ThrottledState(store)
        self.server = ServerContact(store, self.state, config.api_key_source, monotonic, utcnow())
        # During an outage its one "outage began" line speaks for every failed request.
        client.quiet_retries_while(lambda: self.server.in_outage)
        self.push_summary = PushSummary(monotonic)

    # -- identity and shared state -----------------------------------------------------
    def _stable_worker_id(self) -> str:
        """The remote worker id: the one the operator chose (``TASKMANAGER_WORKER_ID``,
        ``[taskmanager] worker_id``), else the one this database keeps, else one chosen
        now and kept (the first of two daemons starting together wins: both then hold
        one id, and the role refuses the second). Stable across restarts so that our
        claims stay ours and reconcile finds them; daemons of one PostgreSQL queue may each
        choose their own."""
        if self.config.explicit_worker_id:
            return self.config.explicit_worker_id
        known = self.store.get_state(WORKER_ID_KEY)
        if known:
            return known
        chosen = f"{socket.gethostname()}-bridge-{uuid.uuid4().hex[:8]}"
        return self.store.keep_first_state(WORKER_ID_KEY, chosen, utcnow())

    def close(self) -> None:
        """Stop the connection threads (the daemon's stop; idle threads cost nothing)."""
        self._claims.close()
        self._deliveries.close()

    @property
    def in_outage(self) -> bool:
        return self.server.in_outage

    def stop_claiming(self) -> None:
        self._claiming.clear()

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
