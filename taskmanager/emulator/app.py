"""The API as the deployed server answers it: security layer, routes, envelopes.

``EmulatorApp.handle`` is a pure function of one request (plus the store's
state and the clock), so the HTTP server around it stays a thin adapter.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .store import ApiError, EmulatorStore

API_PREFIX = "/api"
UNAUTHORIZED_MESSAGE = "Invalid or missing API key. Include X-API-Key header with your request."
BROKEN_LIST_TYPES = "Invalid select field: COALESCE(t.usage_count, 0) as usage_count"
NO_PUBLIC_KEY_PATHS = ("/health",)


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulated deployment is set up.

    ``quirks=False`` answers as the code intends (404 for an empty claim, a
    working ``GET /task-types``), to test clients against a fixed server.
    ``rate_limit`` is requests per client IP and path per ``rate_window``
    seconds (``None``: off, as on a deployment without it).
    """

    api_key: str = "dev"
    claim_timeout: float = 300.0
    max_attempts: int = 3
    rate_limit: int | None = None
    rate_window: float = 60.0
    max_body_bytes: int = 1_048_576
    quirks: bool = True
    db_path: str = ":memory:"
    # What a request costs, so that benchmarks on the emulator predict the real server
    # (0 and None: as fast as it can, for tests). REALISTIC_COSTS below are measured.
    service_seconds: float = 0.0  # time each request spends being served
    concurrency: int | None = None  # requests served at once (PHP's built-in server: 4)
    # The network between client and server: each request and each answer travel this
    # long (half a round trip), holding no place among ``concurrency``, as a network does.
    network_seconds: float = 0.0
    deadlock_rate: float = 0.0  # share of POST /tasks/* rolled back with a deadlock 500
    seed: int = 0  # for the deadlock draws


# The reference server (loopback, 4 PHP workers, MariaDB; docs/SERVER_BEHAVIOUR.md): ~2.7 ms a
# request alone, 4-5 ms each with 4 clients at once; about 1 deadlock in 300 completions.
REALISTIC_COSTS: dict[str, float | int] = {
    "service_seconds": 0.003,
    "concurrency": 4,
    "deadlock_rate": 0.003,
}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class _RateLimiter:
    """Fixed windows per (client IP, path), as the server's security layer counts."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    def hit(self, key: tuple[str, str], now: float) -> tuple[bool, dict[str, str], int]:
        """(allowed, X-RateLimit headers, seconds until the window resets)."""
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now >= start + self.window:
                start, count = now, 0
            count += 1
            self._windows[key] = (start, count)
        reset = start + self.window
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - count)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        return count <= self.limit, headers, max(1, math.ceil(reset - now))


# PHP's json_decode refuses (returns null for) anything nested deeper than its default
# depth of 512: the server answers such a body as invalid JSON. PHP's documented
# default, assumed here: not measured on the deployment.
PHP_JSON_DEPTH = 512


def _depth(value: Any) -> int:
    """Nesting depth as PHP counts it: a scalar 0, ``{}``/``[]`` 1, ``{"a": []}`` 2."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def api_path(raw_path: str) -> str | None:
    """The path relative to the API base, trailing slash dropped (the server ignores it);
    ``None`` outside the base (``/api``), which the API never sees (``WEB_SERVER_404``)."""
    path = urlsplit(raw_path).path
    if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
        return None
    return path[len(API_PREFIX) :].rstrip("/") or "/"


# What the web server in front of the deployed API answers for a path outside /api (an
# api_url without its /api): its own HTML page, not the API's JSON. Clients must see the
# same here, or that mistake passes every test run against the emulator.
WEB_SERVER_404 = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>\n"
    b"<h1>Not Found</h1>\n<p>The requested URL was not found on this server.</p>\n"
    b"</body></html>\n"
)


@dataclass(frozen=True)
class _Call:
    """One routed request, from which each route takes only what its handler needs."""

    match: re.Match[str]
    raw_path: str
    body: bytes

    @property
    def task_id(self) -> int:
        return int(self.match["id"])

    @property
    def query(self) -> dict[str, str]:
        """The query string, first value of each name (as PHP's ``$_GET`` keeps one)."""
        return {k: v[0] for k, v in parse_qs(urlsplit(self.raw_path).query).items()}

    def json(self) -> dict[str, Any]:
        return _json_body(self.body)


@dataclass(frozen=True)
class Route:
    """A method and path pattern, and the handler that answers them."""

    method: str
    pattern: re.Pattern[str]
    answer: Callable[[_Call], Response]


def _json_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object, or the server's 400 for anything else."""
    if not body.strip():
        return {}
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "Invalid JSON in request body") from None
    if not isinstance(decoded, dict):
        raise ApiError(400, "Invalid JSON in request body")
    # Brackets counted first: the walk only runs on bodies that could be too deep.
    could_be_deep = body.count(b"{") + body.count(b"[") > PHP_JSON_DEPTH
    if could_be_deep and _depth(decoded) > PHP_JSON_DEPTH:
        raise ApiError(400, "Invalid JSON in request body")
    return decoded


class EmulatorApp:
    """Answers one request the way the deployed PHP server does."""

    def __init__(
        self, settings: EmulatorSettings, store: EmulatorStore, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._limiter = (
            _RateLimiter(settings.rate_limit, settings.rate_window) if settings.rate_limit else None
        )
        self.routes = self._route_table()

    def _route_table(self) -> tuple[Route, ...]:
        """Every endpoint, first match wins; each entry hands its handler only what it uses."""

        def route(method: str, pattern: str, answer: Callable[[_Call], Response]) -> Route:
            return Route(method, re.compile(pattern), answer)

        return (
            route("GET", r"/health", lambda call: self._health()),
            route("POST", r"/task-types/register", lambda call: self._register_type(call.json())),
            route("GET", r"/task-types", lambda call: self._list_types(call.query)),
            # The name as it stands in the path, NOT percent-decoded: the server compares
            # the raw segment, so an encoded name finds nothing (200, empty items).
            route(
                "GET",
                r"/task-types/(?P<name>[^/]+)",
                lambda call: self._get_type(call.match["name"]),
            ),
            route("POST", r"/tasks", lambda call: self._create_task(call.json())),
            route("GET", r"/tasks", lambda call: self._list_tasks(call.query)),
            route("POST", r"/tasks/claim", lambda call: self._claim(call.json())),
            route("GET", r"/tasks/(?P<id>\d+)", lambda call: self._get_task(call.task_id)),
            route(
                "POST",
                r"/tasks/(?P<id>\d+)/progress",
                lambda call: self._progress(call.task_id, call.json()),
            ),
            route(
                "POST",
                r"/tasks/(?P<id>\d+)/complete",
                lambda call: self._complete(call.task_id, call.json()),
            ),
        )

    # -- envelopes -----------------------------------------------------------------
    def ok(self, data: Any, headers: dict[str, str] | None = None) -> Response:
        body = {"success": True, "message": "Success", "data": data, "timestamp": int(self.clock())}
        return Response(200, _json_bytes(body), headers or {})

    def error(
        self,
        status: int,
        message: str,
        details: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body: dict[str, Any] = {"success": False, "error": message}
        if details:
            body["details"] = details
        body["timestamp"] = int(self.clock())
        return Response(status, _json_bytes(body), headers or {})

    def security_error(self, status: int, title: str, message: str, **extra: Any) -> Response:
        """The security layer's shape: no ``success`` field, ISO timestamp."""
        body = {"error": title, "message": message, **extra, "timestamp": _iso(self.clock())}
        return Response(status, _json_bytes(body))

    # -- dispatch --------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes, client_ip: str
    ) -> Response:
        """One request; ``headers`` keys are lower case."""
        path = api_path(raw_path)
        if path is None:
            return Response(404, WEB_SERVER_404, {"Content-Type": "text/html; charset=iso-8859-1"})
        limit_headers: dict[str, str] = {}
        if self._limiter is not None:
            allowed, limit_headers, wait = self._limiter.hit((client_ip, path), self.clock())
            if not allowed:
                response = self.security_error(
                    429,
                    "Too Many Requests",
                    f"Rate limit exceeded. Please try again in {wait} seconds.",
                    retry_after=wait,
                    limit=self.settings.rate_limit,
                    window=int(self.settings.rate_window),
                )
                response.headers.update(limit_headers, **{"Retry-After": str(wait)})
                return response
        response = self._admitted(method, path, raw_path, headers, body)
        response.headers.update(limit_headers)  # every answer carries them, as the server's
        return response

    def _admitted(
        self, method: str, path: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """The answer to a request the rate limit let through: the security layer's
        size and key checks, then the route."""
        if len(body) > self.settings.max_body_bytes:
            return self.security_error(
                413,
                "Request Too Large",
                f"Request body exceeds maximum size of {self.settings.max_body_bytes} bytes",
            )
        if path not in NO_PUBLIC_KEY_PATHS:
            given = headers.get("x-api-key") or ""
            if not hmac.compare_digest(given.encode(), self.settings.api_key.encode()):
                return self.security_error(401, "Unauthorized", UNAUTHORIZED_MESSAGE)
        return self._route(method.upper(), path, raw_path, body)

    def _route(self, method: str, path: str, raw_path: str, body: bytes) -> Response:
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match and route.method == method:
                try:
                    return route.answer(_Call(match, raw_path, body))
                except ApiError as exc:
                    return self.error(exc.status, exc.error, exc.details)
        return self.error(404, "Endpoint not found")

    # -- routes ------------------------------------------------------------------------
    def _health(self) -> Response:
        return self.ok(
            {"status": "healthy", "timestamp": int(self.clock()), "database": "connected"}
        )

    def _register_type(self, body: dict[str, Any]) -> Response:
        return self.ok(self.store.register_type(body))

    def _list_types(self, query: Mapping[str, str]) -> Response:
        if self.settings.quirks:
            return self.error(500, BROKEN_LIST_TYPES)
        active_only = query.get("active_only", "false").lower() in ("1", "true")
        return self.ok(self.store.list_types(active_only))

    def _get_type(self, name: str) -> Response:
        return self.ok(self.store.get_type(name))

    def _create_task(self, body: dict[str, Any]) -> Response:
        return self.ok(self.store.create_task(body))

    def _list_tasks(self, query: Mapping[str, str]) -> Response:
        try:
            limit = int(query.get("limit", 50))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise ApiError(400, "limit and offset must be integers") from None
        return self.ok(
            self.store.list_tasks(
                query.get("status"), query.get("type"), max(1, limit), max(0, offset)
            )
        )

    def _claim(self, body: dict[str, Any]) -> Response:
        claimed = self.store.claim(body)
        if claimed is not None:
            return self.ok(claimed)
        if self.settings.quirks:  # the deployed server's double rollback
            return self.error(500, "There is no active transaction")
        return self.error(404, "No available tasks")

    def _get_task(self, task_id: int) -> Response:
        return self.ok(self.store.get_task(task_id))

    def _progress(self, task_id: int, body: dict[str, Any]) -> Response:
        return self.ok(self.store.progress(task_id, body))

    def _complete(self, task_id: int, body: dict[str, Any]) -> Response:
        return self.ok(self.store.complete(task_id, body))
