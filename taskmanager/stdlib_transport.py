"""The blocking client's requests carried by the standard library's ``http.client``.

``TaskManagerClient(config, http="stdlib")``: the same methods, answers and errors as
on requests, in the calling thread, with no hop to another thread and none of the
layers requests and urllib3 put around each request. Why: the bridge's daemon sends
two requests a task from its own threads, on a machine whose cores it shares with the
workers, and what its requests do not spend, the workers get. Measured with four
threads draining the emulator (``tests/bench/cpu_floor.py``): bare ``http.client``
0.55 ms of CPU per claim+complete pair against bare aiohttp's 0.75 and requests'
1.88 (docs/BENCHMARKS.md).

What requests did for us, done here: keep-alive connections in a pool (one per
thread in flight; an idle one the server closed is noticed before it is used), TLS
with the CA bundle requests would read, separate connect and read timeouts, Basic
auth from a login in ``api_url``, a gzip answer decoded. Not done: proxies. When
the environment names a proxy for ``api_url``, this transport refuses to start and
says so (``http = "auto"`` then chooses another library).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import re
import select
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import idna
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri

from .config import TaskManagerConfig
from .connection_settings import env_proxy, ssl_setting, warn_if_unverified
from .exceptions import TaskManagerConfigError, TaskManagerConnectionError
from .exchange import Send
from .no_answer import FailureKind, no_answer
from .protocol import Answer, Outcome, decode_body
from .redact import mask_url
from .transport import BlockingTransport

POOL_SIZE = 32  # idle connections kept, as the requests transport keeps
MAX_LINE = 65536  # a status or header line longer than this is refused, as http.client does
MAX_HEADERS = 100
# What http.client refuses in a request, refused here with the same exception types.
_NOT_IN_METHOD = re.compile("[\x00-\x1f]")
_NOT_IN_TARGET = re.compile("[\x00-\x20\x7f]")
_HEADER_NAME = re.compile(rb"[^:\s][^:\r\n]*")
_NOT_IN_HEADER_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])")
_BODY_METHODS = frozenset({"PATCH", "POST", "PUT"})  # Content-Length: 0 when bodiless


class Response(http.client.HTTPResponse):
    """``http.client``'s response with its head read without the ``email`` package.

    ``http.client`` parses every answer's headers with ``email.parser``: measured
    at a third of the daemon's CPU on its claim path (py-spy, ``daemon_paths.py``),
    34 us an answer against 4 us for the lines split here; the names go in a plain
    dict, lower-cased (``headers``). The rest is the standard library's own logic:
    chunked or sized body, whether the connection stays open; but every interim 1xx
    answer is skipped, where the standard library skips only 100.
    """

    fields: list[tuple[str, str]]
    named: dict[str, str]

    def begin(self) -> None:
        if self.headers is not None:
            return  # already read
        while True:
            version, status, reason = self._read_status()
            # Every interim answer is skipped, not only 100 Continue: a 102 Processing or
            # a 103 Early Hints (a CDN in front of the server) taken for the answer would
            # leave the real one on the connection, to be read as the next request's.
            if not 100 <= status < 200 or status == http.client.SWITCHING_PROTOCOLS:
                break
            self._read_fields()  # the interim answer's headers, skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.fields = self._read_fields()
        named: dict[str, str] = {}  # lower-case names, the first of each as email's reads
        for name, value in self.fields:
            named.setdefault(name.lower(), value)
        self.named = named
        self.headers = self.msg = named  # what the standard library's own methods read
        encoding = named.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"
        self.chunk_left = None
        # A 101 (we never ask to switch) leaves the connection speaking something else.
        self.will_close = status == http.client.SWITCHING_PROTOCOLS or self._check_close()
        self.length = self._body_length(status)
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # read until the server closes

    def _body_length(self, status: int) -> int | None:
        """Content-Length (ignored when chunked, nonsense, or the status has no body)."""
        no_body = status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
        if no_body or 100 <= status < 200 or getattr(self, "_method", None) == "HEAD":
            return 0
        given = self.named.get("content-length")
        if not given or self.chunked:
            return None
        try:
            length = int(given)
        except ValueError:
            return None
        return length if length >= 0 else None

    def _read_fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self.fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return fields
            if len(fields) >= MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            name, _, value = line.decode("iso-8859-1").partition(":")
            fields.append((name.strip(), value.strip()))

    def getheader(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self.named.get(name.lower(), default)

    def charset(self) -> str | None:
        """The charset the Content-Type names, if any."""
        for name, value in self.fields:
            if name.lower() == "content-type":
                for parameter in value.split(";")[1:]:
                    key, _, given = parameter.partition("=")
                    if key.strip().lower() == "charset":
                        return given.strip().strip('"') or None
        return None


class Connection(http.client.HTTPConnection):
    response_class = Response


class TLSConnection(http.client.HTTPSConnection):
    response_class = Response


def _ascii_host(host: str, api_url: str) -> str:
    """The host as the Host header and the connection need it: an international name in
    IDNA 2008 with UTS 46 mapping, as requests and aiohttp send it (Python's own "idna"
    codec is IDNA 2003, which maps some names to another host)."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        where = mask_url(api_url)
        raise TaskManagerConfigError(
            f"api_url {where!r}: the host name is not valid: {exc}"
        ) from None


class Origin:
    """Where every request of one client goes: scheme, host and port of ``api_url``, its
    login as a Basic auth header, and how to open a connection there."""

    def __init__(self, config: TaskManagerConfig) -> None:
        parts = urlsplit(config.api_url)  # an http(s) URL with a host: the config checked it
        assert parts.hostname is not None
        self.base = config.api_url
        self.path = requote_uri(parts.path)  # a raw non-ASCII path goes %-encoded, as requests
        self.https = parts.scheme == "https"
        self.host = _ascii_host(parts.hostname, config.api_url)
        self.port = parts.port or (443 if self.https else 80)
        self.auth: str | None = None
        if parts.username is not None:
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(login.encode("latin-1")).decode("ascii")
        self.connect_timeout, self.read_timeout = config.timeouts
        context = ssl_setting(config) if self.https else None
        if context is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.tls: ssl.SSLContext | None = context if isinstance(context, ssl.SSLContext) else None
        # An IPv6 address in brackets, without its zone (``%eth0``), as http.client writes it.
        host = f"[{self.host.partition('%')[0]}]" if ":" in self.host else self.host
        if self.port != (443 if self.https else 80):
            host = f"{host}:{self.port}"
        self._host_lines = f"Host: {host}\r\nAccept-Encoding: identity\r\n".encode("ascii")
        self._header_lines: dict[tuple[tuple[str, str], ...], bytes] = {}

    def head(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        """The request's head, byte for byte what ``http.client``'s ``request`` writes
        (Host, Accept-Encoding, Content-Length, then ``headers`` and the login), and
        refused as it refuses: a target with a space or a control character
        (``InvalidURL``), one that is not ASCII, a header that would split a line
        (``ValueError``). Why not ``request``: it checks and encodes each line in a
        call of its own, 23 us a request against 3 here, twice a task on the daemon's
        paths; the lines of one set of headers are checked and encoded once."""
        bad_method = _NOT_IN_METHOD.search(method)
        if bad_method:
            raise ValueError(
                f"method can't contain control characters. {method!r} "
                f"(found at least {bad_method.group()!r})"
            )
        found = _NOT_IN_TARGET.search(target)
        if found:
            raise http.client.InvalidURL(
                f"URL can't contain control characters. {target!r} "
                f"(found at least {found.group()!r})"
            )
        bodiless = 0 if method.upper() in _BODY_METHODS else None
        length = len(body) if body is not None else bodiless
        sized = b"" if length is None else b"Content-Length: %d\r\n" % length
        key = tuple(headers.items())
        lines = self._header_lines.get(key)
        if lines is None:
            lines = self._encode_lines(key)
        request_line = f"{method} {target} HTTP/1.1\r\n".encode("ascii")
        return b"".join((request_line, self._host_lines, sized, lines, b"\r\n"))

    def _encode_lines(self, key: tuple[tuple[str, str], ...]) -> bytes:
        pairs = [*key, ("Authorization", self.auth)] if self.auth is not None else list(key)
        encoded = []
        for name, value in pairs:
            raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
            if not _HEADER_NAME.fullmatch(raw_name):
                raise ValueError(f"invalid header name {name!r}")
            if _NOT_IN_HEADER_VALUE.search(raw_value):
                raise ValueError(f"the value of header {name!r} would split its line")
            encoded.append(raw_name + b": " + raw_value + b"\r\n")
        lines = b"".join(encoded)
        if len(self._header_lines) < 16:  # a client sends a handful of header sets
            self._header_lines[key] = lines
        return lines

    def target(self, send: Send) -> str:
        """The request line's target: the path exactly as built (a type name goes raw
        wherever a path allows: the server matches names without decoding), then the
        query."""
        if not send.url.startswith(self.base):
            raise ValueError(f"{mask_url(send.url)} is not under api_url")
        target = self.path + send.url[len(self.base) :]
        if send.query:
            target += ("&" if "?" in target else "?") + urlencode(
                {key: str(value) for key, value in send.query.items()}
            )
        return target

    def new_connection(self) -> http.client.HTTPConnection:
        """A connection not yet connected (``connect`` opens it)."""
        if self.https:
            return TLSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self.tls
            )
        return Connection(self.host, self.port, timeout=self.connect_timeout)

    def connect(self, connection: http.client.HTTPConnection) -> None:
        """Open it (the handshake within the connect timeout); then reads wait no longer
        than the read timeout."""
        connection.connect()
        sock = connection.sock
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)


class ConnectionPool:
    """Keep-alive connections to one origin, each used by one thread at a time."""

    def __init__(self, origin: Origin, size: int = POOL_SIZE) -> None:
        self.origin = origin
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self.closed = False

    def take(self, *, open_new: bool = True) -> http.client.HTTPConnection | None:
        """An idle connection the server has not closed, else a new one (``None`` with
        ``open_new=False``). It counts as in use from here (``close`` ends it even while
        it connects), and once the pool is closed none is handed out, so nothing is
        sent after ``close``."""
        while True:
            with self._lock:
                if self.closed:
                    raise TaskManagerConnectionError("the client is closed")
                connection = self._idle.pop() if self._idle else None
                fresh = connection is None
                if connection is None:
                    if not open_new:
                        return None
                    connection = self.origin.new_connection()
                self._busy.add(connection)
            try:
                if fresh:
                    self.origin.connect(connection)
                elif _dropped(connection):
                    self.give_back(connection, reusable=False)
                    continue
            except BaseException:
                self.give_back(connection, reusable=False)
                raise
            with self._lock:
                if not self.closed:
                    return connection
            self.give_back(connection, reusable=False)  # closed while it connected

    def give_back(self, connection: http.client.HTTPConnection, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(connection)
            if reusable and not self.closed and len(self._idle) < self.size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections, and end the ones in use: a caller waiting on a
        hung server gets its error now, not after the read timeout."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for connection in idle:
            connection.close()
        for connection in busy:
            sock = connection.sock  # once: its thread may set it to None meanwhile
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by its thread
                    # The plain socket's shutdown, even under TLS: SSLSocket.shutdown drops
                    # its TLS state first, and a send racing it would go out in clear.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Did the server close (or write to) an idle connection? A keep-alive connection
    past the server's idle timeout reads as closed; sending on it would fail after the
    request left, and the request would count as unanswered."""
    sock = connection.sock
    if sock is None:
        return True
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class StdlibTransport(BlockingTransport):
    """Carries out a ``Requester``'s steps through ``http.client`` connections."""

    def __init__(
        self, config: TaskManagerConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        proxy = env_proxy(config.api_url)
        if proxy is not None:
            raise TaskManagerConfigError(
                f'http="stdlib" does not go through proxies, and the environment names one '
                f'for {mask_url(config.api_url)}: use http="requests" or "aiohttp"'
            )
        self.config = config
        self.sleep = sleep
        self.pool = ConnectionPool(Origin(config))
        warn_if_unverified(config)

    def close(self) -> None:
        """Close the connections; later calls are refused, like the other transports'."""
        self._closed = True
        self.pool.close()

    def _send(self, send: Send) -> Answer | Outcome:
        """One HTTP exchange: the answer, or the ``Outcome`` of getting none."""
        started = self.start(send)
        assert started is not None  # opens a connection when none is idle
        if isinstance(started, Outcome):
            return started
        return self.finish(send, started)

    def start(
        self,
        send: Send,
        *,
        open_new: bool = True,
        opened: http.client.HTTPConnection | BaseException | None = None,
    ) -> http.client.HTTPConnection | Outcome | None:
        """The request sent on a connection of the pool (its answer for ``finish`` to
        read), or the ``Outcome`` of not getting it out. Apart from ``finish`` so that
        one thread can have several requests in flight (``taskmanager.in_flight``),
        which opens new connections aside: ``open_new=False`` returns ``None`` (nothing
        sent) when no idle connection is there, and ``opened`` is what ``pool.take``
        then gave on another thread (a connection, or what it raised)."""
        origin = self.pool.origin
        try:
            target = origin.target(send)
            head = origin.head(send.method, target, send.headers, send.body)
        except BaseException as exc:
            if isinstance(opened, http.client.HTTPConnection):  # nothing sent on it
                self.pool.give_back(opened, reusable=True)
            if isinstance(exc, ValueError):  # InvalidURL, a header that cannot be written
                return no_answer("request", exc, send.method, send.url)
            raise
        try:
            if isinstance(opened, BaseException):
                raise opened
            connection = opened or self.pool.take(open_new=open_new)
        except (OSError, http.client.HTTPException, TaskManagerConnectionError) as exc:
            return no_answer(self._failure(exc), exc, send.method, send.url)
        if connection is None:
            return None
        try:
            _write(connection, head, send.body)
        except (OSError, http.client.HTTPException) as exc:
            self.pool.give_back(connection, reusable=False)
            return no_answer(self._failure(exc), exc, send.method, send.url)
        except BaseException:
            self.pool.give_back(connection, reusable=False)
            raise
        return connection

    def finish(
        self,
        send: Send,
        connection: http.client.HTTPConnection,
        first: bytes = b"",
        deadline: float | None = None,
    ) -> Answer | Outcome:
        """Read the answer to the request ``start`` sent on ``connection`` (``first``:
        its first bytes, already read), which goes back to the pool (kept when the
        answer leaves it open). The whole answer must be in by ``deadline``
        (``time.monotonic``; by default the read timeout from now, which is when the
        request left on a thread of its own)."""
        read_timeout = self.pool.origin.read_timeout
        if deadline is None:
            deadline = time.monotonic() + read_timeout
        reusable = False
        try:
            response = _read_answer(connection, send.method, first, deadline)
            raw = response.read()
            reusable = not response.will_close
            if reusable and connection.sock is not None:
                connection.sock.settimeout(read_timeout)  # the answer's reads shortened it
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return no_answer(self._failure(exc), exc, send.method, send.url)
        finally:
            self.pool.give_back(connection, reusable)
        text = _decoded(raw, response)
        return Answer(
            response.status, decode_body(text), text, CaseInsensitiveDict(response.fields)
        )

    def fail(
        self, send: Send, connection: http.client.HTTPConnection, exc: BaseException
    ) -> Outcome:
        """Give up on the answer to a request ``start`` sent (none in time, or an error
        before it was read): the connection is closed, since what is left on it would
        be read as the next request's answer."""
        self.pool.give_back(connection, reusable=False)
        return no_answer(self._failure(exc), exc, send.method, send.url)

    def _failure(self, exc: BaseException) -> FailureKind:
        return "closed" if self._closed else _failure_kind(exc)


def _write(connection: http.client.HTTPConnection, head: bytes, body: bytes | None) -> None:
    """Send the request, head and body in one write (``http.client`` sends the bytes
    the same way). A server may answer (413, 401) and close before it read the whole
    body: the send then fails, but the answer is there to read, and it is read (as
    urllib3 does), not taken for a lost connection."""
    sock = connection.sock
    if sock is None:
        raise http.client.NotConnected()
    data = head + body if body else head
    sys.audit("http.client.send", connection, data)  # as http.client's own send
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def _read_answer(
    connection: http.client.HTTPConnection, method: str, first: bytes, deadline: float
) -> Response:
    """The answer's head (the body is the caller's to read), after ``first``, its
    bytes already read. The caller closes a connection the answer does not leave open."""
    sock = connection.sock
    if sock is None:
        raise http.client.NotConnected()
    response = Response(_AnswerBytes(sock, first, deadline), method=method)  # type: ignore[arg-type]
    try:
        response.begin()
    except BaseException:
        response.close()
        raise
    return response


# After an answer's deadline, what has already come is still read (the thread may have
# been busy past it): each read then waits this long at most, and the reads end this
# long after the deadline, or after they began, whichever is later (a server sending
# without pause would otherwise never meet a timeout).
_PAST_DEADLINE_WAIT = 0.001
_PAST_DEADLINE_GRACE = 0.05


class _AnswerBytes(io.RawIOBase):
    """An answer's bytes, as ``Response`` reads them (through ``makefile``): ``first``
    (already read), then the socket's, no read waiting past ``deadline``. The socket's
    timeout alone bounds each read, not the answer: a server that sends a byte now and
    then, within it each time, would hold the caller (and, in ``in_flight``, every
    other request) for as long as it likes."""

    def __init__(self, sock: socket.socket, first: bytes, deadline: float) -> None:
        self._sock = sock
        self._first = memoryview(first)
        self._deadline = deadline
        self._cutoff = max(deadline, time.monotonic()) + _PAST_DEADLINE_GRACE

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._first:
            count = min(len(buffer), len(self._first))
            buffer[:count] = self._first[:count]
            self._first = self._first[count:] if count < len(self._first) else memoryview(b"")
            return count
        now = time.monotonic()
        if now >= self._cutoff:
            raise TimeoutError("the answer did not come whole within the read timeout")
        self._sock.settimeout(max(self._deadline - now, _PAST_DEADLINE_WAIT))
        return self._sock.recv_into(buffer)  # socket.timeout: a timeout, as on any read


def _decoded(raw: bytes, response: Response) -> str:
    """The body as text: gzip or deflate undone (a proxy may compress though we did not
    ask), in the charset the answer names, else UTF-8; bytes that do not decode become
    U+FFFD instead of an error, as with the other transports. Never raises: an answer
    came, and its status is judged whatever its body holds."""
    encoding = (response.getheader("content-encoding") or "").strip().lower()
    if raw and encoding in ("gzip", "x-gzip", "deflate"):
        raw = _inflated(raw)
    try:
        return raw.decode(response.charset() or "utf-8", errors="replace")
    except (LookupError, ValueError):  # a charset Python does not know, or cannot use
        return raw.decode("utf-8", errors="replace")


def _inflated(raw: bytes) -> bytes:
    """gzip (any number of members) or zlib, else raw deflate; what inflates neither way
    is kept as it came."""
    for wbits in (zlib.MAX_WBITS | 32, -zlib.MAX_WBITS):
        try:
            parts, rest = [], raw
            while rest:
                inflater = zlib.decompressobj(wbits)
                parts.append(inflater.decompress(rest) + inflater.flush())
                rest = inflater.unused_data
            return b"".join(parts)
        except zlib.error:
            continue
    return raw


def _failure_kind(exc: BaseException) -> FailureKind:
    """Which kind of failure an ``http.client`` or socket error is (see ``no_answer``)."""
    if isinstance(exc, http.client.InvalidURL):
        return "request"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return "tls"
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return "connection"
    return "request"
