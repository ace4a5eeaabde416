"""One HTTP request to the API: send, judge, and retry within a total deadline.

This is the only module that touches ``requests``. What an answer means and
whether to try again are decided in ``protocol`` (no I/O, reusable by another
transport); this module sends, observes, logs each attempt without the API key
and sleeps between tries. Clock, sleep and randomness are injected so tests
never sleep.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import requests

from ._version import __version__
from .config import TaskManagerConfig
from .exceptions import (
    TaskManagerConnectionError,
    TaskManagerRateLimitError,
    TaskManagerTimeoutError,
)
from .protocol import (
    DEADLINE_PASSED,
    RETRYABLE_STATUSES,
    Answer,
    NothingPredicate,
    Outcome,
    RateLimitInfo,
    RetryPolicy,
    backoff_delay,
    decide_retry,
    decode_body,
    encode_body,
    interpret,
    parse_retry_after,
    rate_limit_info,
)

logger = logging.getLogger("taskmanager.client")
POOL_SIZE = 32

USER_AGENT = f"taskmanager-bridge/{__version__} (+python-requests)"

# Called after every attempt: (method, path with ids folded to {id}, status or error name, seconds).
RequestObserver = Callable[[str, str, str, float], None]


def path_template(path: str) -> str:
    """``/tasks/12/complete`` -> ``/tasks/{id}/complete``: one label per endpoint."""
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


class Transport:
    """Sends requests through one ``requests.Session`` (keep-alive) with the retry policy."""

    def __init__(
        self,
        config: TaskManagerConfig,
        session: requests.Session | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.observer = observer
        self.config = config
        self.session = session if session is not None else self._own_session(config)
        if not config.verify_tls:
            self.session.verify = False
            logger.warning("TLS certificate verification is OFF for %s", config.api_url)
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.last_rate_limit: RateLimitInfo | None = None
        # The server keeps one window per path: the figures of each path's latest answer.
        self.rate_limits: dict[str, RateLimitInfo] = {}
        # Attempts per path that got no answer (the server may have applied them), retried
        # or not: a caller of a non-idempotent call can tell it may have an orphan.
        self.unanswered: Counter[str] = Counter()
        self._unanswered_lock = threading.Lock()
        # Retry-After of the latest 429 per path, for every thread sharing this client.
        self._blocked_until: dict[str, float] = {}
        self._blocked_lock = threading.Lock()

    @staticmethod
    def _own_session(config: TaskManagerConfig) -> requests.Session:
        """A session with the environment's proxy and CA settings resolved once.

        With ``trust_env`` on, requests scans the whole environment for proxies
        and CA bundles on every request (about 0.3 ms each, measured); the
        settings are read here, when the client is built, like the rest of the
        config, and applied to every request.
        """
        session = requests.Session()
        # Callers may send from several threads at once (the bridge: up to 8 claims and 8
        # deliveries): keep that many connections alive instead of the default 10.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        settings = session.merge_environment_settings(config.api_url, {}, None, None, None)
        session.trust_env = False
        session.proxies.update(settings["proxies"] or {})
        session.verify = settings["verify"] if settings["verify"] is not None else True
        return session

    def close(self) -> None:
        self.session.close()

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if auth and self.config.api_key:
            headers["X-API-Key"] = self.config.api_key
        return headers

    def _send(
        self, method: str, url: str, body: bytes | None, query: Mapping[str, Any] | None, auth: bool
    ) -> Answer | Outcome:
        """One HTTP exchange: the answer, or the ``Outcome`` of getting none."""
        headers = self._headers(auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                params=query,
                headers=headers,
                timeout=self.config.timeouts,
            )
            text = response.text
        except requests.RequestException as exc:
            return _no_answer(exc, method, url)
        return Answer(response.status_code, decode_body(text), text, response.headers)

    def _attempt(
        self,
        method: str,
        path: str,
        url: str,
        payload: bytes | None,
        query: Mapping[str, Any] | None,
        auth: bool,
        nothing_when: NothingPredicate | None,
    ) -> Outcome:
        """Send once and judge what came back; observed and logged, never raises."""
        started = self.clock()
        sent = self._send(method, url, payload, query, auth)
        if isinstance(sent, Outcome):
            if _shared_path(path):
                with self._unanswered_lock:
                    self.unanswered[path] += 1
            self._observe(method, path, sent.label, started)
            return sent
        self._observe(method, path, str(sent.status), started)
        info = rate_limit_info(sent.headers, observed_at=time.time())
        if info is not None:
            self.last_rate_limit = info
            if _shared_path(path):
                self.rate_limits[path] = info
        outcome = interpret(sent, nothing_when, method=method, url=url, now=time.time())
        if outcome.error is None:
            logger.debug(
                "%s %s -> %s in %.1f ms", method, path, sent.status, (self.clock() - started) * 1000
            )
        elif not outcome.retryable:
            logger.debug("%s %s -> %s (not retried)", method, path, sent.status)
        return outcome

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        auth: bool = True,
        nothing_when: NothingPredicate | None = None,
        retries: int | None = None,
    ) -> Any:
        """Send and return the envelope's ``data``; ``None`` when ``nothing_when`` matches.

        ``retries`` overrides the configured number of retries (0 for a probe).
        """
        policy = RetryPolicy.from_config(self.config, retries)
        url = self.config.api_url + path
        payload = encode_body(body) if body is not None else None
        started = self.clock()
        retry_number = 0
        while True:
            self._wait_for_path(method, path, url, started, policy.deadline)
            outcome = self._attempt(method, path, url, payload, query, auth, nothing_when)
            if isinstance(outcome.error, TaskManagerRateLimitError) and outcome.retry_after:
                self._block_path(path, outcome.retry_after)
            if outcome.error is None:
                return outcome.data
            if not outcome.retryable:
                raise outcome.error
            decision = decide_retry(
                policy, retry_number, self.clock() - started, outcome.retry_after, self.rng
            )
            if not decision.retry:
                if decision.reason == DEADLINE_PASSED:
                    logger.warning(
                        "%s %s -> %s; giving up: a %.1f s wait would pass the %.0f s retry deadline",  # noqa: E501
                        method,
                        path,
                        outcome.label,
                        decision.delay,
                        policy.deadline,
                    )
                raise outcome.error
            retry_number += 1
            logger.warning(
                "%s %s -> %s; retry %d/%d in %.2f s",
                method,
                path,
                outcome.label,
                retry_number,
                policy.max_retries,
                decision.delay,
            )
            self.sleep(decision.delay)

    def _block_path(self, path: str, seconds: float) -> None:
        """A 429 on ``path``: no thread sends on it again before its Retry-After."""
        with self._blocked_lock:
            until = self.clock() + seconds
            self._blocked_until[path] = max(until, self._blocked_until.get(path, until))

    def _wait_for_path(
        self, method: str, path: str, url: str, started: float, deadline: float
    ) -> None:
        """Wait out a Retry-After another request on this path received, or refuse (not
        sent) when the wait would pass the retry deadline."""
        with self._blocked_lock:
            wait = self._blocked_until.get(path, 0.0) - self.clock()
        if wait <= 0:
            return
        if self.clock() - started + wait > deadline:
            raise TaskManagerRateLimitError(
                429,
                f"not sent: the server asked to wait {wait:.1f} s more on this path (429)",
                retry_after=wait,
                method=method,
                url=url,
            )
        self.sleep(wait)

    def _observe(self, method: str, path: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            try:
                self.observer(method, path_template(path), outcome, self.clock() - started)
            except Exception:  # metrics must never break a request
                logger.debug("request observer failed", exc_info=True)


def _no_answer(exc: requests.RequestException, method: str, url: str) -> Outcome:
    """Why no answer came, and whether another try could get one.

    A timeout or a broken connection may heal; a TLS failure or an invalid
    request will fail the same way again.
    """
    error: TaskManagerConnectionError
    if isinstance(exc, requests.Timeout):
        error = TaskManagerTimeoutError(
            f"no answer within the timeout ({type(exc).__name__})", method=method, url=url
        )
        return Outcome(error=error, retryable=True, label=type(error).__name__)
    if isinstance(exc, requests.exceptions.SSLError):
        error = TaskManagerConnectionError(
            f"TLS failed (certificate not trusted?): {exc}", method=method, url=url
        )
        return Outcome(error=error, label=type(error).__name__)
    if isinstance(
        exc,
        (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ),
    ):
        error = TaskManagerConnectionError(
            f"connection failed: {root_cause(exc)}", method=method, url=url
        )
        return Outcome(error=error, retryable=True, label=type(error).__name__)
    error = TaskManagerConnectionError(f"request failed: {exc}", method=method, url=url)
    return Outcome(error=error, label=type(error).__name__)


def _shared_path(path: str) -> bool:
    """A path many calls share (``/tasks/claim``, ``/tasks``), not one task's own
    (``/tasks/12/complete``): per-path figures are kept for those only, so that they do
    not grow with every task a long-running process ever touched."""
    return "{id}" not in path_template(path)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (urllib3 keeps its cause in ``reason``,
    requests the urllib3 error in ``args[0]``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        wrapped = [getattr(current, "reason", None), *current.args[:1]]
        inner = [e for e in wrapped if isinstance(e, BaseException)]
        current = inner[0] if inner else current.__cause__ or current.__context__
    return chain


_ROOT_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused (nothing listens there, or a firewall said no)"),
    (socket.gaierror, "the host name did not resolve (DNS)"),
    (ssl.SSLError, "TLS failed"),
    (ConnectionResetError, "the connection was reset by the other end"),
    (TimeoutError, "timed out"),
)


def root_cause(exc: BaseException) -> str:
    """The deepest known cause of a failed request, in words, with its own text in full:
    refused, DNS, TLS, reset, timeout; else the deepest error as it was raised."""
    chain = _causes(exc)
    for cause in reversed(chain):
        for kind, words in _ROOT_CAUSES:
            if isinstance(cause, kind):
                return f"{words}: {cause}"
    deepest = chain[-1]
    return f"{type(deepest).__name__}: {deepest}" if str(deepest) else type(deepest).__name__


__all__ = [
    "RETRYABLE_STATUSES",
    "RateLimitInfo",
    "RequestObserver",
    "Transport",
    "backoff_delay",
    "parse_retry_after",
    "path_template",
]
