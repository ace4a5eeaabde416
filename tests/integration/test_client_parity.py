"""The server's quirks and failures, absorbed the same by the blocking and the async client.

Every scenario runs with each client (the blocking one on requests and on aiohttp,
the async one) over real HTTP against a scripted
loopback server (exact answer shapes, hangs, truncation, redirects); retries
sleep on a fake clock, so nothing here waits for a back-off.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import random
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from taskmanager import (
    TaskManagerAuthError,
    TaskManagerClient,
    TaskManagerConfig,
    TaskManagerConfigError,
    TaskManagerConflictError,
    TaskManagerConnectionError,
    TaskManagerNotFoundError,
    TaskManagerProtocolError,
    TaskManagerRateLimitError,
    TaskManagerServerError,
    TaskManagerTimeoutError,
)
from taskmanager.exchange import Sleep

from ..both_clients import CLIENT_KINDS, IN_FLIGHT, LOOP, STDLIB, make_client
from ..scripted_server import Scripted, ScriptedServer, closed_port

pytestmark = pytest.mark.integration

KEY = "parity-key-5b1e"
DEADLOCK = "SQLSTATE[40001]: Serialization failure: 1213 Deadlock found when trying to get lock"


def ok(data: Any, status: int = 200, **headers: str) -> Scripted:
    return Scripted(status, {"success": True, "data": data}, headers)


def err(status: int, message: str, **headers: str) -> Scripted:
    return Scripted(status, {"success": False, "error": message}, headers)


class Sleeps:
    """A clock that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.taken: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.taken.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture(params=(*CLIENT_KINDS, LOOP, STDLIB, IN_FLIGHT))
def connect(
    request: pytest.FixtureRequest, server: ScriptedServer, sleeps: Sleeps
) -> Iterator[Callable[..., Any]]:
    """Build the client under test (``connect(**config)``); closed after the test."""
    made: list[Any] = []

    def build(api_url: str | None = None, **config: Any) -> Any:
        values = {
            "api_url": api_url or server.url,
            "api_key": KEY,
            "worker_id": "parity-worker",
            "backoff_base": 1.0,
            **config,
        }
        client = make_client(
            request.param,
            TaskManagerConfig(**values),
            sleep=sleeps.sleep,
            clock=sleeps.clock,
            rng=random.Random(3),
        )
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def test_string_ids_become_ints_and_the_key_is_sent(server: ScriptedServer, connect):
    server.add("POST", "/tasks", ok({"id": "42", "type": "T", "status": "pending"}, 201))
    assert connect().create_task("T", {"a": 1}) == 42
    (sent,) = server.calls("POST", "/tasks")
    assert sent.headers["x-api-key"] == KEY
    assert sent.body == {"type": "T", "params": {"a": 1}, "priority": 0}


def test_items_wrapper_and_200_for_an_unknown_id(server: ScriptedServer, connect):
    row = {"id": "5", "type": "T", "status": "completed", "params": "{}", "attempts": "1"}
    server.add("GET", "/tasks/5", ok({"items": [row], "count": 1}))
    server.add("GET", "/tasks/6", ok({"items": [], "count": 0}))
    client = connect()
    task = client.get_task(5)
    assert (task.id, task.status, task.attempts) == (5, "completed", 1)
    with pytest.raises(TaskManagerNotFoundError):
        client.get_task(6)


@pytest.mark.parametrize(
    "empty", [err(500, "There is no active transaction"), err(404, "No available tasks")]
)
def test_empty_claim_queue_is_none(server: ScriptedServer, connect, empty: Scripted):
    server.add("POST", "/tasks/claim", empty)
    assert connect().claim_task(task_type_id=3) is None
    assert len(server.calls("POST", "/tasks/claim")) == 1  # not retried


def test_retry_after_is_waited_out_then_sent_again(server: ScriptedServer, connect, sleeps: Sleeps):
    limited = Scripted(
        429,
        {"error": "Too Many Requests", "retry_after": 60},
        {"Retry-After": "7", "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0"},
    )
    server.add("POST", "/tasks", limited, ok({"id": 9, "type": "T", "status": "pending"}, 201))
    client = connect()
    assert client.create_task("T", {"a": 1}) == 9
    assert sleeps.taken == [7.0]  # the header beats the body's 60 and the back-off
    assert client.rate_limit_for("/tasks").limit == 100


def test_a_429_past_the_deadline_is_raised(server: ScriptedServer, connect, sleeps: Sleeps):
    server.add(
        "POST", "/tasks", Scripted(429, {"error": "Too Many Requests"}, {"Retry-After": "600"})
    )
    with pytest.raises(TaskManagerRateLimitError) as raised:
        connect(retry_deadline=30).create_task("T", {"a": 1})
    assert raised.value.retry_after == 600 and sleeps.taken == []


def test_deadlock_500_is_sent_again(server: ScriptedServer, connect, sleeps: Sleeps):
    server.add(
        "POST", "/tasks/8/complete", err(500, DEADLOCK), ok({"id": "8", "status": "completed"})
    )
    result = connect().complete_task(8, {"ok": True})
    assert result.status == "completed" and len(sleeps.taken) == 1
    assert len(server.calls("POST", "/tasks/8/complete")) == 2


def test_html_gateway_error_retried_then_raised_with_a_snippet(
    server: ScriptedServer, connect, sleeps: Sleeps
):
    server.add("GET", "/tasks/1", Scripted(502, "<html><h1>502 Bad Gateway</h1></html>"))
    with pytest.raises(TaskManagerProtocolError) as raised:
        connect().get_task(1)
    assert "502 Bad Gateway" in str(raised.value)
    assert [round(s) for s in sleeps.taken] == [1, 2, 4]  # the same back-off, both clients


def test_truncated_answer_is_a_connection_error_and_retried(
    server: ScriptedServer, connect, sleeps: Sleeps
):
    server.add(
        "POST",
        "/tasks",
        Scripted(201, {"success": True, "data": {"id": 3}}, truncate=True),
        ok({"id": 3, "type": "T", "status": "pending"}, 201),
    )
    assert connect().create_task("T", {"a": 1}) == 3
    assert len(server.calls("POST", "/tasks")) == 2 and len(sleeps.taken) == 1


def test_an_idle_connection_the_server_closed_is_not_used(server: ScriptedServer, connect):
    """A keep-alive connection past the server's idle timeout: the next request goes on
    a new connection and is answered the first time (sent on the closed one, it would
    fail after leaving, with no retry allowed here)."""
    row = {"id": 1, "type": "T", "status": "pending"}
    answer = Scripted(200, {"success": True, "data": {"items": [row]}}, drop_after=True)
    server.add("GET", "/tasks/1", answer)
    client = connect(retry_attempts=0)
    assert client.get_task(1).id == 1
    time.sleep(0.2)  # the server's close reaches the client's side
    assert client.get_task(1).id == 1
    assert len(server.calls("GET", "/tasks/1")) == 2


@pytest.mark.parametrize("interim", [102, 103])
def test_an_interim_answer_is_never_taken_for_the_answer(
    server: ScriptedServer, connect, sleeps: Sleeps, interim: int
):
    """A 102 Processing, or a 103 Early Hints from a CDN in front of the server, then the
    answer: the next request on the connection reads its own answer, never this one's
    (a completion would otherwise take a claim's answer for its own verdict). The
    clients on http.client and aiohttp read past it; urllib3 (requests) takes it for
    the answer, so that client closes its idle connections and counts it as lost,
    and the request is sent again."""
    first = {"id": 1, "type": "T", "status": "pending"}
    second = {"id": 2, "type": "T", "status": "pending"}
    late = Scripted(200, {"success": True, "data": {"items": [first]}}, interim=interim, hang=0.3)
    server.add("GET", "/tasks/1", late, ok({"items": [first]}))
    server.add("GET", "/tasks/2", ok({"items": [second]}))
    client = connect()
    assert client.get_task(1).id == 1
    time.sleep(0.4)  # the first answer, if left on the connection, is in by now
    assert client.get_task(2).id == 2
    assert len(server.calls("GET", "/tasks/2")) == 1
    sent_again = len(server.calls("GET", "/tasks/1")) - 1
    assert sent_again == len(sleeps.taken) and sent_again <= 1


def test_a_gzip_answer_is_decoded(server: ScriptedServer, connect):
    """A proxy may compress an answer nobody asked it to."""
    row = {"id": 4, "type": "T", "status": "pending"}
    packed = gzip.compress(json.dumps({"success": True, "data": {"items": [row]}}).encode())
    server.add("GET", "/tasks/4", Scripted(200, packed, {"Content-Encoding": "gzip"}))
    assert connect().get_task(4).id == 4


ROW_4 = b'{"id": 4, "type": "T", "status": "pending"}'


@pytest.mark.parametrize(
    "body",
    [
        zlib.compress(b'{"success": true, "data": {"items": [' + ROW_4 + b"]}}")[2:-4],
        gzip.compress(b'{"success": true, ')
        + gzip.compress(b'"data": {"items": [' + ROW_4 + b"]}}"),
    ],
    ids=["raw deflate", "two gzip members"],
)
def test_deflate_without_its_header_and_gzip_in_members_are_decoded(
    server: ScriptedServer, connect, body: bytes
):
    """What requests reads, every client reads (raw deflate is what some servers send
    for "deflate"; a gzip stream may hold several members)."""
    encoding = "deflate" if body[:2] != b"\x1f\x8b" else "gzip"
    server.add("GET", "/tasks/4", Scripted(200, body, {"Content-Encoding": encoding}))
    assert connect().get_task(4).id == 4


def test_an_answer_whose_body_does_not_inflate_is_judged_by_its_status(
    server: ScriptedServer, connect
):
    """A 401 with an empty body marked gzip is still the server's 401 (sent once, not
    retried as a lost connection: a POST the server answered must not go again)."""
    server.add("POST", "/tasks/claim", Scripted(401, b"", {"Content-Encoding": "gzip"}))
    with pytest.raises(TaskManagerProtocolError, match="401"):
        connect().claim_task(task_type_id=3)
    assert len(server.calls("POST", "/tasks/claim")) == 1


def test_a_server_that_hangs_is_a_timeout(server: ScriptedServer, connect):
    server.add("GET", "/tasks/1", Scripted(200, {"success": True}, hang=5.0))
    with pytest.raises(TaskManagerTimeoutError):
        connect(timeout=0.3, retry_attempts=0).get_task(1)


def test_nothing_listening_is_connection_refused_in_words(connect):
    url = f"http://127.0.0.1:{closed_port()}/api"
    with pytest.raises(TaskManagerConnectionError) as raised:
        connect(api_url=url, retry_attempts=1).get_task(1)
    assert "connection refused" in str(raised.value)


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(connect):
    with ScriptedServer() as elsewhere, ScriptedServer() as server:
        server.add("GET", "/tasks/1", Scripted(301, "", {"Location": elsewhere.url + "/tasks/1"}))
        with pytest.raises(TaskManagerProtocolError) as raised:
            connect(api_url=server.url).get_task(1)
        assert elsewhere.url in str(raised.value) and "redirect" in str(raised.value)
        assert elsewhere.received == []


def test_wrong_key_is_an_auth_error_not_retried(server: ScriptedServer, connect):
    server.add("GET", "/tasks/1", err(401, "Unauthorized: invalid API key"))
    with pytest.raises(TaskManagerAuthError):
        connect().get_task(1)
    assert len(server.calls()) == 1


def test_replayed_completion_settles_by_reading_the_task(server: ScriptedServer, connect):
    server.add("POST", "/tasks/4/complete", err(400, "Task is not in claimed state"))
    row = {
        "id": 4,
        "type": "T",
        "status": "completed",
        "claimed_by": "parity-worker",
        "result": '{"n": 1}',
        "params": "{}",
        "attempts": 1,
    }
    server.add("GET", "/tasks/4", ok({"items": [row], "count": 1}))
    assert connect().complete_task(4, {"n": 1}).settled_by_read is True


def test_completion_of_a_task_someone_else_finished_is_a_conflict(server: ScriptedServer, connect):
    server.add("POST", "/tasks/4/complete", err(403, "Task is claimed by another worker"))
    row = {"id": 4, "type": "T", "status": "claimed", "claimed_by": "other", "params": "{}"}
    server.add("GET", "/tasks/4", ok({"items": [row], "count": 1}))
    with pytest.raises(TaskManagerConflictError) as raised:
        connect().complete_task(4, {"n": 1})
    assert raised.value.current_task is not None
    assert raised.value.current_task.claimed_by == "other"


def test_a_conflict_whose_read_back_fails_says_why(server: ScriptedServer, connect):
    server.add("POST", "/tasks/4/complete", err(400, "Task is not in claimed state"))
    server.add("GET", "/tasks/4", Scripted(200, {"success": True}, hang=5.0))
    with pytest.raises(TaskManagerConflictError) as raised:
        connect(timeout=0.3, retry_attempts=0).complete_task(4, {"n": 1})
    assert raised.value.current_task is None
    assert isinstance(raised.value.read_error, TaskManagerTimeoutError)


def test_list_pages_with_limit_and_offset(server: ScriptedServer, connect):
    rows = [{"id": i, "type": "T", "status": "pending"} for i in range(5)]
    server.add(
        "GET",
        "/tasks",
        ok({"items": rows[:2], "count": 2}),
        ok({"items": rows[2:4], "count": 2}),
        ok({"items": rows[4:], "count": 1}),
    )
    ids = [task.id for task in connect().list_tasks(status="pending", page_size=2)]
    assert ids == [0, 1, 2, 3, 4]
    queries = [call.query for call in server.calls("GET", "/tasks")]
    assert queries == [
        {"limit": "2", "offset": str(offset), "status": "pending"} for offset in (0, 2, 4)
    ]


def test_health_check_never_raises(server: ScriptedServer, connect):
    server.add("GET", "/health", Scripted(503, "<html>down</html>"))
    assert connect().health_check() is False
    assert "x-api-key" not in server.calls("GET", "/health")[0].headers


def test_the_key_is_never_logged(server: ScriptedServer, connect, caplog: pytest.LogCaptureFixture):
    server.add("POST", "/tasks", Scripted(503, "<html>busy</html>"), err(401, "Unauthorized"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TaskManagerAuthError) as raised:
        connect().create_task("T", {"a": 1})
    assert caplog.records and KEY not in caplog.text
    assert KEY not in str(raised.value) and KEY not in repr(raised.value)


def test_a_password_in_api_url_goes_as_basic_auth_and_is_never_shown(
    server: ScriptedServer, connect, caplog: pytest.LogCaptureFixture
):
    """``http://user:pw@host/api`` (a proxy's login): sent as HTTP Basic auth, as
    requests and aiohttp do, but every error, log line and repr shows ``user:***@``."""
    password = "S3cretApiPw"
    server.add("GET", "/tasks/1", err(500, "Internal failure"))
    caplog.set_level(logging.DEBUG)
    client = connect(api_url=server.url.replace("http://", f"http://user:{password}@", 1))
    with pytest.raises(TaskManagerServerError) as failed:
        client.get_task(1)
    (sent,) = server.calls("GET", "/tasks/1")
    assert (
        sent.headers["authorization"] == "Basic " + base64.b64encode(b"user:S3cretApiPw").decode()
    )
    closed = f"http://user:{password}@127.0.0.1:{closed_port()}/api"
    with pytest.raises(TaskManagerConnectionError) as unanswered:
        connect(api_url=closed, retry_attempts=0).get_task(1)
    errors = (failed.value, unanswered.value)
    shown = [caplog.text, repr(client), *map(str, errors), *map(repr, errors)]
    shown += [str(error.url) for error in errors]
    assert [text for text in shown if password in text] == []
    assert all("http://user:***@127.0.0.1:" in str(error) for error in errors)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (certificate file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")  # verify_tls=False, on purpose
@pytest.mark.parametrize("kind", (*CLIENT_KINDS, LOOP, STDLIB))
def test_tls_trusts_the_ca_bundle_requests_reads_and_nothing_else(
    kind: str, certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
):
    """Over HTTPS: a certificate no authority vouches for is refused as a TLS failure
    and not retried; the same server is trusted once REQUESTS_CA_BUNDLE names its
    certificate, and answers with verification off (``verify_tls=False``)."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    row = {"id": 5, "type": "T", "status": "pending"}
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with ScriptedServer(tls=context) as server:
        server.add("GET", "/tasks/5", ok({"items": [row], "count": 1}))

        def get(**config: Any) -> int:
            values = {"api_url": server.url, "api_key": KEY, "backoff_base": 0.01, **config}
            with make_client(kind, TaskManagerConfig(**values)) as client:
                return int(client.get_task(5).id)

        with pytest.raises(TaskManagerConnectionError, match="TLS failed") as refused:
            get()
        assert KEY not in str(refused.value)
        assert get(verify_tls=False) == 5
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
        assert get() == 5
        assert len(server.calls("GET", "/tasks/5")) == 2  # the refused one never arrived


def test_closing_the_stdlib_client_ends_a_request_in_flight_over_tls(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
):
    """Over TLS too: the socket under a request in flight is shut down as a plain
    socket (the TLS socket's own shutdown would first drop its TLS state, and a send
    racing it would go out in clear)."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    with ScriptedServer(tls=context) as server:
        closing_ends_the_claim_in_flight(server, "stdlib")


def test_over_tls_a_slow_answer_holds_up_no_other_request_in_flight(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
):
    """``run_together`` over TLS: a new connection turns readable with the server's
    session tickets (TLS 1.3), before any answer. Taken for the answer, the slow
    request's read would hold the thread, and the quick one behind it, for a second."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    row = {"id": 1, "type": "T", "status": "pending"}
    with ScriptedServer(tls=context) as server:
        slow = {"success": True, "data": {"items": [row], "count": 1}}
        server.add("GET", "/tasks/1", Scripted(200, slow, hang=1.0))
        server.add("GET", "/tasks/2", ok({"items": [{**row, "id": 2}], "count": 1}))
        config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w")
        with TaskManagerClient(config, http="stdlib") as client:
            started = time.monotonic()

            def quick() -> Any:
                yield Sleep(0.2)  # the slow request's connection has its tickets by now
                task = yield from client.calls.get_task(2)
                return task.id, time.monotonic() - started

            late, (quick_id, quick_seconds) = client.run_together(
                [client.calls.get_task(1), quick()], 2
            )
            assert late.id == 1 and quick_id == 2
            assert quick_seconds < 0.7  # not behind the slow answer's second


def test_over_tls_a_record_that_does_not_decrypt_is_a_tls_failure_not_retried(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
):
    """A server whose answer is not a valid TLS record: on a thread the read raises a
    TLS error (not retried: it would fail the same way); ``run_together`` must say the
    same, though it meets the error in its own read without waiting."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    listener = socket.create_server(("127.0.0.1", 0))
    requests_seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            with context.wrap_socket(raw, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += tls.recv(4096)
                requests_seen.append(request)
                # An application-data record that does not decrypt, sent around TLS.
                with socket.socket(fileno=os.dup(tls.fileno())) as plain:
                    plain.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/api"
    config = TaskManagerConfig(api_url=url, api_key=KEY, worker_id="w", retry_attempts=3)
    errors = []
    try:
        for together in (False, True):
            with TaskManagerClient(config, http="stdlib") as client:
                with pytest.raises(TaskManagerConnectionError) as raised:
                    if together:
                        client.run_together([client.calls.get_task(1)], 1)
                    else:
                        client.get_task(1)
                errors.append(str(raised.value))
    finally:
        listener.close()
    assert len(requests_seen) == 2  # one each way: not retried
    assert all("TLS failed" in error for error in errors), errors


# -- the async client's own edges: cancellation, event loops, CA bundles ---------------
def test_a_cancelled_request_counts_as_unanswered(server: ScriptedServer):
    from taskmanager.async_client import AsyncTaskManagerClient

    server.add("POST", "/tasks/claim", Scripted(200, {"success": True, "data": None}, hang=2.0))
    config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w")

    async def claim_then_give_up() -> int:
        async with AsyncTaskManagerClient(config) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.claim_task(task_type_id=1), 0.3)
            return client.unanswered("/tasks/claim")

    assert asyncio.run(claim_then_give_up()) == 1  # the server may hold a claim for us
    assert len(server.calls("POST", "/tasks/claim")) == 1


def test_one_client_across_two_asyncio_runs(server: ScriptedServer):
    from taskmanager.async_client import AsyncTaskManagerClient

    row = {"id": 1, "type": "T", "status": "pending"}
    server.add("GET", "/tasks/1", ok({"items": [row], "count": 1}))
    client = AsyncTaskManagerClient(TaskManagerConfig(api_url=server.url, api_key=KEY))
    assert asyncio.run(client.get_task(1)).id == 1
    assert asyncio.run(client.get_task(1)).id == 1  # a new session on the new loop
    asyncio.run(client.close())


def test_ca_bundle_from_the_environment_as_requests_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    from taskmanager.connection_settings import ssl_setting as _ssl_setting

    config = TaskManagerConfig(api_url="https://tm.example.test/api", api_key=KEY)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    default = _ssl_setting(config)
    assert isinstance(default, ssl.SSLContext) and default.get_ca_certs()  # certifi's
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))
    assert isinstance(_ssl_setting(config), ssl.SSLContext)  # a folder works as for requests
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(TaskManagerConfigError, match=r"missing\.pem"):
        _ssl_setting(config)
    assert _ssl_setting(TaskManagerConfig(api_url=config.api_url, verify_tls=False)) is False


# -- the blocking client on aiohttp (http="aiohttp"): its own edges ----------------------------
def test_a_back_off_on_the_loop_holds_no_other_request(server: ScriptedServer):
    """The loop thread is shared by every calling thread: one request waiting out a
    Retry-After (with the real sleep) must not hold another."""
    row = {"id": "2", "type": "T", "status": "pending"}
    limited = err(429, "Too Many Requests", **{"Retry-After": "3"})
    server.add("GET", "/tasks/1", limited, ok({"items": [{**row, "id": "1"}], "count": 1}))
    server.add("GET", "/tasks/2", ok({"items": [row], "count": 1}))
    config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w")
    with TaskManagerClient(config, http="aiohttp") as client:
        waiting = threading.Thread(target=client.get_task, args=(1,))
        waiting.start()
        while not server.calls("GET", "/tasks/1"):
            time.sleep(0.01)
        started = time.monotonic()
        assert client.get_task(2).id == 2
        assert time.monotonic() - started < 1.5  # not after the other's 3 s wait
        assert waiting.is_alive()
        waiting.join()
    assert len(server.calls("GET", "/tasks/1")) == 2


def test_the_aiohttp_choice_is_checked(server: ScriptedServer):
    config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w")
    with pytest.raises(TaskManagerConfigError, match='"requests", "aiohttp" or "stdlib"'):
        TaskManagerClient(config, http="httpx")  # type: ignore[arg-type]
    with pytest.raises(TaskManagerConfigError, match="session= is for requests"):
        TaskManagerClient(config, http="aiohttp", session=requests.Session())


@pytest.mark.parametrize("http", ["requests", "aiohttp", "stdlib"])
def test_a_closed_client_says_so_and_sends_nothing(server: ScriptedServer, http: Any):
    """requests would open a new connection after ``close()``; every blocking client
    refuses alike instead."""
    row = {"id": 1, "type": "T", "status": "pending", "params": "{}"}
    server.add("GET", "/tasks/1", ok({"items": [row], "count": 1}))
    config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w")
    client = TaskManagerClient(config, http=http)
    assert client.get_task(1).id == 1
    client.close()
    client.close()  # twice is fine
    with pytest.raises(TaskManagerConfigError, match="closed"):
        client.get_task(1)
    assert len(server.calls("GET", "/tasks/1")) == 1


@pytest.mark.parametrize("http", ["aiohttp", "stdlib"])
def test_closing_the_client_ends_a_request_in_flight(server: ScriptedServer, http: Any):
    """A caller waiting on a hung server when the client is closed gets an error at
    once, counted as unanswered (the server may have applied it), never a hang."""
    closing_ends_the_claim_in_flight(server, http)


def closing_ends_the_claim_in_flight(server: ScriptedServer, http: Any) -> None:
    server.add("POST", "/tasks/claim", Scripted(200, {"success": True, "data": {}}, hang=30.0))
    config = TaskManagerConfig(api_url=server.url, api_key=KEY, worker_id="w", timeout=60)
    client = TaskManagerClient(config, http=http)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.claim_task(task_type_id=3)
        except BaseException as exc:  # what the caller got, whatever it is
            outcome.append(exc)

    waiting = threading.Thread(target=call)
    waiting.start()
    while not server.calls("POST", "/tasks/claim"):
        time.sleep(0.01)
    started = time.monotonic()
    client.close()
    waiting.join(10)
    assert not waiting.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], TaskManagerConnectionError), outcome
    assert "closed before the server answered" in str(outcome[0])
    assert client.unanswered("/tasks/claim") == 1  # a claim that may be an orphan
