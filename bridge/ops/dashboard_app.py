"""What each URL of the daemon's HTTP port answers, apart from HTTP: the dashboard (``/``),
the task list and task pages (``/tasks``, ``/tasks/ID``), ``/healthz``, ``/status.json``,
``/metrics``, and the actions on dead outbox rows (``ActionPolicy`` says who may).
Everything is read through ``Operations``; ``dashboard_server`` is the HTTP side.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs

from taskmanager.config import is_loopback_host

from ..errors import BridgeConfigError, BridgeError
from ..times import parse_age
from .dashboard_page import PageOptions, render, render_task, render_tasks
from .inspection import TaskRef, detail_json
from .operations import Operations
from .task_pages import LIST_LIMIT

logger = logging.getLogger("bridge.dashboard")

TOKEN_VARIABLE = "BRIDGE_DASHBOARD_TOKEN"
HEALTH_MAX_OUTBOX_AGE = 900.0  # the same limits as `taskmanager-bridge health`
HEALTH_MAX_TICK_AGE = 60.0
# The only notes the page shows (a link cannot make the page say anything else).
_NOTE = re.compile(r"outbox row \d+: (pending again|discarded)")


@dataclass(frozen=True)
class ActionPolicy:
    """Whether the page may change dead rows, and the token it then asks for."""

    enabled: bool = False
    token: str | None = None  # never shown, logged or put on the page

    @classmethod
    def decide(cls, enabled: bool, token: str | None, address: str) -> ActionPolicy:
        """The policy for a server on ``address``; refuses actions off loopback without
        a token (anyone who reaches the port could otherwise change the outbox)."""
        token = token or None
        if enabled and token is None and not is_loopback_host(address):
            raise BridgeConfigError(
                f"--dashboard-actions on {address}, which is not a loopback address, needs "
                f"a token: set {TOKEN_VARIABLE} in the daemon's environment"
            )
        return cls(enabled, token)

    def allows(self, supplied: str | None) -> bool:
        if not self.enabled:
            return False
        if self.token is None:
            return True
        return self.token_matches(supplied)

    def token_matches(self, supplied: str | None) -> bool:
        """``supplied`` is the configured token (compared in constant time)."""
        return (
            self.token is not None
            and supplied is not None
            and hmac.compare_digest(supplied.encode("utf-8"), self.token.encode("utf-8"))
        )


class DashboardApp:
    """What each URL answers, apart from HTTP."""

    def __init__(
        self,
        operations: Operations,
        policy: ActionPolicy,
        metrics_text: Callable[[], bytes] | None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.operations = operations
        self.policy = policy
        self.metrics_text = metrics_text
        self.clock = clock

    def _options(self, note: str) -> PageOptions:
        return PageOptions(
            actions=self.policy.enabled,
            token_required=self.policy.token is not None,
            note=note if _NOTE.fullmatch(note) else "",
        )

    def page(self, note: str) -> tuple[int, bytes, str]:
        html = render(self.operations.dashboard(self.clock()), self._options(note))
        return 200, html.encode("utf-8"), "text/html; charset=utf-8"

    def task_list(self, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        """``/tasks?status=&type=&since=&q=``: newest first."""
        wanted = {
            key: (query.get(key) or [""])[0].strip() for key in ("status", "type", "since", "q")
        }
        now = self.clock()
        try:
            since = now - parse_age(wanted["since"], "since") if wanted["since"] else None
            found = self.operations.tasks(
                status=wanted["status"] or None,
                task_type=wanted["type"] or None,
                since=since,
                search=wanted["q"] or None,
                limit=LIST_LIMIT,
            )
        except BridgeError as exc:
            return 400, f"{exc}\n".encode(), "text/plain; charset=utf-8"
        snap = self.operations.snapshot(now)
        html = render_tasks(snap.database, snap.worker_id, found, now, wanted, self._options(""))
        return 200, html.encode("utf-8"), "text/html; charset=utf-8"

    def task(self, ref: str) -> tuple[int, bytes, str]:
        """``/tasks/ID`` or ``/tasks/remote:ID``: one task whole."""
        now = self.clock()
        try:
            doc = detail_json(self.operations.task(TaskRef.parse(ref)), now)
        except BridgeError as exc:
            return 404, f"{exc}\n".encode(), "text/plain; charset=utf-8"
        snap = self.operations.snapshot(now)
        html = render_task(snap.database, snap.worker_id, doc, now, self._options(""))
        return 200, html.encode("utf-8"), "text/html; charset=utf-8"

    def healthz(self, query: str = "") -> tuple[int, bytes, str]:
        """``health``'s checks; ``?require_contact=SECONDS`` as ``--require-contact``: a
        probe that must tell "up and serving" from "up and cut off" asks for it."""
        wanted = parse_qs(query).get("require_contact", [""])[0]
        try:
            require = float(wanted) if wanted else None
        except ValueError:
            require = 0.0
        if require is not None and not 1 <= require < float("inf"):
            text = f"require_contact must be a number of seconds, at least 1, got {wanted!r}\n"
            return 400, text.encode(), "text/plain; charset=utf-8"
        problems = self.operations.health_problems(
            self.clock(), HEALTH_MAX_OUTBOX_AGE, HEALTH_MAX_TICK_AGE, require
        )
        text = "unhealthy: " + "; ".join(problems) if problems else "healthy"
        return (503 if problems else 200), f"{text}\n".encode(), "text/plain; charset=utf-8"

    def status_json(self) -> tuple[int, bytes, str]:
        doc = self.operations.snapshot(self.clock()).to_json()
        return 200, json.dumps(doc, indent=2, sort_keys=True).encode(), "application/json"

    def metrics(self) -> tuple[int, bytes, str]:
        if self.metrics_text is None:
            body = b"no /metrics here: install prometheus-client (pip install '.[metrics]')\n"
            return 404, body, "text/plain; charset=utf-8"
        return 200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8"

    def act(self, form: dict[str, list[str]]) -> str:
        """Retry or discard one dead row; what happened, for the page's note."""
        for verb, act in (
            ("retry", self.operations.retry_dead),
            ("discard", self.operations.discard_dead),
        ):
            if verb in form:
                try:
                    row_id = int(form[verb][0])
                except ValueError:
                    raise BridgeError(f"{verb}: not a row id: {form[verb][0]!r}") from None
                act([row_id], self.clock())
                logger.warning("dashboard: outbox row %d %s by the operator", row_id, verb)
                done = "pending again" if verb == "retry" else "discarded"
                return f"outbox row {row_id}: {done}"
        raise BridgeError("the form names no action (retry=ID or discard=ID)")
