"""What both clients are apart from I/O: their config and calls, the rate-limit figures
they saw, and the checks they make before sending (dedupe key, params)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .calls import Calls
from .config import TaskManagerConfig
from .protocol import RateLimitInfo
from .redact import mask_url


class ClientBase:
    """The part of ``TaskManagerClient`` and ``AsyncTaskManagerClient`` that sends nothing."""

    config: TaskManagerConfig
    _calls: Calls

    def __repr__(self) -> str:
        shown = mask_url(self.config.api_url)
        return f"{type(self).__name__}(api_url={shown!r}, worker_id={self.worker_id!r})"

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def rate_limit(self) -> RateLimitInfo | None:
        """The latest ``X-RateLimit-*`` figures, to slow down before being refused."""
        return self._calls.requester.last_rate_limit

    def rate_limit_for(self, path: str) -> RateLimitInfo | None:
        """The ``X-RateLimit-*`` figures of ``path``'s latest answer (``"/tasks/claim"``):
        the server counts one window per client and path."""
        return self._calls.requester.rate_limits.get(path)

    def unanswered(self, path: str) -> int:
        """Attempts on ``path`` (``"/tasks/claim"``) that got no answer so far, retried or
        not: the server may have applied each. A claim among them may be an orphan held
        by this worker id (the bridge's reconcile imports such claims)."""
        return self._calls.requester.unanswered[path]

    def fastest_answer_seconds(self) -> float | None:
        """The least time, send to answer, among the latest 64 answers (``None`` before
        the first): the network's round trip plus the server's own time for a request,
        without the queueing a busy server adds to the typical answer."""
        return self._calls.requester.answer_times.fastest()

    def quiet_retries_while(self, condition: Callable[[], bool]) -> None:
        """Log each retry (``POST /tasks -> 503; retry 1/3 ...``) at DEBUG instead of
        WARNING while ``condition()`` is true: for a caller that reports the trouble in
        its own words once (the bridge's daemon during an outage: one ``outage began``
        line, not a warning per retry of every request)."""
        self._calls.requester.quiet_retries = condition

    def dedupe_key(self, task_type: str, params: Mapping[str, Any]) -> str:
        """The key the server will store for these params sent through this client."""
        return self._calls.dedupe_key(task_type, params)

    def validate_params(self, task_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check params locally: non-empty object, and the type's schema if it is known."""
        return self._calls.validate_params(task_type, params)
