"""``EmulatorServer``: the emulated API over real HTTP on loopback, with fault controls.

HTTP/1.1 with keep-alive (like a hosted deployment behind a web server), one
thread per connection. The state outlives outages: ``go_down()`` closes the
listening socket and every open connection (clients see "connection
refused"/"reset"), ``come_back()`` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ..transport import path_template
from .app import EmulatorApp, EmulatorSettings, Response, api_path
from .faults import FaultKind, FaultPlan
from .store import EmulatorStore

logger = logging.getLogger("taskmanager.emulator")

# An idle keep-alive connection is closed after this long, as web servers do.
IDLE_CONNECTION_SECONDS = 30.0


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int | str  # "dropped", "held" or "hung" when no answer was sent
    at: float = 0.0  # time.monotonic() when the request arrived
    answered: float = 0.0  # time.monotonic() when its answer was ready


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_SECONDS
    server: _Listener

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes; without this, Nagle + delayed ACK stall
        # every keep-alive answer by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.emulator.track_connection(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.emulator.track_connection(self.connection, add=False)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _abort(self) -> None:
        """Close without answering: the client sees the connection reset or closed."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        emulator = self.server.emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        network = emulator.settings.network_seconds
        if network:
            time.sleep(network)  # the request on its way: no place among `concurrency`
        arrived = time.monotonic()
        path = api_path(self.path)
        with emulator.serving():
            response = self._answer(emulator, path, body, arrived)
        if response is None:
            return  # aborted: no answer to send
        if network:
            time.sleep(network)  # the answer on its way back
        self.send_response(response.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _answer(
        self, emulator: EmulatorServer, path: str | None, body: bytes, arrived: float
    ) -> Response | None:
        """What the server answers (recorded when it is ready), or None when a fault
        closed the connection instead."""
        if emulator.faults.latency:
            time.sleep(emulator.faults.latency)
        # Outside /api the web server answers (app.WEB_SERVER_404): no fault of the API's.
        rule = emulator.faults.take(self.command, path) if path is not None else None
        if path is None:
            path = urlsplit(self.path).path
        if rule is not None and rule.kind is FaultKind.HANG:
            emulator.record_request(self.command, path, "hung", arrived)
            emulator.faults.wait_released()
            self._abort()
            return None
        if rule is not None and rule.kind is FaultKind.FAIL:
            response = (
                Response(
                    rule.status, rule.body, {"Content-Type": rule.content_type, **rule.headers}
                )
                if rule.body is not None
                else emulator.app.error(
                    rule.status,
                    rule.error or f"Injected failure ({rule.status})",
                    headers=rule.headers,
                )
            )
        else:
            response = emulator.app.handle(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                self.client_address[0],
            )
        if rule is not None and rule.kind is FaultKind.DROP_AFTER_COMMIT:
            emulator.record_request(self.command, path, "dropped", arrived)
            self._abort()
            return None
        if rule is not None and rule.kind is FaultKind.HOLD_AFTER_COMMIT:
            emulator.record_request(self.command, path, "held", arrived)
            emulator.faults.wait_released()
            self._abort()
            return None
        emulator.record_request(self.command, path, response.status, arrived)
        return response

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.info("%s %s -> %s", self.command, self.path, code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: fifty clients connecting at once had their
    # SYNs dropped and waited 1-3 s to retry. Web servers listen with 511 (nginx).
    request_queue_size = 511
    emulator: EmulatorServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (reset, broken pipe) is routine; anything else is logged."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            logger.debug("client %s went away: %s", client_address, error)
        else:
            logger.exception("error while serving %s", client_address)


class EmulatorServer:
    """A running emulated TaskManager API; use as a context manager.

    ``url`` is the API base URL (``http://127.0.0.1:PORT/api``), ``api_key``
    the key it accepts. ``faults`` injects failures; ``go_down``/``come_back``
    (or ``with server.outage():``) cut and restore the network;
    ``advance_clock`` moves the server's clock (lease expiry without waiting).
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **setting_overrides: Any,
    ) -> None:
        self.settings = replace(settings or EmulatorSettings(), **setting_overrides)
        self.host = host
        self.port = port
        self.faults = FaultPlan(self.settings.deadlock_rate, self.settings.seed)
        concurrency = self.settings.concurrency
        self._serving = threading.BoundedSemaphore(concurrency) if concurrency else None
        self._clock_offset = 0.0
        self.store = EmulatorStore(
            self.settings.db_path,
            claim_timeout=self.settings.claim_timeout,
            max_attempts=self.settings.max_attempts,
            clock=self.clock,
        )
        self.app = EmulatorApp(self.settings, self.store, self.clock)
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """One request's cost: a place among ``concurrency``, then ``service_seconds``."""
        if self._serving is None:
            if self.settings.service_seconds:
                time.sleep(self.settings.service_seconds)
            yield
            return
        with self._serving:
            if self.settings.service_seconds:
                time.sleep(self.settings.service_seconds)
            yield

    # -- lifecycle -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def api_key(self) -> str:
        return self.settings.api_key

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def start(self) -> EmulatorServer:
        if self._listener is not None:
            return self
        listener = _Listener((self.host, self.port), _Handler)
        listener.emulator = self
        self.port = listener.server_address[1]
        self._listener = listener
        self._thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"taskmanager-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def go_down(self) -> None:
        """Refuse new connections and cut open ones; state is kept."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown()
            listener.server_close()
        self.faults.release_hangs()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.start()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.go_down()
        try:
            yield
        finally:
            self.come_back()

    def stop(self) -> None:
        self.go_down()
        self.store.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clock ---------------------------------------------------------------------
    def clock(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the server's clock forward (for lease expiry without sleeping)."""
        self._clock_offset += seconds

    # -- observation -----------------------------------------------------------------
    def track_connection(self, connection: socket.socket, *, add: bool) -> None:
        """The HTTP handler's: a connection opened (``add``) or closed (``outage`` cuts
        the open ones)."""
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def record_request(self, method: str, path: str, status: int | str, at: float) -> None:
        """The HTTP handler's: one request and what became of it (``requests``)."""
        with self._lock:
            self._records.append(RequestRecord(method, path, status, at, time.monotonic()))

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request seen since start (or ``reset_requests``), in order."""
        with self._lock:
            return list(self._records)

    def reset_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def request_counts(self) -> Counter[str]:
        """Requests per endpoint, ids folded: ``{"POST /tasks/{id}/complete": 3, ...}``."""
        counts: Counter[str] = Counter()
        for record in self.requests:
            counts[f"{record.method} {path_template(record.path)}"] += 1
        return counts

    def client(self, **config: Any) -> Any:
        """A ``TaskManagerClient`` for this server (fast retries unless overridden)."""
        from .. import TaskManagerClient

        return TaskManagerClient(self.client_config(**config))

    def async_client(self, **config: Any) -> Any:
        """An ``AsyncTaskManagerClient`` for this server (needs the ``async`` extra)."""
        from ..async_client import AsyncTaskManagerClient

        return AsyncTaskManagerClient(self.client_config(**config))

    def client_config(self, **config: Any) -> Any:
        """A ``TaskManagerConfig`` for this server: fast retries unless overridden."""
        from .. import TaskManagerConfig

        values = {
            "api_url": self.url,
            "api_key": self.api_key,
            "backoff_base": 0.05,
            "retry_deadline": 10.0,
            **config,
        }
        return TaskManagerConfig(**values)
