"""The http.client transport's own decisions: where a request goes, what it shows.

Its behaviour on the wire (every server quirk, TLS, closing, idle connections) is in
``tests/integration/test_client_parity.py``, with every other client.
"""

from __future__ import annotations

import http.client
from typing import Any

import pytest
import requests

from taskmanager import TaskManagerConfig, TaskManagerConfigError
from taskmanager.exchange import Send
from taskmanager.stdlib_transport import Origin

pytestmark = pytest.mark.unit


def origin(api_url: str) -> Origin:
    return Origin(TaskManagerConfig(api_url=api_url, api_key="k"))


@pytest.mark.parametrize("host", ["faß.example", "bücher.example", "例え.テスト"])
def test_an_international_host_goes_where_requests_sends_it(host: str):
    """IDNA 2008 as requests and aiohttp write it: Python's own codec (IDNA 2003) maps
    ``faß`` to ``fass``, another host, which would receive the API key."""
    sent_by_requests = requests.Request("GET", f"https://{host}/api").prepare().url
    assert sent_by_requests is not None
    assert f"https://{origin(f'https://{host}/api').host}/api" == sent_by_requests


def test_a_host_name_that_cannot_be_written_is_a_config_error():
    with pytest.raises(TaskManagerConfigError, match="host name is not valid"):
        origin(f"https://{'ä' * 64}.example/api")


def test_the_path_of_api_url_goes_percent_encoded_and_the_rest_as_built():
    """A raw non-ASCII path is encoded as requests encodes it; what the client appended
    (a type name raw where a path allows) is sent exactly as built."""
    where = origin("https://tm.example/äpi")
    send = Send("GET", "https://tm.example/äpi/task-types/a:b+c", None, {"n": 2}, {})
    assert where.target(send) == "/%C3%A4pi/task-types/a:b+c?n=2"


def test_a_request_shows_no_key_in_its_repr():
    send = Send("POST", "https://tm.example/api/tasks", b"{}", None, {"X-API-Key": "s3cret"})
    assert "s3cret" not in repr(send) and "s3cret" not in str(send)


class _Recorder:
    """A socket that keeps what ``http.client`` writes to it."""

    def __init__(self) -> None:
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data


def written_by_http_client(
    api_url: str, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    where = origin(api_url)
    connection: Any = (http.client.HTTPSConnection if where.https else http.client.HTTPConnection)(
        where.host, where.port
    )
    connection.sock = _Recorder()
    if where.auth is not None:
        headers = {**headers, "Authorization": where.auth}
    connection.request(method, target, body=body, headers=headers)
    return connection.sock.sent  # type: ignore[no-any-return]


HEADERS = {"Accept": "application/json", "User-Agent": "t/1", "X-API-Key": "k"}


@pytest.mark.parametrize(
    ("api_url", "method", "body"),
    [
        ("http://127.0.0.1:8080/api", "POST", b'{"worker_id": "w"}'),
        ("http://127.0.0.1:8080/api", "GET", None),
        ("http://127.0.0.1:8080/api", "POST", None),  # Content-Length: 0, as http.client
        ("http://127.0.0.1:8080/api", "DELETE", None),
        ("https://tm.example/api", "PUT", b"{}"),  # the default port goes unnamed
        ("https://tm.example:8443/api", "PATCH", b"{}"),
        ("http://[::1]:8080/api", "GET", None),  # an IPv6 host in brackets
        ("http://127.0.0.1:8080/api", "post", None),  # Content-Length: 0 whatever the case
        ("https://user:pa%20ss@tm.example/api", "POST", b"{}"),  # the login as Basic auth
    ],
)
def test_the_head_is_what_http_client_writes(api_url: str, method: str, body: bytes | None):
    """The head is built here (once per header set) instead of by ``request``: the bytes
    on the wire stay those of ``http.client``, line for line and in its order."""
    where = origin(api_url)
    target = where.path + "/tasks/claim?n=1"
    ours = where.head(method, target, HEADERS, body)
    assert ours + (body or b"") == written_by_http_client(api_url, method, target, HEADERS, body)
    again = where.head(method, target, HEADERS, body)  # the cached lines
    assert again == ours


@pytest.mark.parametrize("target", ["/api/task types", "/api/x\r\nHost: evil", "/api/\x7f"])
def test_a_target_http_client_refuses_is_refused(target: str):
    with pytest.raises(http.client.InvalidURL):
        origin("http://127.0.0.1:8080/api").head("GET", target, HEADERS, None)
    with pytest.raises(http.client.InvalidURL):
        written_by_http_client("http://127.0.0.1:8080/api", "GET", target, HEADERS, None)


def test_a_header_that_would_split_its_line_is_refused_without_its_value():
    """http.client's own message shows the value: for the key, that would be a leak."""
    bad = {**HEADERS, "X-API-Key": "s3cret\r\nX-Evil: 1"}
    with pytest.raises(ValueError, match="X-API-Key") as refused:
        origin("http://127.0.0.1:8080/api").head("GET", "/api/health", bad, None)
    assert "s3cret" not in str(refused.value)


def test_a_target_that_is_not_ascii_is_refused_as_http_client_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        origin("http://127.0.0.1:8080/api").head("GET", "/api/task-types/ä", HEADERS, None)


def test_an_ipv6_zone_stays_out_of_the_host_header():
    """The zone names an interface of this machine: http.client leaves it out."""
    head = origin("https://[fe80::1%eth0]:8443/api").head("GET", "/api/health", HEADERS, None)
    assert b"\r\nHost: [fe80::1]:8443\r\n" in head


def test_a_method_with_a_control_character_is_refused():
    with pytest.raises(ValueError, match="method can't contain control characters"):
        origin("http://127.0.0.1:8080/api").head("GET\r\nX: 1", "/api/health", HEADERS, None)


def _read_as_interim_by_http_client(line: bytes) -> bool:
    """The oracle: whether ``Response.begin`` would skip ``line`` as an interim answer's
    status line (``http.client``'s own parse of it, then 1xx but 101)."""
    import io

    class _Socket:
        def makefile(self, _mode: str) -> io.BytesIO:
            return io.BytesIO(line + b"\r\n")

    try:
        status = http.client.HTTPResponse(_Socket())._read_status()[1]  # type: ignore[arg-type]
    except http.client.HTTPException:
        return False
    return 100 <= status < 200 and status != 101


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 103 Early Hints",
        b"HTTP/1.1 102",
        b"HTTP/1.1  103 Early Hints",
        b"HTTP/1.1\t103\tEarly Hints",
        b"  HTTP/1.1 103",
        b"HTTP/2 103",
        b"HTTP/1.1 +103",
        b"HTTP/1.1 1_03",
        b"HTTP/1.1 101 Switching Protocols",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 1030",
        b"HTTP/1.1 099",
        b"HTTP/1.1 abc",
        b"HTTP/1.1",
        b"HTTPS/1.1 103",
        b"http/1.1 103",
        b"ICY 103 OK",
        b"",
        b"\xffHTTP/1.1 103",
        b"HTTP/1.1 \xa0103",
    ],
)
def test_the_in_flight_loop_tells_an_interim_status_line_as_http_client_does(line: bytes):
    """The loop waits past interim heads itself (reading past them blocking would hold
    every operation): a line it takes for the answer's while ``Response`` skips it, or the
    other way round, holds the loop or reads the next answer as this one's."""
    from taskmanager.in_flight import _is_interim

    assert _is_interim(line) == _read_as_interim_by_http_client(line)


class _Blocked(Exception):
    """A read that would wait for more bytes on a socket."""


class _FinalStatus(Exception):
    """``Response`` has read the answer's own status line."""


def _response_on(data: bytes) -> str:
    """What ``Response.begin`` does with ``data`` as all that came so far: ``"wait"``
    (it would block before the answer's own status line is read) or ``"read"`` (it
    reads that line, or refuses what came, without waiting)."""
    from taskmanager.stdlib_transport import Response

    class _Arrived:
        def __init__(self) -> None:
            self.rest = data

        def readline(self, limit: int) -> bytes:
            end = self.rest.find(b"\n", 0, limit)
            if end < 0 and len(self.rest) < limit:
                raise _Blocked
            take = end + 1 if end >= 0 else limit
            line, self.rest = self.rest[:take], self.rest[take:]
            return line

        def close(self) -> None:  # a bad status line closes the connection
            pass

    class _Socket:
        def makefile(self, _mode: str) -> _Arrived:
            return _Arrived()

    response = Response(_Socket())  # type: ignore[arg-type]
    read_status = response._read_status

    def status_line() -> Any:
        version, status, reason = read_status()
        if not 100 <= status < 200 or status == 101:
            raise _FinalStatus
        return version, status, reason

    response._read_status = status_line  # type: ignore[method-assign]
    try:
        response.begin()
    except _Blocked:
        return "wait"
    except (_FinalStatus, http.client.HTTPException):
        return "read"
    raise AssertionError("begin() returned without reading a status line")


_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 2",
        _OK,
        _OK[:16],
        _HINTS[:20],
        _HINTS[:-2],
        _HINTS,
        _HINTS + _HINTS[:5],
        _HINTS + _OK,
        _HINTS.replace(b"\r\n", b"\n") + _OK,
        _HINTS.replace(b" 103", b"  103") + _OK,
        b"HTTP/1.1 102\r\n\r\n" + _HINTS + _OK[:3],
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"\r\n" + _OK,
        b"HTTP/1.1 103\r\r\n\r\n",
        b"x" * 65535,
        b"x" * 65536,
        b"x" * 65537,
        b"x" * 65535 + b"\n",
        b"HTTP/1.1 103 E\r\n" + b"L: x\r\n" * 100,
        b"HTTP/1.1 103 E\r\n" + b"L: x\r\n" * 101,
        b"HTTP/1.1 103 E\r\nL: " + b"a" * 65540,
    ],
    ids=lambda data: repr(data[:24]) + f"...({len(data)} bytes)",
)
def test_the_in_flight_loop_waits_exactly_where_response_would_block(data: bytes):
    """The loop waits for more of an answer in its select (other operations go on)
    exactly where ``Response`` would wait for it blocking, before the answer's own status
    line; what it hands over (the bytes after whole interim heads) reads as the whole."""
    from taskmanager.in_flight import _past_interim

    rest, wait = _past_interim(data)
    assert ("wait" if wait else "read") == _response_on(data)
    assert data.endswith(rest) and _response_on(rest) == _response_on(data)


def test_an_interim_head_over_max_line_in_all_is_handed_over_unfinished():
    """What the loop keeps and scans again at each read is bounded: an interim head past
    ``MAX_LINE`` bytes in all (``Response`` takes up to 100 lines of that size) goes to
    ``Response`` unfinished, which reads the rest of it blocking."""
    from taskmanager.in_flight import _past_interim
    from taskmanager.stdlib_transport import MAX_LINE

    line = b"L: " + b"a" * 1000 + b"\r\n"  # 64 of them: under 100 lines and MAX_LINE bytes
    within = b"HTTP/1.1 103 E\r\n" + line * (MAX_LINE // len(line) - 1)
    assert len(within) <= MAX_LINE and _past_interim(within) == (within, True)
    over = within + line * 2
    assert len(over) > MAX_LINE and _past_interim(over) == (over, False)
