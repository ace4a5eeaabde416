"""Faults the emulator can be told to inject while it runs.

Rules are consumed one request at a time, first match first, and are safe to
change from the test's thread while handler threads read them. Paths are API
paths relative to the base URL, as shell patterns: ``/tasks/*/complete``.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass, field
from enum import Enum

from .store import data_too_long

# A hung request is released at the latest after this long, so no thread is leaked.
MAX_HANG_SECONDS = 600.0

# What the deployed server answers (500) when MariaDB aborts a transaction under
# concurrency (docs/SERVER_BEHAVIOUR.md, "Under load").
DEADLOCK_ERROR = (
    "SQLSTATE[40001]: Serialization failure: 1213 Deadlock found when trying to get lock; "
    "try restarting transaction"
)


class FaultKind(Enum):
    FAIL = "fail"  # answer with a status instead of handling the request (nothing applied)
    DROP_AFTER_COMMIT = "drop"  # handle (commit) the request, then close without answering
    HANG = "hang"  # never answer; the connection closes when released or stopped
    HOLD_AFTER_COMMIT = "hold"  # handle (commit), then hold the answer until released; drop it


@dataclass
class FaultRule:
    kind: FaultKind
    remaining: int
    path: str | None = None
    method: str | None = None
    status: int = 503
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the envelope's error text when ``body`` is None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)


# Where the real server's transactions contend: claims and completions.
_DEADLOCK_PRONE = FaultRule(FaultKind.FAIL, 1, "/tasks/*", "POST", 500, error=DEADLOCK_ERROR)


class FaultPlan:
    """The faults in force: latency for every request, and counted rules."""

    def __init__(self, deadlock_rate: float = 0.0, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._release = threading.Event()
        self.latency = 0.0
        # The real server under concurrency: now and then a claim or completion is
        # rolled back with a deadlock 500 (measured ~1 in 300 completions at 4 threads).
        self.deadlock_rate = deadlock_rate
        self._rng = random.Random(seed)

    def _add(self, rule: FaultRule) -> None:
        if rule.remaining < 1:
            raise ValueError("a fault needs a count of at least 1")
        with self._lock:
            self._rules.append(rule)

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        path: str | None = None,
        method: str | None = None,
        body: str | bytes | None = None,
        content_type: str = "text/html",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` (default: a JSON error),
        adding ``headers`` (``{"Retry-After": "2"}`` with 429 makes a rate-limit storm)."""
        raw = body.encode() if isinstance(body, str) else body
        self._add(
            FaultRule(
                FaultKind.FAIL,
                count,
                path,
                method,
                status,
                raw,
                content_type if raw is not None else "application/json",
                dict(headers or {}),
            )
        )

    def deadlock(
        self, count: int = 1, *, path: str | None = None, method: str | None = None
    ) -> None:
        """Answer the next ``count`` matching requests as the server does when the database
        aborts a transaction: 500 ``SQLSTATE[40001] ... Deadlock found ...``, the request
        rolled back (not applied), so a client may safely send it again."""
        self._add(FaultRule(FaultKind.FAIL, count, path, method, 500, error=DEADLOCK_ERROR))

    def data_too_long(
        self,
        count: int = 1,
        *,
        column: str = "result_json",
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests as the server does when a value is
        longer than its column: 500 ``SQLSTATE[22001] ... Data too long for column ...``,
        nothing applied. The emulator gives this answer by itself over 65,535 bytes; this
        gives it to smaller values (a deployment with smaller columns)."""
        self._add(FaultRule(FaultKind.FAIL, count, path, method, 500, error=data_too_long(column)))

    def drop_after_commit(
        self, count: int = 1, *, path: str | None = None, method: str | None = None
    ) -> None:
        """Handle the next ``count`` matching requests, then drop the connection unanswered."""
        self._add(FaultRule(FaultKind.DROP_AFTER_COMMIT, count, path, method))

    def hold_after_commit(
        self, count: int = 1, *, path: str | None = None, method: str | None = None
    ) -> None:
        """Handle the next ``count`` matching requests, then hold the answers back (until
        ``release_hangs``) and drop them: a window, as long as the test wants, in which
        the server has committed and the client does not know it yet."""
        self._release.clear()
        self._add(FaultRule(FaultKind.HOLD_AFTER_COMMIT, count, path, method))

    def hang_next(
        self, count: int = 1, *, path: str | None = None, method: str | None = None
    ) -> None:
        """Never answer the next ``count`` matching requests (until ``release_hangs``)."""
        self._release.clear()
        self._add(FaultRule(FaultKind.HANG, count, path, method))

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that applies to this request, one use of it consumed."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
            prone = self.deadlock_rate and _DEADLOCK_PRONE.matches(method, path)
            if prone and self._rng.random() < self.deadlock_rate:
                return _DEADLOCK_PRONE
        return None

    def pending(self) -> int:
        with self._lock:
            return sum(rule.remaining for rule in self._rules)

    def wait_released(self) -> None:
        self._release.wait(MAX_HANG_SECONDS)

    def release_hangs(self) -> None:
        self._release.set()

    def clear(self) -> None:
        """No more faults: rules dropped, latency 0, hung requests released."""
        with self._lock:
            self._rules.clear()
        self.latency = 0.0
        self.release_hangs()
