"""One request's whole conversation with the server, as steps a transport carries out.

``Requester.exchange`` is a generator: it yields ``Send`` (answered with the
``Answer``, or the ``Outcome`` of getting none) and ``Sleep`` (answered with
``None``), and returns the envelope's ``data`` or raises the typed error. It
holds everything a request decides: headers without leaking the key, the
per-path Retry-After every caller shares, the retry loop and its deadline,
rate-limit figures, unanswered counts, logging and the observer. The blocking
transport (``requests``) and the asyncio one (``aiohttp``) only carry out the
steps, so the two clients cannot drift apart in anything but I/O.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._version import __version__
from .answer_times import AnswerTimes
from .config import TaskManagerConfig
from .exceptions import TaskManagerRateLimitError
from .protocol import (
    DEADLINE_PASSED,
    Answer,
    NothingPredicate,
    Outcome,
    RateLimitInfo,
    RetryPolicy,
    decide_retry,
    encode_body,
    interpret,
    rate_limit_info,
)

logger = logging.getLogger("taskmanager.client")

USER_AGENT = f"taskmanager-bridge/{__version__} (+python)"

# Called after every attempt: (method, path with ids folded to {id}, status or error name, seconds).
RequestObserver = Callable[[str, str, str, float], None]

_R = TypeVar("_R")


@dataclass(frozen=True)
class Send:
    """Send this request once and answer with what came back (``Answer``) or why nothing
    did (``Outcome``). Redirects are not followed: the key must not go where it was not
    configured to go."""

    method: str
    url: str
    body: bytes | None
    query: Mapping[str, Any] | None
    headers: Mapping[str, str] = field(repr=False)  # the API key: never in a repr


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds, then answer ``None``."""

    seconds: float


Step = Send | Sleep
Reply = Answer | Outcome | None
# A request, or a client operation built of requests: steps out, replies in, a value at the end.
Steps = Generator[Step, Reply, _R]


class Drive(Generic[_R]):
    """Steps advanced one at a time, for a transport's loop: what both transports do
    besides the I/O itself, written once.

        drive = Drive(steps)
        while (step := drive.next()) is not None:
            if isinstance(step, Sleep): sleep(step.seconds); continue
            with drive.sending():
                drive.reply = send(step)
        return drive.result
    """

    def __init__(self, steps: Steps[_R]) -> None:
        self.steps = steps
        self.reply: Reply = None
        self._error: Exception | None = None
        self.result: _R

    def next(self) -> Step | None:
        """The next step, with the last reply (or error) handed in; ``None`` at the end,
        the value in ``result``."""
        try:
            if self._error is not None:
                step = self.steps.throw(self._error)
            else:
                step = self.steps.send(self.reply)
        except StopIteration as done:
            self.result = done.value
            return None
        self.reply, self._error = None, None
        return step

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around one send: an unexpected error goes to the operation, which decides (a
        health check answers False); a cancel or an interrupt mid-request closes the
        steps at the request (counted as unanswered) and goes on up."""
        try:
            yield
        except Exception as exc:
            self._error = exc
        except BaseException:
            self.steps.close()
            raise


def path_template(path: str) -> str:
    """``/tasks/12/complete`` -> ``/tasks/{id}/complete``: one label per endpoint."""
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


def shared_path(path: str) -> bool:
    """A path many calls share (``/tasks/claim``, ``/tasks``), not one task's own
    (``/tasks/12/complete``): per-path figures are kept for those only, so that they do
    not grow with every task a long-running process ever touched."""
    return "{id}" not in path_template(path)


class Requester:
    """What every request of one client decides and remembers, whatever carries it.

    Thread-safe: the blocking client is shared by threads, and the state is kept
    under locks that are never held across a step, so one event loop may share
    it too.
    """

    def __init__(
        self,
        config: TaskManagerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.observer = observer
        self.last_rate_limit: RateLimitInfo | None = None
        # The server keeps one window per path: the figures of each path's latest answer.
        self.rate_limits: dict[str, RateLimitInfo] = {}
        # Attempts per path that got no answer (the server may have applied them), retried
        # or not: a caller of a non-idempotent call can tell it may have an orphan.
        self.unanswered: Counter[str] = Counter()
        # How long answers take (the least of the latest: the round trip, for callers
        # that size how many requests they keep in flight).
        self.answer_times = AnswerTimes()
        # Retry-After of the latest 429 per path, for every caller sharing this client.
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()
        # While true, each retry is logged at DEBUG, not WARNING (``quiet_retries_while``).
        self.quiet_retries: Callable[[], bool] = lambda: False

    def headers(self, auth: bool, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if auth and self.config.api_key:
            headers["X-API-Key"] = self.config.api_key
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def exchange(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        auth: bool = True,
        nothing_when: NothingPredicate | None = None,
        retries: int | None = None,
    ) -> Steps[Any]:
        """Send until answered or out of retries: the envelope's ``data``, ``None`` when
        ``nothing_when`` matches, else the typed error is raised.

        ``retries`` overrides the configured number of retries (0 for a probe).
        """
        policy = RetryPolicy.from_config(self.config, retries)
        payload = encode_body(body) if body is not None else None
        send = Send(
            method, self.config.api_url + path, payload, query, self.headers(auth, body is not None)
        )
        started = self.clock()
        retry_number = 0
        while True:
            wait = self._path_wait(send, path, started, policy.deadline)
            if wait > 0:
                yield Sleep(wait)
            attempt_started = self.clock()
            try:
                reply = yield send
            except BaseException:  # abandoned mid-request (cancelled, interrupted)
                self._count_unanswered(path)  # the server may have applied it
                raise
            outcome = self._judge(send, path, reply, nothing_when, attempt_started)
            if outcome.error is None:
                return outcome.data
            if not outcome.retryable:
                raise outcome.error
            elapsed = self.clock() - started
            decision = decide_retry(
                policy, retry_number, elapsed, outcome.retry_after, self.rng, outcome.deadlock
            )
            level = logging.DEBUG if self.quiet_retries() else logging.WARNING
            if not decision.retry:
                if decision.reason == DEADLINE_PASSED:
                    logger.log(
                        level,
                        "%s %s -> %s; giving up: a %.1f s wait would pass the %.0f s retry deadline",  # noqa: E501
                        method,
                        path,
                        outcome.label,
                        decision.delay,
                        policy.deadline,
                    )
                raise outcome.error
            retry_number += 1
            logger.log(
                level,
                "%s %s -> %s; retry %d/%d in %.2f s",
                method,
                path,
                outcome.label,
                retry_number,
                policy.max_retries,
                decision.delay,
            )
            yield Sleep(decision.delay)

    def _judge(
        self,
        send: Send,
        path: str,
        reply: Reply,
        nothing_when: NothingPredicate | None,
        started: float,
    ) -> Outcome:
        """What one attempt came to; observed, counted and logged, never raises."""
        if not isinstance(reply, Answer):
            outcome = reply if isinstance(reply, Outcome) else Outcome(label="no reply")
            self._count_unanswered(path)
            self._observe(send.method, path, outcome.label, started)
            return outcome
        self._observe(send.method, path, str(reply.status), started)
        self.answer_times.add(self.clock() - started)
        info = rate_limit_info(reply.headers, observed_at=time.time())
        if info is not None:
            self.last_rate_limit = info
            if shared_path(path):
                self.rate_limits[path] = info
        outcome = interpret(reply, nothing_when, method=send.method, url=send.url, now=time.time())
        if isinstance(outcome.error, TaskManagerRateLimitError) and outcome.retry_after:
            self._block_path(path, outcome.retry_after)
        if outcome.error is None:
            logger.debug(
                "%s %s -> %s in %.1f ms",
                send.method,
                path,
                reply.status,
                (self.clock() - started) * 1000,
            )
        elif not outcome.retryable:
            logger.debug("%s %s -> %s (not retried)", send.method, path, reply.status)
        return outcome

    def _count_unanswered(self, path: str) -> None:
        if shared_path(path):
            with self._lock:
                self.unanswered[path] += 1

    def _block_path(self, path: str, seconds: float) -> None:
        """A 429 on ``path``: no caller sends on it again before its Retry-After."""
        with self._lock:
            until = self.clock() + seconds
            self._blocked_until[path] = max(until, self._blocked_until.get(path, until))

    def _path_wait(self, send: Send, path: str, started: float, deadline: float) -> float:
        """How long to wait out a Retry-After another request on this path received;
        refused (not sent) when the wait would pass the retry deadline."""
        with self._lock:
            wait = self._blocked_until.get(path, 0.0) - self.clock()
        if wait <= 0:
            return 0.0
        if self.clock() - started + wait > deadline:
            raise TaskManagerRateLimitError(
                429,
                f"not sent: the server asked to wait {wait:.1f} s more on this path (429)",
                retry_after=wait,
                method=send.method,
                url=send.url,
            )
        return wait

    def _observe(self, method: str, path: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            try:
                self.observer(method, path_template(path), outcome, self.clock() - started)
            except Exception:  # metrics must never break a request
                logger.debug("request observer failed", exc_info=True)
