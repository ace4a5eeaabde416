"""Why a request got no answer, in words, and whether another try could get one.

Each transport sorts its HTTP library's errors into a ``FailureKind``; the
words and the retry verdict are decided here once, so that a timeout, a
refused connection or a TLS failure reads and behaves the same from the
blocking and the asyncio client.
"""

from __future__ import annotations

import socket
import ssl
from typing import Literal

from .exceptions import TaskManagerConnectionError, TaskManagerTimeoutError
from .protocol import Outcome

# timeout: no answer in time; tls: the certificate or handshake failed; connection:
# refused, reset, truncated; request: the request itself could not be made; closed: the
# client was closed while the request was in flight.
FailureKind = Literal["timeout", "tls", "connection", "request", "closed"]


def no_answer(kind: FailureKind, exc: BaseException, method: str, url: str) -> Outcome:
    """The ``Outcome`` of an attempt that got no answer.

    A timeout or a broken connection may heal; a TLS failure or an invalid
    request will fail the same way again.
    """
    error: TaskManagerConnectionError
    if kind == "timeout":
        error = TaskManagerTimeoutError(
            f"no answer within the timeout ({type(exc).__name__})", method=method, url=url
        )
    elif kind == "tls":
        error = TaskManagerConnectionError(
            f"TLS failed (certificate not trusted?): {exc}", method=method, url=url
        )
    elif kind == "connection":
        error = TaskManagerConnectionError(
            f"connection failed: {root_cause(exc)}", method=method, url=url
        )
    elif kind == "closed":
        error = TaskManagerConnectionError(
            "the client was closed before the server answered (it may have applied the request)",
            method=method,
            url=url,
        )
    else:
        error = TaskManagerConnectionError(f"request failed: {exc}", method=method, url=url)
    return Outcome(
        error=error, retryable=kind in ("timeout", "connection"), label=type(error).__name__
    )


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
