"""What the daemon knows of the server right now, from the last answer (or its
absence), kept per daemon start: the state of contact and the 429 pause.

Outage (no answer) and refused authentication are different states: the first
waits for the network, the second for an operator to fix the key, and telling
them apart is what lets ``status`` and ``health`` say which.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ..storage import CONTACT_KEY, LAST_CONTACT_KEY, Store, ThrottledState

logger = logging.getLogger("bridge.daemon")

ContactState = Literal["unknown", "ok", "outage", "auth_failed"]
PausedJob = Literal["pull", "push"]  # reconcile lists on the looks' window: "pull"
# When the last 429's Retry-After ends (ISO time): read by ``status`` and the dashboard.
RATE_LIMITED_KEY = "rate_limited_until"


@dataclass(frozen=True)
class Contact:
    state: ContactState
    since: datetime
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"state": self.state, "since": self.since.isoformat(), "reason": self.reason}
        )

    @classmethod
    def from_json(cls, text: str | None) -> Contact | None:
        if not text:
            return None
        data: dict[str, Any] = json.loads(text)
        return cls(data["state"], datetime.fromisoformat(data["since"]), data.get("reason", ""))


class ServerContact:
    """The daemon's one view of the server, shared by its jobs (thread-safe)."""

    def __init__(
        self,
        store: Store,
        state: ThrottledState,
        key_source: str,
        monotonic: Callable[[], float],
        now: datetime,
    ) -> None:
        self.store = store
        self.state = state
        self.key_source = key_source
        self.monotonic = monotonic  # how long a tick has run (a 429 pause counts from the 429)
        # Per job: the server keeps a window per path, and claims (with the looks and
        # reconcile's lists) never share one with a task's completion or progress path.
        self.paused_until: dict[PausedJob, datetime] = {}
        self._lock = threading.Lock()
        # A new start knows nothing of the server yet: a previous run's outage is history.
        self.current = Contact("unknown", now)
        self.state.write(CONTACT_KEY, self.current.to_json(), now, force=True)

    @property
    def in_outage(self) -> bool:
        return self.current.state == "outage"

    def _move(self, state: ContactState, now: datetime, reason: str = "") -> Contact:
        """Move to ``state``; returns the state it left (written to the database on change)."""
        with self._lock:
            previous = self.current
            if previous.state != state:
                self.current = Contact(state, now, reason)
        if previous.state != state:
            self.state.write(CONTACT_KEY, self.current.to_json(), now, force=True)
        return previous

    def ok(self, now: datetime) -> None:
        previous = self._move("ok", now)
        if previous.state == "outage":
            pending, _ = self.store.outbox_backlog()
            logger.warning(
                "outage ended after %.1f s; %d outbox rows to deliver",
                (now - previous.since).total_seconds(),
                pending,
            )
        elif previous.state == "auth_failed":
            logger.warning("the server accepts the API key again")
        self.state.write(LAST_CONTACT_KEY, now.isoformat(), now)

    def unreachable(self, now: datetime, reason: str) -> None:
        if self._move("outage", now, reason).state != "outage":
            logger.warning("outage began: %s", reason)

    def refused_key(self, now: datetime, error: str) -> None:
        reason = f"authentication failed: {error}"
        if self._move("auth_failed", now, reason).state != "auth_failed":
            logger.error(
                "%s. Check the API key (%s); claiming and delivery wait and try again.",
                reason,
                self.key_source,
            )

    def paused(self, now: datetime, job: PausedJob) -> bool:
        """True while a 429's Retry-After runs for this job ("pull": claims, looks and
        reconcile; "push": deliveries). A spent claim window does not hold results back."""
        until = self.paused_until.get(job)
        return until is not None and now < until

    def pause(
        self, now: datetime, retry_after: float | None, tick_started: float, job: PausedJob
    ) -> None:
        """Wait Retry-After counted from the 429, not from the tick's start (``now``): a
        tick can spend seconds on the network before its 429."""
        wait = retry_after if retry_after is not None else 60.0
        spent = self.monotonic() - tick_started
        until = now + timedelta(seconds=spent + wait)
        with self._lock:
            self.paused_until[job] = until
            latest = max(self.paused_until.values())
        self.state.write(RATE_LIMITED_KEY, latest.isoformat(), now, force=True)
        what = "claims and looks" if job == "pull" else "deliveries"
        logger.warning("rate limited (429): %s wait %.0f s", what, wait)
