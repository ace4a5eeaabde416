"""The blocking transport: carries a request's steps out with ``requests``.

This is the only module that touches ``requests``. What to send, what an
answer means and whether to try again are decided in ``exchange`` and
``protocol`` (no I/O, shared with the asyncio transport); this module sends
and sleeps. ``root_cause`` words a failed connection for both transports.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from .config import TaskManagerConfig
from .connection_settings import warn_if_unverified
from .exceptions import TaskManagerConfigError
from .exchange import (
    USER_AGENT,
    Drive,
    Requester,
    RequestObserver,
    Send,
    Sleep,
    Steps,
    path_template,
)
from .no_answer import FailureKind, no_answer, root_cause
from .protocol import (
    RETRYABLE_STATUSES,
    Answer,
    Outcome,
    RateLimitInfo,
    backoff_delay,
    decode_body,
    parse_retry_after,
)

_R = TypeVar("_R")

logger = logging.getLogger("taskmanager.client")
POOL_SIZE = 32


class BlockingTransport:
    """The blocking transports' loop: a request's steps carried out in the calling
    thread, with ``_send`` (one HTTP exchange) left to the library that carries it."""

    sleep: Callable[[float], None]
    _closed: bool = False

    def run(self, steps: Steps[_R]) -> _R:
        """Carry out ``steps`` (a request, or an operation made of requests) to its end.

        An unexpected error while sending is thrown into the steps, where the
        operation may handle it (a health check answers False).
        """
        if self._closed:
            steps.close()
            raise TaskManagerConfigError("the client is closed")
        drive = Drive(steps)
        while (step := drive.next()) is not None:
            if isinstance(step, Sleep):
                self.sleep(step.seconds)
                continue
            with drive.sending():
                drive.reply = self._send(step)
        return drive.result

    @property
    def closed(self) -> bool:
        return self._closed

    def _send(self, send: Send) -> Answer | Outcome:
        raise NotImplementedError


class Transport(BlockingTransport):
    """Carries out a ``Requester``'s steps through one ``requests.Session`` (keep-alive).

    ``sleep`` is injected so that tests of retries never wait.
    """

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
        self.config = config
        self.requester = Requester(config, clock=clock, rng=rng, observer=observer)
        self.session = session if session is not None else self._own_session(config)
        if not config.verify_tls:
            self.session.verify = False
        warn_if_unverified(config)
        self.sleep = sleep
        self._closed = False

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
        """Close the session; later calls are refused (requests would quietly open new
        connections, and a client on aiohttp cannot: both say the same)."""
        self._closed = True
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send with retries and return the envelope's ``data`` (see ``Requester.exchange``)."""
        return self.run(self.requester.exchange(method, path, **kwargs))

    def _send(self, send: Send) -> Answer | Outcome:
        """One HTTP exchange: the answer, or the ``Outcome`` of getting none."""
        try:
            response = self.session.request(
                send.method,
                send.url,
                data=send.body,
                params=send.query,
                headers=dict(send.headers),
                timeout=self.config.timeouts,
                allow_redirects=False,
                stream=True,  # the body read below, once the status is known
            )
        except requests.RequestException as exc:
            return _no_answer(exc, send.method, send.url)
        if 100 <= response.status_code < 200:
            return _interim(response, send)
        try:
            text = response.text
        except requests.RequestException as exc:
            response.close()
            return _no_answer(exc, send.method, send.url)
        return Answer(response.status_code, decode_body(text), text, response.headers)


def _interim(response: requests.Response, send: Send) -> Outcome:
    """An interim answer (102 Processing, 103 Early Hints from a CDN) that urllib3 took
    for the answer, as ``http.client`` does for all but 100: the real one is still to
    come on that connection, and would be read as the next request's answer. The
    connection is closed before it goes back to the pool, and this answer counts as
    lost: the request may have been applied, as when a connection drops after it left."""
    response.close()  # its body unread: urllib3 closes the connection
    lost = requests.ConnectionError(
        f"an interim {response.status_code} answer where the answer was due; "
        "the connection was closed"
    )
    return no_answer("connection", lost, send.method, send.url)


def _no_answer(exc: requests.RequestException, method: str, url: str) -> Outcome:
    """Which kind of failure a ``requests`` error is (see ``no_answer``)."""
    kind: FailureKind
    if isinstance(exc, requests.Timeout):
        kind = "timeout"
    elif isinstance(exc, requests.exceptions.SSLError):
        kind = "tls"
    elif isinstance(
        exc,
        (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ),
    ):
        kind = "connection"
    else:
        kind = "request"
    return no_answer(kind, exc, method, url)


__all__ = [
    "RETRYABLE_STATUSES",
    "USER_AGENT",
    "RateLimitInfo",
    "RequestObserver",
    "Transport",
    "backoff_delay",
    "parse_retry_after",
    "path_template",
    "root_cause",
]
