"""The client's exception tree.

Every error a caller can see is a ``TaskManagerError``. Errors that come from an
HTTP answer carry their evidence (method, URL, status, parsed body, first bytes
of the raw text) so a log line or a dead outbox row explains itself. The status
-> class mapping lives in one table, ``TaskManagerAPIError.from_response``.
The URL an error keeps is masked (``mask_url``): its text is stored and shown
everywhere, and ``api_url`` may hold a proxy's password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .redact import mask_url

# The server's words when MariaDB refused a value longer than its column (SQLSTATE 22001,
# MariaDB error 1406): permanent, the same body fails the same way.
DATA_TOO_LONG_MARKERS = ("SQLSTATE[22001]", "Data too long for column")

# How much of a non-JSON body an error keeps: enough to recognise an HTML error
# page or a truncated envelope, small enough for one log line.
BODY_SNIPPET_CHARS = 200


class TaskManagerError(Exception):
    """Base of every error raised by this library."""


class TaskManagerConfigError(TaskManagerError, ValueError):
    """A setting is missing, has the wrong type, or is unsafe (names the setting)."""


class TaskManagerAPIError(TaskManagerError):
    """An answer from the server (or something in front of it) that is not a success.

    ``status_code`` is ``None`` for errors detected before any request was sent
    (for example params that fail client-side validation).
    """

    def __init__(
        self,
        status_code: int | None,
        message: str,
        response_data: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        url: str | None = None,
        raw_text: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.response_data = dict(response_data) if response_data is not None else None
        self.method = method
        self.url = mask_url(url) if url is not None else None
        self.raw_text = raw_text
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"API Error {self.status_code}: {self.message}" if self.status_code else self.message
        if self.method and self.url:
            return f"{head} on {self.method} {self.url}"
        return head

    @property
    def details(self) -> list[str]:
        """The server's validation details (``"details": [...]``), if any."""
        raw = (self.response_data or {}).get("details")
        if isinstance(raw, list):
            return [str(item) for item in raw]
        return []

    @classmethod
    def from_response(
        cls,
        status_code: int,
        message: str,
        response_data: Mapping[str, Any] | None,
        *,
        method: str,
        url: str,
        raw_text: str | None = None,
        retry_after: float | None = None,
    ) -> TaskManagerAPIError:
        """Pick the subclass for an error answer; the one place status maps to type."""
        kwargs: dict[str, Any] = {"method": method, "url": url, "raw_text": raw_text}
        lowered = message.lower()
        if status_code == 429:
            return TaskManagerRateLimitError(
                status_code, message, response_data, retry_after=retry_after, **kwargs
            )
        if "not in claimed state" in lowered or "claimed by another worker" in lowered:
            return TaskManagerConflictError(status_code, message, response_data, **kwargs)
        if status_code >= 500 and any(marker in message for marker in DATA_TOO_LONG_MARKERS):
            column = re.search(r"for column '([^']+)'", message)
            return TaskManagerDataTooLongError(
                status_code,
                message,
                response_data,
                column=column[1] if column else None,
                **kwargs,
            )
        error_class: type[TaskManagerAPIError]
        if status_code in (401, 403):
            error_class = TaskManagerAuthError
        elif status_code == 404:
            error_class = TaskManagerNotFoundError
        elif status_code == 413:
            error_class = TaskManagerRequestTooLargeError
        elif 400 <= status_code < 500:
            error_class = TaskManagerValidationError
        elif status_code >= 500:
            error_class = TaskManagerServerError
        else:
            error_class = TaskManagerAPIError
        return error_class(status_code, message, response_data, **kwargs)


class TaskManagerAuthError(TaskManagerAPIError):
    """401 (missing or wrong API key) or 403 from the security layer (IP block)."""


class TaskManagerValidationError(TaskManagerAPIError):
    """The request was rejected for its content (400), or refused before sending.

    Never retried: the same request would be rejected again.
    """


class TaskManagerRequestTooLargeError(TaskManagerValidationError):
    """413: the body is over the server's size limit; smaller is the only fix."""


class TaskManagerDataTooLongError(TaskManagerValidationError):
    """A value bigger than the server can store: refused before sending, or answered by
    the server with 500 ``SQLSTATE[22001] ... Data too long for column '...'``.

    The server keeps params, a result and a failure's error text in columns of at most
    65,535 bytes; over that its insert fails, and resending the same body fails the
    same way. So it is a validation error (never retried), not a server error.
    ``column`` is the server's column (``params_json``, ``result_json``,
    ``error_message``) when known; ``size`` and ``limit`` are bytes, when known.
    """

    def __init__(
        self,
        status_code: int | None,
        message: str,
        response_data: Mapping[str, Any] | None = None,
        *,
        column: str | None = None,
        size: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.column, self.size, self.limit = column, size, limit
        super().__init__(status_code, message, response_data, **kwargs)


class TaskManagerNotFoundError(TaskManagerAPIError):
    """404, or the server's 200 answer with an empty ``items`` list for an unknown id."""


class TaskManagerConflictError(TaskManagerAPIError):
    """The task is not ours to finish any more.

    400 ``Task is not in claimed state`` (already finished, or reset for retry)
    or 403 ``Task is claimed by another worker`` (our lease ran out and someone
    re-claimed it). ``current_task`` holds the task as the server showed it when
    the client read it back to settle the conflict, if it did; ``read_error`` why
    that read failed, if it did (an outage then is not the row's fault).
    """

    current_task: Any = None
    read_error: TaskManagerError | None = None


class TaskManagerRateLimitError(TaskManagerAPIError):
    """429 that outlasted the retry deadline; ``retry_after`` is in seconds."""

    def __init__(
        self,
        status_code: int | None,
        message: str,
        response_data: Mapping[str, Any] | None = None,
        *,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status_code, message, response_data, **kwargs)


class TaskManagerServerError(TaskManagerAPIError):
    """5xx: the server failed.

    502/503/504 and 500s reporting a database deadlock (rolled back, so safe to
    send again) were retried before this was raised; any other 500 is not.
    """


class TaskManagerProtocolError(TaskManagerAPIError):
    """The answer is not the JSON envelope: an HTML error page, an empty or truncated body.

    Usually something in front of the server (proxy, hosting page) or a wrong
    ``api_url``. The message shows the status and the first bytes of the body.
    """


class TaskManagerConnectionError(TaskManagerError):
    """No answer at all: refused, reset, DNS, TLS, or a timeout, after retries.

    The bridge reads this as "the network or the server is down" (an outage),
    never as a verdict on the request itself.
    """

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        self.method = method
        self.url = mask_url(url) if url is not None else None
        if url is not None and self.url is not None:
            # The HTTP library's own text may quote the URL whole ("Failed to parse: ...").
            message = message.replace(url, self.url)
        super().__init__(f"{message} on {method} {self.url}" if method and self.url else message)


class TaskManagerTimeoutError(TaskManagerConnectionError):
    """The server accepted the connection but did not answer in time."""
