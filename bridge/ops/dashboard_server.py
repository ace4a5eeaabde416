"""The daemon's HTTP port: the dashboard (``/``), ``/healthz``, ``/status.json`` and,
with the ``[metrics]`` extra installed, Prometheus ``/metrics``.

A standard-library ``ThreadingHTTPServer``: the page and the probe must work on a
host without prometheus-client. Everything is read through ``Operations``.

Whoever reaches the port cannot take what the daemon needs (``DashboardLimits``):
at most ``connections`` are served at once, each on its own thread; a connection
must bring a whole request within ``request_seconds`` of opening or of its last
answer, else it is closed (an idle keep-alive, a client that sends nothing or
trickles its headers). When every slot is taken, the connection that has waited
longest for its request is closed to make room; when every slot is answering a
request, new connections wait in the kernel's listen backlog, which costs the
daemon no descriptor and no thread.

On a loopback address, every request (every method, every path) must name a
loopback host in its ``Host`` header (``localhost``, ``127.x.x.x``, ``[::1]``, any
port), else it gets 403: a web page elsewhere cannot rebind its own name to
127.0.0.1 and read the dashboard through the operator's browser. On any other
address the server cannot know its public names, so there is no such check:
reading is what the operator chose by binding off loopback, and actions need the
token.

Actions (retry or discard a dead outbox row) are off unless the operator turns
them on. On a loopback address they need nothing more; anywhere else they need
the token from ``BRIDGE_DASHBOARD_TOKEN`` (typed into the page, or sent as
``Authorization: Bearer ...``), and the daemon refuses to start without one. A
POST must come from the page itself (its ``Origin``, when sent, is the
dashboard's): a web page elsewhere cannot make the operator's browser act.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from taskmanager.config import is_loopback_host

from ..errors import BridgeConfigError, BridgeError
from .dashboard_app import TOKEN_VARIABLE, DashboardApp

logger = logging.getLogger("bridge.dashboard")

MAX_FORM_BYTES = 4096
POLL_SECONDS = 0.5  # the server loop looks at the connections' deadlines at least this often


@dataclass(frozen=True)
class DashboardLimits:
    """What the connections to the dashboard's port may take of the daemon.

    Each connection costs a descriptor and a thread; without a bound, idle ones
    opened by anyone who reaches the port used up the daemon's descriptors, and its
    requests to the server failed with "Too many open files".
    """

    connections: int = 16
    """Connections served at once (one thread each); a browser, a Prometheus scrape and
    a probe need a few."""
    request_seconds: float = 5.0
    """A connection must bring a whole request (line, headers, form) within this of
    opening or of its last answer; writing an answer may take as long."""

    def __post_init__(self) -> None:
        if self.connections < 1 or not self.request_seconds > 0:
            raise BridgeConfigError(f"dashboard limits must be positive, got {self}")


def _host_is_loopback(host_header: str) -> bool:
    try:
        return is_loopback_host(urlsplit(f"//{host_header}").hostname)
    except ValueError:  # not a host at all ("[::1", a bad port)
        return False


class _Slots:
    """The connections being served: how many (at most the cap), and the deadline of
    each that is waiting for a request; one that is answering has none."""

    def __init__(self, limits: DashboardLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._changed = threading.Condition()
        self._taken = 0  # connections accepted (or being accepted) and not yet closed
        self._waiting: dict[socket.socket, float] = {}  # in deadline order (insertion)

    def reserve(self, timeout: float) -> bool:
        """A slot for the next connection, within ``timeout``; when all are taken, the
        connection that has waited longest for its request is closed to free one."""
        with self._changed:
            if self._taken >= self._limits.connections and self._waiting:
                self._drop(next(iter(self._waiting)))
            if not self._changed.wait_for(lambda: self._taken < self._limits.connections, timeout):
                return False
            self._taken += 1
            return True

    def release(self, connection: socket.socket | None) -> None:
        """The connection is closed (None: the reserved slot got no connection)."""
        with self._changed:
            if connection is not None:
                self._waiting.pop(connection, None)
            self._taken -= 1
            self._changed.notify_all()

    def waiting(self, connection: socket.socket) -> None:
        with self._changed:
            self._waiting.pop(connection, None)  # to the end: the order stays the deadlines'
            self._waiting[connection] = self._clock() + self._limits.request_seconds

    def answering(self, connection: socket.socket) -> None:
        with self._changed:
            self._waiting.pop(connection, None)

    def reap(self) -> None:
        """Close every connection whose request did not come in time."""
        now = self._clock()
        with self._changed:
            late = [c for c, deadline in self._waiting.items() if deadline <= now]
            for connection in late:
                self._drop(connection)

    def _drop(self, connection: socket.socket) -> None:
        """Wake its thread, blocked reading, with an end of file; the thread then ends
        and closes it (closing it from here could close a reused descriptor number)."""
        del self._waiting[connection]
        with contextlib.suppress(OSError):  # already gone
            connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Each read and each whole write may block this long at most; the deadline for
        # a whole request is the server's (a client trickling bytes never hits this).
        self.connection.settimeout(self.server.limits.request_seconds)

    def handle_one_request(self) -> None:
        self.server.slots.waiting(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.server.loopback and not _host_is_loopback(self.headers.get("Host", "localhost")):
            self._text(
                HTTPStatus.FORBIDDEN,
                "refused: this dashboard answers requests addressed to a loopback name "
                "only (localhost, 127.0.0.1, [::1])",
            )
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.slots.answering(self.connection)
        url = urlsplit(self.path)
        app = self.server.app
        routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
            "/": lambda: app.page(parse_qs(url.query).get("note", [""])[0]),
            "/healthz": lambda: app.healthz(url.query),
            "/status.json": app.status_json,
            "/metrics": app.metrics,
        }
        route = routes.get(url.path)
        if url.path == "/tasks" or url.path.startswith("/tasks/"):
            if not self.server.loopback and not self._bearer_allowed():
                self._text(
                    HTTPStatus.FORBIDDEN,
                    "task pages show params, results and tracebacks: beyond loopback they "
                    f"answer only with the token ({TOKEN_VARIABLE}) as Authorization: Bearer",
                )
                return
            if url.path == "/tasks":
                route = partial(app.task_list, parse_qs(url.query))
            else:
                route = partial(app.task, unquote(url.path[len("/tasks/") :]))
        if route is None:
            self._text(HTTPStatus.NOT_FOUND, f"no page {url.path}: try / or /healthz")
            return
        try:
            status, body, content_type = route()
        except BridgeError as exc:
            status, body, content_type = 503, f"{exc}\n".encode(), "text/plain; charset=utf-8"
        self._send(status, body, content_type)

    def _bearer_allowed(self) -> bool:
        """A configured token, sent as ``Authorization: Bearer``."""
        policy = self.server.app.policy
        bearer = self.headers.get("Authorization", "")
        supplied = bearer[7:] if bearer.startswith("Bearer ") else None
        return policy.token is not None and policy.token_matches(supplied)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/actions":
            self._text(HTTPStatus.NOT_FOUND, "POST goes to /actions")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        self.server.slots.answering(self.connection)
        refusal = self._refusal(form)
        if refusal is not None:
            status, why = refusal
            self._text(status, why)
            return
        try:
            note = self.server.app.act(form)
        except BridgeError as exc:
            self._text(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self._send(
            HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/?" + urlencode({"note": note})
        )

    def _refusal(self, form: dict[str, list[str]]) -> tuple[int, str] | None:
        """Why this POST may not act (None: it may)."""
        policy = self.server.app.policy
        if not policy.enabled:
            return HTTPStatus.FORBIDDEN, "actions are off (run --dashboard-actions)"
        host = self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return HTTPStatus.FORBIDDEN, "refused: the request did not come from this dashboard"
        if policy.token is None and not _host_is_loopback(host):
            return HTTPStatus.FORBIDDEN, "refused: actions without a token answer loopback only"
        bearer = self.headers.get("Authorization", "")
        supplied = bearer[7:] if bearer.startswith("Bearer ") else form.get("token", [None])[0]
        if not policy.allows(supplied):
            return HTTPStatus.FORBIDDEN, f"refused: wrong or missing token ({TOKEN_VARIABLE})"
        return None


class DashboardHTTPServer(ThreadingHTTPServer):
    """A connection is accepted only into a free slot (``_Slots``); its thread ends, and
    frees the slot, when the connection closes."""

    daemon_threads = True
    request_queue_size = 128  # waiting in the kernel's backlog costs the daemon nothing

    def __init__(
        self,
        address: tuple[str, int],
        app: DashboardApp,
        limits: DashboardLimits = DashboardLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limits = limits
        self.slots = _Slots(limits, clock)
        self.loopback = is_loopback_host(address[0])
        # How often the server loop looks at the deadlines: a late connection is closed
        # at most this long after its deadline.
        self.poll_seconds = min(POLL_SECONDS, limits.request_seconds / 4)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        # An OSError here is "no request this time" to the server loop, which then
        # looks at the deadlines (service_actions) and comes back.
        if not self.slots.reserve(self.poll_seconds):
            raise OSError("every dashboard connection is answering a request")
        try:
            return super().get_request()
        except BaseException:
            self.slots.release(None)
            raise

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            self.slots.release(cast(socket.socket, request))

    def service_actions(self) -> None:
        self.slots.reap()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or cut off is routine here, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("dashboard connection from %s ended: %s", client_address, error)
        else:
            logger.exception("dashboard: error answering %s", client_address)


class DashboardServer:
    """Binds at once (a busy port is a clear error before the daemon starts), then serves
    from a background thread until ``stop``."""

    def __init__(
        self,
        app: DashboardApp,
        address: str,
        port: int,
        *,
        limits: DashboardLimits = DashboardLimits(),
    ) -> None:
        try:
            self.httpd = DashboardHTTPServer((address, port), app, limits)
        except OSError as exc:
            raise BridgeConfigError(
                f"cannot serve the dashboard on {address}:{port}: {exc.strerror or exc}"
            ) from None
        except OverflowError:
            raise BridgeConfigError(f"port {port} is out of range (0-65535)") from None
        self.address = address
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            args=(self.httpd.poll_seconds,),
            name="dashboard",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
