"""The asyncio transport: carries a request's steps out with ``aiohttp``.

Chosen by measurement (docs/BENCHMARKS.md, "Async HTTP library"): 3,000
creates, 50 at a time, against the emulator on one machine: aiohttp about
1,600 requests/s with 2.1 CPU seconds in all, httpx 230-290 requests/s with
11-14 CPU seconds. The specification names aiohttp too. It is an optional
extra (``pip install "taskmanager-bridge[async]"``); ``import taskmanager``
works without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .config import TaskManagerConfig
from .connection_settings import env_proxy, ssl_setting, warn_if_unverified
from .exceptions import TaskManagerConfigError
from .exchange import Drive, Send, Sleep, Steps
from .no_answer import FailureKind, no_answer
from .protocol import Answer, Outcome, decode_body

try:
    import aiohttp
    from yarl import URL
except ImportError as missing:  # pragma: no cover - exercised by the packaging test
    raise ImportError(
        "the asyncio client needs aiohttp: pip install 'taskmanager-bridge[async]'"
    ) from missing

logger = logging.getLogger("taskmanager.client")

_R = TypeVar("_R")

# Connections kept per client: enough for a few hundred coroutines sharing one client
# (aiohttp's default); more would only queue at the server.
POOL_SIZE = 100


class AsyncTransport:
    """Carries a ``Requester``'s steps out through one ``aiohttp.ClientSession``.

    The session is made on first use, inside the running loop (aiohttp binds it
    to the loop), unless the caller passes one; ``close`` closes only our own.
    """

    def __init__(
        self,
        config: TaskManagerConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.session = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the session is on
        self.sleep = sleep
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.timeout
        )
        self._ssl = ssl_setting(config)
        # The environment's proxy for api_url, read once like the blocking client's:
        # aiohttp's trust_env would scan the environment on every request.
        self._proxy = env_proxy(config.api_url)
        # api_url as yarl writes it (IDNA host, escapes), once: the paths added to it are
        # sent as built (see _wire_url).
        self._base = str(URL(config.api_url))
        warn_if_unverified(config)

    async def close(self) -> None:
        if self._owns_session and self.session is not None:
            await self.session.close()
            self.session = None

    async def run(self, steps: Steps[_R]) -> _R:
        """Carry out ``steps`` to its end (the asyncio twin of ``Transport.run``)."""
        drive = Drive(steps)
        while (step := drive.next()) is not None:
            if isinstance(step, Sleep):
                await self.sleep(step.seconds)
                continue
            with drive.sending():
                drive.reply = await self._send(step)
        return drive.result

    def _session(self) -> aiohttp.ClientSession:
        """Our session on the running loop. A session is bound to the loop it was made
        on: ours is made again on a new loop once the old one closed (``asyncio.run``
        twice); a live other loop, or a caller's session, is a clear error."""
        loop = asyncio.get_running_loop()
        if self.session is not None and not self.session.closed and self._loop is not loop:
            if not self._owns_session or (self._loop is not None and not self._loop.is_closed()):
                raise TaskManagerConfigError(
                    "an AsyncTaskManagerClient serves one event loop at a time: make one "
                    "client per loop (this one's session belongs to another, running loop)"
                )
            self.session = None  # its loop is gone, and its connections with it
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE, ssl=self._ssl)
            )
            self._owns_session = True
            self._loop = loop
        elif self._loop is None:
            self._loop = loop  # the caller's session, first used here
        return self.session

    async def _send(self, send: Send) -> Answer | Outcome:
        """One HTTP exchange: the answer, or the ``Outcome`` of getting none."""
        query = {k: str(v) for k, v in send.query.items()} if send.query else None
        try:
            async with self._session().request(
                send.method,
                self._wire_url(send.url),
                data=send.body,
                params=query,
                headers=dict(send.headers),
                timeout=self._timeout,
                allow_redirects=False,
                proxy=self._proxy,
                # verify_tls=False holds on a caller's session too; otherwise the session's
                # own settings (ours: self._ssl; a caller's: its client certificate, pins)
                ssl=self._ssl is not False,
            ) as response:
                text = await response.text(errors="replace")
                return Answer(response.status, decode_body(text), text, response.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return no_answer(_failure_kind(exc), exc, send.method, send.url)

    def _wire_url(self, url: str) -> URL:
        """The URL exactly as built: the path after ``api_url`` is already encoded as the
        server must see it (a type name raw wherever a path allows). Parsed as usual, yarl
        would rewrite it (decoding ``%3A`` to ``:``, while it keeps ``%2B``), and the server
        matches names without decoding."""
        base = self.config.api_url
        if not url.startswith(base):
            return URL(url)
        return URL(self._base + url[len(base) :], encoded=True)


def _failure_kind(exc: BaseException) -> FailureKind:
    """Which kind of failure an aiohttp error is (see ``no_answer``)."""
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return "connection"
    return "request"
