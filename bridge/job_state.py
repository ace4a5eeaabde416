"""What the daemon's jobs share: their state, and recording a claim (pull and reconcile).

Each job lives in its own module (``pull``, ``push``, ``reconcile``) as a mixin of
``bridge.jobs.Bridge``, which sets this state up.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime

from taskmanager import (
    ClaimedTask,
    TaskManagerClient,
)

from .config import BridgeConfig
from .contact import ServerContact
from .fanout import Fanout
from .logs import task_fields
from .metrics import NullMetrics
from .storage import Store
from .storage.state import (
    ThrottledState,
)
from .watch import PendingWatch

logger = logging.getLogger("bridge.daemon")


class JobState:
    # The state every job shares (set by ``Bridge.__init__``).
    store: Store
    client: TaskManagerClient
    config: BridgeConfig
    metrics: NullMetrics
    rng: random.Random
    monotonic: Callable[[], float]
    state: ThrottledState
    server: ServerContact
    worker_id: str
    _claims_lock: threading.Lock
    _push_lock: threading.Lock
    _claims: Fanout
    _deliveries: Fanout
    _claiming: threading.Event
    _next_pull: dict[str, datetime]
    _claims_failed_until: dict[str, datetime]  # a failed claim's back-off, seen tasks or not
    _pull_interval: dict[str, float]
    _next_push: datetime | None
    _push_failures: int
    _backlog_paused: bool
    _risk_logged: set[int]
    _claim_reasons: dict[str, str]
    _watch: PendingWatch
    _known: dict[str, int]
    _next_look: datetime | None
    _watch_off_until: datetime | None

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
