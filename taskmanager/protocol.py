"""What an answer means and whether to try again: the transport's decisions, without I/O.

Nothing here sends, sleeps or imports ``requests``: every input (the answer,
the time elapsed, the wall-clock time, the random source for jitter) is an
argument (``parse_retry_after`` reads the wall clock only when not given it).
So the blocking ``Transport`` and any future asyncio transport share one
reading of the server and one retry policy, and tests pin each decision
without a network or a clock.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from .config import TaskManagerConfig
from .encoding import json_writer
from .exceptions import (
    BODY_SNIPPET_CHARS,
    TaskManagerAPIError,
    TaskManagerError,
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerValidationError,
)

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

# The server's words when MariaDB aborted the transaction (docs/SERVER_BEHAVIOUR.md,
# "Transient deadlocks under concurrency"): it was rolled back, so sending the
# request again is as safe as after a 503.
TRANSIENT_DEADLOCK_MARKERS = ("SQLSTATE[40001]", "Deadlock found when trying to get lock")
# A deadlock is two transactions meeting, not an overloaded server: MariaDB rolled one
# back and says to restart it. The first resend follows after about this long (+-50 %
# jitter, so that the two do not meet again); a second deadlock backs off as usual.
# A full first back-off (1 s) stalled whatever waited for the request: the bridge's whole
# claim burst or push, a direct worker's thread.
DEADLOCK_RESEND_SECONDS = 0.05

# Longest wait a server may ask for: anything longer is treated as this (a day).
MAX_RETRY_AFTER_SECONDS = 86_400.0

# (status, error text) -> True when the answer means "nothing to return" rather than an error.
NothingPredicate = Callable[[int, str], bool]


@dataclass(frozen=True)
class Answer:
    """What came back, before it is judged."""

    status: int
    body: dict[str, Any] | None  # None when the text is not a JSON object
    text: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``data`` to return, or an ``error`` and whether to retry.

    ``label`` names the attempt in logs and metrics (the status, or the error
    class when no answer came); ``retry_after`` is the server's own wait, if it
    asked for one.
    """

    data: Any = None
    error: TaskManagerError | None = None
    retryable: bool = False
    retry_after: float | None = None
    label: str = ""
    deadlock: bool = False  # a transient deadlock: the first resend comes soon


@dataclass(frozen=True)
class RateLimitInfo:
    """The server's ``X-RateLimit-*`` headers from the latest answer that had them."""

    limit: int | None
    remaining: int | None
    reset: float | None
    observed_at: float | None = None  # Unix time the answer came

    def resets_at(self) -> float | None:
        """Unix time the window starts again: ``reset`` is a Unix time when it looks like
        one (the emulator's, a common convention), else seconds from the answer."""
        if self.reset is None:
            return None
        if self.reset > 1_000_000_000 or self.observed_at is None:
            return self.reset
        return self.observed_at + self.reset

    def exhausted_until(self, now: float, reserve: int = 0) -> float | None:
        """When no more than ``reserve`` requests are left in the window (others may be in
        flight): the Unix time it resets; else ``None``."""
        if self.remaining is None or self.remaining > reserve:
            return None
        resets = self.resets_at()
        return resets if resets is not None and resets > now else None


# -- reading numbers the server sent ---------------------------------------------------
def finite_number(value: Any) -> float | None:
    """A number the server sent, if it is one and finite ("INFINITY", "nan", "" -> None)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def wait_seconds(value: Any) -> float | None:
    """A Retry-After figure as a usable wait: finite, >= 0, at most a day."""
    number = finite_number(value)
    return None if number is None else min(max(0.0, number), MAX_RETRY_AFTER_SECONDS)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (relative to ``now``).

    ``now`` is wall-clock Unix time; left out, it is read here (the one
    concession to convenience: callers that must stay pure pass it).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if finite_number(text) is not None:
        return wait_seconds(text)
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return wait_seconds(when - (time.time() if now is None else now))


def rate_limit_info(
    headers: Mapping[str, str], observed_at: float | None = None
) -> RateLimitInfo | None:
    """The ``X-RateLimit-*`` figures of an answer, ``None`` when it has none."""
    if "X-RateLimit-Limit" not in headers and "X-RateLimit-Remaining" not in headers:
        return None
    limit = finite_number(headers.get("X-RateLimit-Limit"))
    remaining = finite_number(headers.get("X-RateLimit-Remaining"))
    return RateLimitInfo(
        int(limit) if limit is not None else None,
        int(remaining) if remaining is not None else None,
        finite_number(headers.get("X-RateLimit-Reset")),
        observed_at,
    )


# -- requests and answers -------------------------------------------------------------
_body_text = json_writer(ensure_ascii=False, compact=True, allow_nan=False)


def encode_body(body: Any) -> bytes:
    """JSON the way the server reads it; NaN and non-JSON values refused before sending."""
    try:
        return _body_text(body).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise TaskManagerValidationError(None, f"request body is not valid JSON: {exc}") from None


def decode_body(text: str) -> dict[str, Any] | None:
    """The answer's JSON object, or ``None`` for anything else (HTML, empty, a list)."""
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def error_text(body: Mapping[str, Any]) -> str:
    """The error message from either envelope shape (app errors, security layer)."""
    error, message = body.get("error"), body.get("message")
    if isinstance(error, str) and isinstance(message, str) and message and message != error:
        return f"{error}: {message}"
    for candidate in (error, message):
        if isinstance(candidate, str) and candidate:
            return candidate
    return "error answer without a message"


def is_transient_deadlock(status: int, message: str) -> bool:
    """A 500 whose transaction the database aborted and rolled back: safe to send again.

    Any other 500 may have half-happened, so it is not retried.
    """
    return status == 500 and any(marker in message for marker in TRANSIENT_DEADLOCK_MARKERS)


def _missing_api_hint(status: int, url: str) -> str:
    """A 404 page from a URL without ``/api`` in its path: the web server in front of the
    API answered, most likely because ``api_url`` lacks its ``/api``."""
    path = urlsplit(url).path
    if status != 404 or "/api/" in path or path.endswith("/api"):
        return ""
    return "; is api_url missing its /api? (the API answers under /api, this path has none)"


def interpret(
    answer: Answer,
    nothing_when: NothingPredicate | None,
    *,
    method: str,
    url: str,
    now: float | None = None,
) -> Outcome:
    """Judge one answer: the envelope's ``data``, "nothing", or a typed error and its retry.

    ``now`` (wall-clock Unix time) dates a ``Retry-After`` given as an HTTP date.
    """
    label = str(answer.status)
    body = answer.body
    if 300 <= answer.status < 400:
        # Not followed: the X-API-Key header would go along to wherever it points.
        location = answer.headers.get("Location") or "(no Location header)"
        return Outcome(
            error=TaskManagerProtocolError(
                answer.status,
                f"the server redirected to {location} (HTTP {answer.status}); redirects are "
                "not followed, so that the API key goes only to api_url: set api_url to the "
                "address the API answers at",
                body,
                method=method,
                url=url,
                raw_text=answer.text[:BODY_SNIPPET_CHARS],
            ),
            label=label,
        )
    if body is None or ("success" not in body and "error" not in body):
        snippet = answer.text[:BODY_SNIPPET_CHARS] if answer.text else "(empty body)"
        error: TaskManagerAPIError = TaskManagerProtocolError(
            answer.status,
            f"expected the API's JSON envelope, got HTTP {answer.status} with {snippet!r}"
            + _missing_api_hint(answer.status, url),
            body,
            method=method,
            url=url,
            raw_text=answer.text[:BODY_SNIPPET_CHARS],
        )
        return Outcome(error=error, retryable=answer.status in RETRYABLE_STATUSES, label=label)
    if 200 <= answer.status < 300 and body.get("success") is True:
        return Outcome(data=body.get("data"), label=label)
    message = error_text(body)
    if nothing_when is not None and nothing_when(answer.status, message):
        return Outcome(data=None, label=label)
    retry_after = parse_retry_after(answer.headers.get("Retry-After"), now)
    if retry_after is None:
        retry_after = wait_seconds(body.get("retry_after"))
    error = TaskManagerAPIError.from_response(
        answer.status,
        message,
        body,
        method=method,
        url=url,
        raw_text=answer.text[:BODY_SNIPPET_CHARS],
        retry_after=retry_after,
    )
    deadlock = is_transient_deadlock(answer.status, message)
    return Outcome(
        error=error,
        retryable=answer.status in RETRYABLE_STATUSES or deadlock,
        retry_after=error.retry_after if isinstance(error, TaskManagerRateLimitError) else None,
        label=label,
        deadlock=deadlock,
    )


# -- the retry policy -----------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How many retries a call may make and how long it may spend waiting for them."""

    max_retries: int
    backoff_base: float
    backoff_max: float
    deadline: float

    @classmethod
    def from_config(cls, config: TaskManagerConfig, retries: int | None = None) -> RetryPolicy:
        """The configured policy; ``retries`` overrides the count (0 for a probe)."""
        return cls(
            config.retry_attempts if retries is None else retries,
            config.backoff_base,
            config.backoff_max,
            config.retry_deadline,
        )


@dataclass(frozen=True)
class RetryDecision:
    """Retry after ``delay`` seconds, or give up (``retry`` False, ``reason`` says why).

    When the deadline is the reason, ``delay`` is the wait that would have passed it.
    """

    retry: bool
    delay: float = 0.0
    reason: str = ""


ATTEMPTS_EXHAUSTED = "attempts exhausted"
DEADLINE_PASSED = "deadline"


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with +-20% jitter: 1 s, 2 s, 4 s ... for base 1, capped.

    Jitter keeps a fleet of bridges that lost the server at the same moment from
    coming back at the same moment.
    """
    nominal = min(cap, base * (2**retry_number))
    return float(nominal * rng.uniform(0.8, 1.2))


def decide_retry(
    policy: RetryPolicy,
    retry_number: int,
    elapsed: float,
    retry_after: float | None,
    rng: random.Random,
    deadlock: bool = False,
) -> RetryDecision:
    """Whether a retryable failure is tried again, and after how long.

    ``retry_number`` counts the retries already made, ``elapsed`` the seconds
    since the first attempt started. The server's ``retry_after`` beats the
    back-off; a first ``deadlock`` is resent after ``DEADLOCK_RESEND_SECONDS``;
    no wait may end past the deadline.
    """
    if retry_number >= policy.max_retries:
        return RetryDecision(False, reason=ATTEMPTS_EXHAUSTED)
    if retry_after is not None:
        delay = retry_after
    elif deadlock and retry_number == 0:
        delay = DEADLOCK_RESEND_SECONDS * rng.uniform(0.5, 1.5)
    else:
        delay = backoff_delay(retry_number, policy.backoff_base, policy.backoff_max, rng)
    if elapsed + delay > policy.deadline:
        return RetryDecision(False, delay, DEADLINE_PASSED)
    return RetryDecision(True, delay)
