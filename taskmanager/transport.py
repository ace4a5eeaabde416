"""One HTTP request to the API, with the envelope read and retries decided.

This is the only module that touches ``requests``. It turns every answer into
either the envelope's ``data`` or a typed ``TaskManagerError``, retries what is
worth retrying (no answer, timeouts, 429 after ``Retry-After``, 502/503/504)
within a total deadline, and logs each attempt without the API key.
Clock, sleep and randomness are injected so tests never sleep.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from .config import TaskManagerConfig
from .exceptions import (
    BODY_SNIPPET_CHARS,
    TaskManagerAPIError,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerTimeoutError,
    TaskManagerValidationError,
)

logger = logging.getLogger("taskmanager.client")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "taskmanager-bridge/0.1 (+python-requests)"

# (status, error text) -> True when the answer means "nothing to return" rather than an error.
NothingPredicate = Callable[[int, str], bool]
# Called after every attempt: (method, path with ids folded to {id}, status or error name, seconds).
RequestObserver = Callable[[str, str, str, float], None]


def path_template(path: str) -> str:
    """``/tasks/12/complete`` -> ``/tasks/{id}/complete``: one label per endpoint."""
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


@dataclass(frozen=True)
class RateLimitInfo:
    """The server's ``X-RateLimit-*`` headers from the latest answer that had them."""

    limit: int | None
    remaining: int | None
    reset: float | None


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with +-20% jitter: 1 s, 2 s, 4 s ... for base 1, capped.

    Jitter keeps a fleet of bridges that lost the server at the same moment from
    coming back at the same moment.
    """
    nominal = min(cap, base * (2**retry_number))
    return float(nominal * rng.uniform(0.8, 1.2))


# Longest wait a server may ask for: anything longer is treated as this (a day).
MAX_RETRY_AFTER_SECONDS = 86_400.0


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
    """``Retry-After`` in seconds: delta-seconds or an HTTP date."""
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


def encode_body(body: Any) -> bytes:
    """JSON the way the server reads it; NaN and non-JSON values refused before sending."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8"
        )
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise TaskManagerValidationError(None, f"request body is not valid JSON: {exc}") from None


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    return finite_number(headers.get(name))


def _error_text(body: Mapping[str, Any]) -> str:
    """The error message from either envelope shape (app errors, security layer)."""
    error, message = body.get("error"), body.get("message")
    if isinstance(error, str) and isinstance(message, str) and message and message != error:
        return f"{error}: {message}"
    for candidate in (error, message):
        if isinstance(candidate, str) and candidate:
            return candidate
    return "error answer without a message"


@dataclass(frozen=True)
class Answer:
    """What came back, before it is judged."""

    status: int
    body: dict[str, Any] | None  # None when the text is not a JSON object
    text: str
    headers: Mapping[str, str]


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

    @staticmethod
    def _own_session(config: TaskManagerConfig) -> requests.Session:
        """A session with the environment's proxy and CA settings resolved once.

        With ``trust_env`` on, requests scans the whole environment for proxies
        and CA bundles on every request (about 0.3 ms each, measured); the
        settings are read here, when the client is built, like the rest of the
        config, and applied to every request.
        """
        session = requests.Session()
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
    ) -> Answer:
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
        except requests.Timeout as exc:
            raise TaskManagerTimeoutError(
                f"no answer within the timeout ({type(exc).__name__})", method=method, url=url
            ) from None
        except requests.exceptions.SSLError as exc:
            raise _NotRetryable(
                TaskManagerConnectionError(
                    f"TLS failed (certificate not trusted?): {exc}", method=method, url=url
                )
            ) from None
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise TaskManagerConnectionError(
                f"connection failed ({type(exc).__name__}: {_first_line(exc)})",
                method=method,
                url=url,
            ) from None
        except requests.RequestException as exc:
            raise _NotRetryable(
                TaskManagerConnectionError(f"request failed: {exc}", method=method, url=url)
            ) from None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Answer(
            response.status_code,
            parsed if isinstance(parsed, dict) else None,
            text,
            response.headers,
        )

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
        max_retries = self.config.retry_attempts if retries is None else retries
        url = self.config.api_url + path
        payload = encode_body(body) if body is not None else None
        started = self.clock()
        retry_number = 0
        while True:
            attempt_started = self.clock()
            try:
                answer = self._send(method, url, payload, query, auth)
            except _NotRetryable as wrapped:
                self._observe(method, path, type(wrapped.error).__name__, attempt_started)
                raise wrapped.error from None
            except TaskManagerConnectionError as exc:
                self._observe(method, path, type(exc).__name__, attempt_started)
                error: TaskManagerError = exc
                status_text = type(exc).__name__
                delay_hint: float | None = None
            else:
                self._observe(method, path, str(answer.status), attempt_started)
                self._note_rate_limit(answer.headers)
                outcome = self._judge(method, url, answer, nothing_when)
                if not isinstance(outcome, TaskManagerError):
                    logger.debug(
                        "%s %s -> %s in %.1f ms",
                        method,
                        path,
                        answer.status,
                        (self.clock() - attempt_started) * 1000,
                    )
                    return outcome.data
                error = outcome
                status_text = str(answer.status)
                if answer.status not in RETRYABLE_STATUSES:
                    logger.debug("%s %s -> %s (not retried)", method, path, answer.status)
                    raise error
                delay_hint = (
                    error.retry_after if isinstance(error, TaskManagerRateLimitError) else None
                )
            if retry_number >= max_retries:
                raise error
            delay = (
                delay_hint
                if delay_hint is not None
                else backoff_delay(
                    retry_number,
                    self.config.backoff_base,
                    self.config.backoff_max,
                    self.rng,
                )
            )
            elapsed = self.clock() - started
            if elapsed + delay > self.config.retry_deadline:
                logger.warning(
                    "%s %s -> %s; giving up: a %.1f s wait would pass the %.0f s retry deadline",
                    method,
                    path,
                    status_text,
                    delay,
                    self.config.retry_deadline,
                )
                raise error
            retry_number += 1
            logger.warning(
                "%s %s -> %s; retry %d/%d in %.2f s",
                method,
                path,
                status_text,
                retry_number,
                max_retries,
                delay,
            )
            self.sleep(delay)

    def _judge(
        self, method: str, url: str, answer: Answer, nothing_when: NothingPredicate | None
    ) -> _Data | TaskManagerError:
        body = answer.body
        if body is None or ("success" not in body and "error" not in body):
            snippet = answer.text[:BODY_SNIPPET_CHARS] if answer.text else "(empty body)"
            return TaskManagerProtocolError(
                answer.status,
                f"expected the API's JSON envelope, got HTTP {answer.status} with {snippet!r}",
                body,
                method=method,
                url=url,
                raw_text=answer.text[:BODY_SNIPPET_CHARS],
            )
        if 200 <= answer.status < 300 and body.get("success") is True:
            return _Data(body.get("data"))
        message = _error_text(body)
        if nothing_when is not None and nothing_when(answer.status, message):
            return _Data(None)
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        if retry_after is None:
            retry_after = wait_seconds(body.get("retry_after"))
        return TaskManagerAPIError.from_response(
            answer.status,
            message,
            body,
            method=method,
            url=url,
            raw_text=answer.text[:BODY_SNIPPET_CHARS],
            retry_after=retry_after,
        )

    def _observe(self, method: str, path: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            try:
                self.observer(method, path_template(path), outcome, self.clock() - started)
            except Exception:  # metrics must never break a request
                logger.debug("request observer failed", exc_info=True)

    def _note_rate_limit(self, headers: Mapping[str, str]) -> None:
        if "X-RateLimit-Limit" in headers or "X-RateLimit-Remaining" in headers:
            limit = _header_number(headers, "X-RateLimit-Limit")
            remaining = _header_number(headers, "X-RateLimit-Remaining")
            self.last_rate_limit = RateLimitInfo(
                int(limit) if limit is not None else None,
                int(remaining) if remaining is not None else None,
                _header_number(headers, "X-RateLimit-Reset"),
            )


@dataclass(frozen=True)
class _Data:
    data: Any


class _NotRetryable(Exception):
    """Carries a connection error that retrying cannot fix (TLS, invalid request)."""

    def __init__(self, error: TaskManagerConnectionError) -> None:
        super().__init__(str(error))
        self.error = error


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


__all__ = ["RETRYABLE_STATUSES", "RateLimitInfo", "Transport", "backoff_delay", "parse_retry_after"]
