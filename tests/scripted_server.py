"""A loopback HTTP server that answers from a script: exact server shapes over real HTTP.

``responses`` reaches only ``requests``; this reaches any client. Each
(method, path) has a queue of ``Scripted`` answers (the last one repeats);
every request is recorded with its headers, query and body.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Scripted:
    """One answer. ``hang`` waits that long before answering; ``truncate`` promises
    more bytes than it sends and closes the connection; ``drop_after`` answers in full
    as a keep-alive answer, then closes the connection (as a server whose keep-alive
    timeout passed); ``interim`` sends an interim answer of that status (102, 103) first,
    then waits ``hang`` before the answer; ``prelude``: bytes sent first, each part 50 ms
    after the last (an interim head in pieces, a bad status line), ``hang`` after them;
    ``trickle`` sends the head at once, then the body a byte every that many seconds;
    ``split_status`` sends the answer's status line in two parts that many seconds apart."""

    status: int = 200
    body: Any = None  # JSON-encoded unless it is str or bytes
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    truncate: bool = False
    drop_after: bool = False
    interim: int = 0
    prelude: tuple[bytes, ...] = ()
    trickle: float = 0.0
    split_status: float = 0.0

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class ScriptedServer:
    """``tls``: serve HTTPS with this context (the url then says ``https``)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: dict[tuple[str, str], list[Scripted]] = defaultdict(list)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                owner._record(
                    Received(
                        self.command,
                        parts.path,
                        dict(parse_qsl(parts.query)),
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw) if raw else None,
                    )
                )
                answer = owner._next(self.command, parts.path)
                self.close_connection = _write(self, answer, owner._stop)

            do_GET = do_POST = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/api"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def add(self, method: str, path: str, *answers: Scripted) -> None:
        with self._lock:
            self.script[(method, "/api" + path)].extend(answers)

    def _next(self, method: str, path: str) -> Scripted:
        with self._lock:
            queue = self.script.get((method, path))
            if not queue:
                return Scripted(404, {"success": False, "error": f"unscripted {method} {path}"})
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.received
                if (method is None or r.method == method)
                and (path is None or r.path == "/api" + path)
            ]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write(handler: BaseHTTPRequestHandler, answer: Scripted, stop: threading.Event) -> bool:
    """Send ``answer`` as ``handler``'s reply; whether the connection closes after it."""
    if not _before(handler, answer, stop):
        return True
    payload = answer.payload()
    if answer.split_status:
        line = f"{handler.protocol_version} {answer.status} Answer\r\n".encode()
        handler.wfile.write(line[:10])  # "HTTP/1.1 2": not yet a status line
        handler.wfile.flush()
        if stop.wait(answer.split_status):
            return True
        handler.wfile.write(line[10:])
    else:
        handler.send_response(answer.status)
    for name, value in answer.headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    if answer.truncate:
        handler.send_header("Content-Length", str(len(payload) + 100))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(payload)
        return True
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    if answer.trickle:
        handler.wfile.flush()
        for at in range(len(payload)):
            if stop.wait(answer.trickle):
                return True
            handler.wfile.write(payload[at : at + 1])
            handler.wfile.flush()
        return False
    handler.wfile.write(payload)
    return answer.drop_after


def _before(handler: BaseHTTPRequestHandler, answer: Scripted, stop: threading.Event) -> bool:
    """What goes before the answer (interim heads, a prelude, a hang); False once the
    server is stopping."""
    if answer.interim:
        handler.wfile.write(
            f"HTTP/1.1 {answer.interim} Early Hints\r\n"
            "Link: </style.css>; rel=preload\r\n\r\n".encode()
        )
        handler.wfile.flush()
    for at, part in enumerate(answer.prelude):
        if at and stop.wait(0.05):
            return False
        handler.wfile.write(part)
        handler.wfile.flush()
    if answer.hang:
        stop.wait(answer.hang)
    return True
