"""Several operations with requests in flight at once from one thread (``run_together``),
over real HTTP against the emulator: what threads gave the daemon, kept without them.

The quirk scenarios (hangs, truncation, redirects, 429s, TLS, ...) run through the same
driver one operation at a time in ``test_client_parity.py`` (the ``in_flight`` kind).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskmanager import (
    TaskManagerClient,
    TaskManagerConfig,
    TaskManagerConfigError,
    TaskManagerConnectionError,
    TaskManagerTimeoutError,
)
from taskmanager.emulator import EmulatorServer
from taskmanager.exchange import Sleep

from ..scripted_server import Scripted, ScriptedServer, closed_port
from .helpers import most_at_once

TYPE = "flight.t"


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    # Each request held 100 ms by the server (any number at once): long beside the
    # client's own work, and inside the span the request log records.
    with EmulatorServer(service_seconds=0.1) as emulator:
        yield emulator


def client_for(server: EmulatorServer, **config: Any) -> TaskManagerClient:
    """A client on ``http.client``, the test type registered."""
    settings = TaskManagerConfig(
        api_url=server.url, api_key=server.api_key, worker_id="flight", **config
    )
    client = TaskManagerClient(settings, http="stdlib")
    client.register_task_type(TYPE, "1", {"type": "object"})
    return client


def no_connection_out(client: TaskManagerClient) -> bool:
    """Every connection back in the pool or closed: none left out by an operation."""
    return not client._transport.pool._busy  # type: ignore[union-attr]


def claim_and_complete(client: TaskManagerClient, threads: list[int]) -> Any:
    """An operation as the daemon writes them: requests, and its own work between."""
    task = yield from client.calls.claim_task(TYPE)
    threads.append(threading.get_ident())
    assert task is not None
    yield from client.calls.complete_task(task.id, {"by": "flight"})
    threads.append(threading.get_ident())
    return task.id


def test_operations_have_their_requests_in_flight_together_on_the_calling_thread(
    server: EmulatorServer,
):
    with client_for(server) as client:
        created = [client.create_task(TYPE, {"n": n}) for n in range(6)]
        server.reset_requests()
        threads: list[int] = []
        done = client.run_together([claim_and_complete(client, threads) for _ in range(6)], 6)
        assert sorted(done) == sorted(created)  # each claimed one task, and finished it
        assert set(threads) == {threading.get_ident()}  # every step on this thread
        assert most_at_once(server.requests, "/tasks/claim") == 6
        assert all(client.get_task(i).status == "completed" for i in created)
        assert no_connection_out(client)


def test_width_bounds_the_requests_in_flight_and_results_keep_their_order(
    server: EmulatorServer,
):
    with client_for(server) as client:
        created = [client.create_task(TYPE, {"n": n}) for n in range(5)]
        server.reset_requests()
        done = client.run_together([client.calls.get_task(i) for i in created], 2)
        assert [task.id for task in done] == created
        assert most_at_once(server.requests, "/tasks/*") == 2
        lazily = client.run_together((client.calls.get_task(i) for i in created), 2)
        assert [task.id for task in lazily] == created  # any iterable, as on requests


def test_a_retry_waits_without_holding_up_the_other_operations(server: EmulatorServer):
    with client_for(server, backoff_base=1.0) as client:
        task_id = client.create_task(TYPE, {"n": 1})
        server.reset_requests()
        server.faults.fail_next(1, status=503, path="/tasks/claim")

        def three_reads() -> Any:
            # Start once the claim's 503 is surely in (the claim and a first read would
            # be in flight together, and the server may log either first), and well
            # before its back-off (0.8-1.2 s) ends.
            yield Sleep(0.3)
            for _ in range(3):
                yield from client.calls.get_task(task_id)
            return "read"

        claimed, read = client.run_together([client.calls.claim_task(TYPE), three_reads()], 2)
        assert claimed is not None and claimed.id == task_id and read == "read"
        order = [(r.path, r.status) for r in server.requests]
        first_claim = order.index(("/tasks/claim", 503))
        retried = order.index(("/tasks/claim", 200))
        reads = [i for i, (path, _) in enumerate(order) if path == f"/tasks/{task_id}"]
        assert len(reads) == 3 and first_claim < min(reads) and max(reads) < retried


def test_no_answer_in_time_is_a_timeout_raised_once_the_others_ended(server: EmulatorServer):
    with client_for(server, timeout=0.5, retry_attempts=0) as client:
        task_id = client.create_task(TYPE, {"n": 1})
        server.faults.hang_next(1, path="/tasks/claim")
        ended: list[str] = []

        def reads() -> Any:
            for _ in range(3):
                yield from client.calls.get_task(task_id)
            ended.append("reads")

        with pytest.raises(TaskManagerTimeoutError):
            client.run_together([client.calls.claim_task(TYPE), reads()], 2)
        assert ended == ["reads"]
        assert client.unanswered("/tasks/claim") == 1  # the server may have applied it
        pool = client._transport.pool  # type: ignore[union-attr]
        assert no_connection_out(client) and len(pool._idle) == 1  # the reads' one, kept
        assert all(connection.sock is not None for connection in pool._idle)
        server.faults.release_hangs()


def test_an_answer_that_came_while_the_thread_was_busy_is_read_not_timed_out(
    server: EmulatorServer,
):
    """An operation's own work between requests (a claim's record waiting for SQLite's
    lock, say) can outlast another's time limit; an answer that came meanwhile is read."""
    with client_for(server, timeout=1.0, retry_attempts=0) as client:
        task_id = client.create_task(TYPE, {"n": 1})

        def busy() -> Any:
            yield Sleep(0.05)  # the read below is in flight by then
            time.sleep(1.3)  # past the read's time limit; its answer came at 0.1 s
            return "busy"

        read, done = client.run_together([client.calls.get_task(task_id), busy()], 2)
        assert read.id == task_id and done == "busy"
        assert client.unanswered(f"/tasks/{task_id}") == 0
        assert no_connection_out(client)


def test_closing_the_client_from_another_thread_ends_the_requests_in_flight(
    server: EmulatorServer,
):
    with client_for(server) as client:
        client.create_task(TYPE, {"n": 1})
        server.faults.hang_next(3, path="/tasks/claim")
        threading.Timer(0.3, client.close).start()
        started = time.monotonic()
        with pytest.raises(TaskManagerConnectionError, match="closed"):
            client.run_together([client.calls.claim_task(TYPE) for _ in range(3)], 3)
        assert time.monotonic() - started < 5  # not the 30 s read timeout
        assert client.unanswered("/tasks/claim") == 3
        assert no_connection_out(client)
        server.faults.release_hangs()


def test_many_operations_that_send_nothing_end_without_a_deep_stack(server: EmulatorServer):
    """A push stopped by an outage ends every chain not yet started at once."""
    with client_for(server) as client:

        def at_once(n: int) -> Any:
            return n
            yield  # steps that end before any request

        count = 5 * sys.getrecursionlimit()
        assert client.run_together([at_once(n) for n in range(count)], 4) == list(range(count))


def test_an_operations_own_error_is_raised_once_every_other_operation_ended(
    server: EmulatorServer,
):
    with client_for(server) as client:
        created = [client.create_task(TYPE, {"n": n}) for n in range(2)]

        def breaks() -> Any:
            yield from client.calls.get_task(created[0])
            raise ValueError("the operation's own bug")

        threads: list[int] = []
        with pytest.raises(ValueError, match="own bug"):
            client.run_together([breaks(), claim_and_complete(client, threads)], 2)
        assert len(threads) == 2  # the other claimed and completed its task
        assert [client.get_task(i).status for i in created].count("completed") == 1
        assert no_connection_out(client)


def test_an_interrupt_ends_every_operation_and_counts_its_request_unanswered(
    server: EmulatorServer,
):
    with client_for(server) as client:
        client.create_task(TYPE, {"n": 1})
        server.faults.hang_next(2, path="/tasks/claim")
        closed: list[str] = []

        def hung(name: str) -> Any:
            try:
                yield from client.calls.claim_task(TYPE)
            finally:
                closed.append(name)
                if name == "first":
                    raise RuntimeError("the operation's own cleanup fails")

        def interrupted() -> Any:
            yield from client.calls.health_check()
            yield Sleep(0.2)  # both claims are in flight by then
            raise KeyboardInterrupt  # even when one operation's own cleanup then fails

        with pytest.raises(KeyboardInterrupt):
            client.run_together([hung("first"), hung("second"), interrupted()], 3)
        assert sorted(closed) == ["first", "second"]
        assert client.unanswered("/tasks/claim") == 2
        assert no_connection_out(client)
        server.faults.release_hangs()


def test_a_closed_client_runs_nothing(server: EmulatorServer):
    client = client_for(server)
    client.close()
    server.reset_requests()
    steps = client.calls.health_check()
    with pytest.raises(TaskManagerConfigError, match="closed"):
        client.run_together([steps], 1)
    assert server.requests == []


def test_on_another_http_library_the_operations_run_one_after_another(
    server: EmulatorServer,
):
    settings = TaskManagerConfig(api_url=server.url, api_key=server.api_key, worker_id="flight")
    with TaskManagerClient(settings) as client:  # requests
        assert not client.runs_together
        client.register_task_type(TYPE, "1", {"type": "object"})
        created = [client.create_task(TYPE, {"n": n}) for n in range(3)]
        server.reset_requests()
        done = client.run_together([client.calls.get_task(i) for i in created], 3)
        assert [task.id for task in done] == created
        assert most_at_once(server.requests, "/tasks/*") == 1


def test_an_answer_trickled_within_each_read_timeout_holds_nothing_past_its_own():
    """A server that sends an answer's head, then its body a byte every 0.2 s, each
    within the 0.5 s read timeout: the whole answer must be in within the read timeout
    of the request leaving, on a thread of its own as on the shared one, where it would
    otherwise hold every other operation for as long as it trickles (seconds here; for
    good with a chunked answer that never ends)."""
    row = {"success": True, "data": {"items": [{"id": 1, "type": "T", "status": "pending"}]}}
    with ScriptedServer() as scripted:
        scripted.add("GET", "/tasks/1", Scripted(200, row, trickle=0.2))
        scripted.add("GET", "/tasks/2", Scripted(200, row))
        settings = TaskManagerConfig(
            api_url=scripted.url, api_key="k", worker_id="w", timeout=0.5, retry_attempts=0
        )
        with TaskManagerClient(settings, http="stdlib") as client:
            started = time.monotonic()
            with pytest.raises(TaskManagerTimeoutError):
                client.get_task(1)
            assert time.monotonic() - started < 1.5  # the body alone would take ~18 s

            started = time.monotonic()
            answered: list[float] = []

            def read(task_id: int) -> Any:
                task = yield from client.calls.get_task(task_id)
                answered.append(time.monotonic() - started)
                return task

            with pytest.raises(TaskManagerTimeoutError):
                client.run_together([read(1), read(2)], 2)
            assert len(answered) == 1 and answered[0] < 1.5  # read 2, not held by read 1
            assert no_connection_out(client)
            assert client.get_task(2).id == 1  # a pooled connection still reads whole answers


@contextlib.contextmanager
def full_accept_queue() -> Iterator[socket.socket]:
    """A loopback listener whose accept queue is full: a connect to it hangs (its SYN goes
    unanswered) until the queue drains, as to a host that is down or behind a firewall
    that drops them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        yield listener
    finally:
        for sock in [listener, *fillers]:
            sock.close()


@pytest.fixture
def connects_hang() -> Iterator[str]:
    """An ``api_url`` whose connects hang."""
    with full_accept_queue() as listener:
        port = listener.getsockname()[1]
        with pytest.raises(OSError):  # the queue is full once a connect of our own hangs
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        yield f"http://127.0.0.1:{port}/api"


def test_connects_that_hang_cost_each_operation_its_own_timeout_side_by_side(connects_hang: str):
    """New connections open on threads of their own: 8 operations whose connects all
    hang end after one connect timeout (0.5 s), not eight of them one after another,
    and the loop goes on meanwhile (a sleeping operation wakes on time)."""
    settings = TaskManagerConfig(
        api_url=connects_hang, api_key="k", worker_id="w", connect_timeout=0.5, retry_attempts=0
    )
    woke: list[float] = []
    with TaskManagerClient(settings, http="stdlib") as client:
        started = time.monotonic()

        def read() -> Any:
            try:
                yield from client.calls.get_task(1)
            except TaskManagerConnectionError as exc:  # a timeout is one too
                return type(exc).__name__
            return "answered"

        def nap() -> Any:
            yield Sleep(0.2)
            woke.append(time.monotonic() - started)
            return "slept"

        results = client.run_together([*(read() for _ in range(8)), nap()], 9)
        took = time.monotonic() - started
        assert results[-1] == "slept" and 0.2 <= woke[0] < 0.45
        assert all(result != "answered" for result in results[:-1])
        assert 0.5 <= took < 1.4  # one connect timeout, not 8 x 0.5 s
        assert no_connection_out(client)


def test_an_interrupt_while_a_connection_opens_leaves_nothing_open(connects_hang: str):
    """The connect thread's connection, once it is open or has failed, goes nowhere:
    the operation was closed (its request counted as unanswered) and nothing is left
    out of the pool."""
    settings = TaskManagerConfig(
        api_url=connects_hang, api_key="k", worker_id="w", connect_timeout=0.5, retry_attempts=0
    )
    with TaskManagerClient(settings, http="stdlib") as client:
        closed: list[str] = []

        def opening() -> Any:
            try:
                yield from client.calls.claim_task(task_type_id=1)
            finally:
                closed.append("opening")

        def interrupted() -> Any:
            yield Sleep(0.1)  # the claim's connection is opening by then
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            client.run_together([opening(), interrupted()], 2)
        assert closed == ["opening"] and client.unanswered("/tasks/claim") == 1
        time.sleep(0.7)  # the connect thread's timeout has passed
        assert no_connection_out(client)


def test_on_a_fake_clock_a_sleep_is_taken_at_once_beside_a_request_in_flight(
    server: EmulatorServer,
):
    """A test's clock moves only when the client's sleep is called: a back-off beside a
    slow request is taken at once, as on a thread, not waited in real time."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    settings = TaskManagerConfig(api_url=server.url, api_key=server.api_key, worker_id="w")
    with TaskManagerClient(settings, http="stdlib", clock=lambda: now[0], sleep=sleep) as client:
        client.register_task_type(TYPE, "1", {"type": "object"})
        task_id = client.create_task(TYPE, {"n": 1})
        server.faults.latency = 1.0  # every answer a second late
        started = time.monotonic()
        waited: list[float] = []

        def backing_off() -> Any:
            yield Sleep(5.0)
            waited.append(time.monotonic() - started)
            return "slept"

        assert client.run_together([client.calls.get_task(task_id), backing_off()], 2)[1]
        assert waited[0] < 0.5 and now[0] >= 1005.0


def test_an_unexpected_error_opening_a_connection_reaches_its_operation():
    """What opening raises beyond a network error (a host name too long to look up is a
    ``UnicodeError``) goes to the operation, as on a thread: the loop never waits for
    an operation whose connect thread died."""
    settings = TaskManagerConfig(
        api_url=f"https://{'a' * 64}.example/api", api_key="k", worker_id="w", retry_attempts=0
    )
    raised: list[BaseException] = []
    with TaskManagerClient(settings, http="stdlib") as client:
        with pytest.raises(UnicodeError):
            client.get_task(1)  # one call at a time, on this thread

        def run() -> None:
            try:
                client.run_together([client.calls.get_task(1)], 1)
            except BaseException as exc:  # whatever it is, the test reads it
                raised.append(exc)

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(5.0)
        assert not runner.is_alive() and isinstance(raised[0], UnicodeError)
        assert no_connection_out(client)


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


def _first(*parts: bytes) -> dict[str, Any]:
    """An answer preceded by ``parts`` (interim heads), then a second's wait."""
    return {"prelude": parts, "hang": 1.0}


@pytest.mark.parametrize(
    "late",
    [
        _first(EARLY_HINTS),
        _first(EARLY_HINTS[:10], EARLY_HINTS[10:30], EARLY_HINTS[30:]),  # in pieces
        _first(EARLY_HINTS.replace(b"\r\n", b"\n")),  # bare newlines, as Response reads them
        _first(EARLY_HINTS, b"HTTP/1.1 102 Processing\r\n\r\n"),
        # Written oddly, and skipped all the same by http.client's parse of a status line.
        _first(EARLY_HINTS.replace(b" 103", b"  103")),
        _first(EARLY_HINTS.replace(b" 103", b"\t103")),
        _first(EARLY_HINTS.replace(b"HTTP/1.1", b"HTTP/2")),
        _first(b" " + EARLY_HINTS),
        # The answer's own status line cut after "HTTP/1.1 2", its rest a second later.
        {"split_status": 1.0},
    ],
    ids=[
        "whole",
        "in-pieces",
        "bare-newlines",
        "two",
        "two-spaces",
        "tab",
        "http-2",
        "indented",
        "status-line-in-two-parts",
    ],
)
def test_an_answer_yet_to_begin_holds_no_other_operation(late: dict[str, Any]):
    """A 103 Early Hints then the answer a second later, or an answer whose status line
    comes in two parts a second apart: the other operations' answers and sleeps go on
    meanwhile (reading on blocking would hold them all), and the answer is read as the
    answer it is."""
    row = {"success": True, "data": {"items": [{"id": 1, "type": "T", "status": "pending"}]}}
    with ScriptedServer() as scripted:
        scripted.add("GET", "/tasks/1", Scripted(200, row, **late))
        scripted.add("GET", "/tasks/2", Scripted(200, row))
        settings = TaskManagerConfig(api_url=scripted.url, api_key="k", worker_id="w")
        with TaskManagerClient(settings, http="stdlib") as client:
            assert client.get_task(2).id == 1  # a connection in the pool for each below
            started = time.monotonic()
            when: dict[str, float] = {}

            def read(task_id: int) -> Any:
                task = yield from client.calls.get_task(task_id)
                when[f"read {task_id}"] = time.monotonic() - started
                return task.id

            def nap() -> Any:
                yield Sleep(0.3)
                when["nap"] = time.monotonic() - started

            assert client.run_together([read(1), read(2), nap()], 3) == [1, 1, None]
            assert when["read 2"] < 0.6 and 0.3 <= when["nap"] < 0.6
            assert when["read 1"] >= 1.0 and no_connection_out(client)


def test_nothing_is_sent_after_an_interrupt_on_a_connection_opened_since():
    """A server that accepts again after a while: the connection an interrupted
    operation was waiting for opens after ``run_together`` has raised, and no request
    goes out on it (its answer, a granted claim, would reach nobody)."""
    received: list[bytes] = []

    def read(conn: socket.socket) -> None:
        conn.settimeout(3.0)
        with contextlib.suppress(OSError):
            if data := conn.recv(65536):
                received.append(data)

    def serve(listener: socket.socket) -> None:
        time.sleep(0.5)  # the server recovers: the queue drains
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=read, args=(listener.accept()[0],), daemon=True).start()

    with full_accept_queue() as listener:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        settings = TaskManagerConfig(
            api_url=f"http://127.0.0.1:{listener.getsockname()[1]}/api",
            api_key="k",
            worker_id="w",
            retry_attempts=0,
        )
        with TaskManagerClient(settings, http="stdlib") as client:

            def interrupted() -> Any:
                yield Sleep(0.1)
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                client.run_together([client.calls.claim_task(task_type_id=1), interrupted()], 2)
            assert client.unanswered("/tasks/claim") == 1
            deadline = time.monotonic() + 5.0
            while not client._transport.pool._idle and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.05)  # the connection opens, and goes to the pool unused
            time.sleep(0.3)
            assert received == [] and no_connection_out(client)


def test_an_interrupt_while_opened_connections_are_taken_leaves_none_out(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
):
    """Two connections opened meanwhile, handed to the loop together; the first one's
    operation is interrupted as it is moved on: the second's goes back too."""
    from taskmanager import stdlib_transport

    opened = stdlib_transport.Origin.connect
    attempts = iter(range(100))

    def connect(origin: Any, connection: Any) -> None:
        if next(attempts) == 0:
            raise ConnectionRefusedError(111, "refused at once")
        time.sleep(0.1)
        opened(origin, connection)

    monkeypatch.setattr(stdlib_transport.Origin, "connect", connect)
    settings = TaskManagerConfig(
        api_url=server.url, api_key=server.api_key, worker_id="w", retry_attempts=0
    )
    with TaskManagerClient(settings, http="stdlib") as client:  # no connection open yet

        def refused() -> Any:
            try:
                yield from client.calls.get_task(1)
            except TaskManagerConnectionError:
                raise KeyboardInterrupt from None  # Ctrl-C landing here

        def busy() -> Any:
            time.sleep(0.3)  # the loop's own work: both connect threads end meanwhile
            return None
            yield  # a generator

        with pytest.raises(KeyboardInterrupt):
            client.run_together([refused(), client.calls.get_task(1), busy()], 3)
        time.sleep(0.3)
        assert no_connection_out(client)


def test_what_an_attempt_given_up_had_read_is_not_read_into_the_next():
    """A status line that only looks interim (``1000``) fails the attempt at once, as on
    a thread, and the retry's answer is read whole, with nothing of the first before it."""
    row = {"success": True, "data": {"items": [{"id": 1, "type": "T", "status": "pending"}]}}
    odd = Scripted(200, row, prelude=(b"HTTP/1.1 1000 Odd\r\n\r\n",), hang=5.0)
    with ScriptedServer() as scripted:
        scripted.add("GET", "/tasks/1", odd, Scripted(200, row))
        settings = TaskManagerConfig(
            api_url=scripted.url,
            api_key="k",
            worker_id="w",
            timeout=1.0,
            retry_attempts=1,
            backoff_base=0.01,
        )
        with TaskManagerClient(settings, http="stdlib") as client:
            started = time.monotonic()
            assert client.run_together([client.calls.get_task(1)], 1)[0].id == 1
            assert time.monotonic() - started < 0.9  # not a timeout first
            assert len(scripted.calls("GET", "/tasks/1")) == 2
            assert no_connection_out(client)


def test_an_interrupt_while_the_request_is_written_gives_the_opened_connection_back(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
):
    from taskmanager import stdlib_transport

    written = stdlib_transport.Origin.head
    heads = iter(range(100))

    def head(origin: Any, *args: Any) -> bytes:
        if next(heads) == 1:  # the second: on the connection opened aside
            raise KeyboardInterrupt
        return written(origin, *args)

    monkeypatch.setattr(stdlib_transport.Origin, "head", head)
    settings = TaskManagerConfig(api_url=server.url, api_key=server.api_key, worker_id="w")
    with TaskManagerClient(settings, http="stdlib") as client:  # no connection open yet
        with pytest.raises(KeyboardInterrupt):
            client.run_together([client.calls.get_task(1)], 1)
        assert no_connection_out(client) and len(client._transport.pool._idle) == 1  # type: ignore[union-attr]


def test_hundreds_of_new_connections_at_once_all_end():
    """600 operations, each needing a new connection, to a port that refuses them at
    once: the connect threads all hand back (a blocking wake-up socket filled up after
    some 280 and deadlocked the loop)."""
    settings = TaskManagerConfig(
        api_url=f"http://127.0.0.1:{closed_port()}/api",
        api_key="k",
        worker_id="w",
        retry_attempts=0,
    )
    ended: list[Any] = []
    with TaskManagerClient(settings, http="stdlib") as client:

        def attempt() -> Any:
            try:
                yield from client.calls.get_task(1)
            except TaskManagerConnectionError:
                return "refused"
            return "answered"

        def run() -> None:
            ended.extend(client.run_together([attempt() for _ in range(600)], 600))

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(30.0)
        assert not runner.is_alive() and ended == ["refused"] * 600
        assert no_connection_out(client)


ENDLESS_SERVER = """
import socket, sys, threading
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(listener.getsockname()[1], flush=True)
chunk = b"400\\r\\n" + b" " * 0x400 + b"\\r\\n"
def answer(conn):
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        pass
while True:
    threading.Thread(target=answer, args=(listener.accept()[0],), daemon=True).start()
"""


def test_an_answer_that_never_ends_is_a_timeout_one_at_a_time_and_together():
    """A chunked body sent without a pause (by a process of its own, so that it never
    waits for the client's GIL) never meets a per-read timeout: the answer's own
    deadline (the read timeout after the request left) ends it, on a thread as on the
    shared one."""
    server = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        settings = TaskManagerConfig(
            api_url=f"http://127.0.0.1:{port}/api",
            api_key="k",
            worker_id="w",
            timeout=0.5,
            retry_attempts=0,
        )
        with TaskManagerClient(settings, http="stdlib") as client:
            alone = client.get_task
            together = lambda i: client.run_together([client.calls.get_task(i)], 1)  # noqa: E731
            for run in (alone, together):
                started = time.monotonic()
                with pytest.raises(TaskManagerTimeoutError):
                    run(1)
                assert time.monotonic() - started < 2.0
            assert no_connection_out(client)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 103 Early Hints\r\n" + b"Link: </a.css>\r\n" * 150 + b"\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["150-headers", "a-70-KB-line"],
)
def test_an_interim_head_over_the_limits_fails_as_one_call_at_a_time_does(interim: bytes):
    row = {"success": False, "error": "after the interim answer"}
    with ScriptedServer() as scripted:
        scripted.add("GET", "/tasks/1", Scripted(500, row, prelude=(interim,)))
        settings = TaskManagerConfig(
            api_url=scripted.url, api_key="k", worker_id="w", retry_attempts=0
        )
        with TaskManagerClient(settings, http="stdlib") as client:
            with pytest.raises(TaskManagerConnectionError) as alone:
                client.get_task(1)
            with pytest.raises(TaskManagerConnectionError) as together:
                client.run_together([client.calls.get_task(1)], 1)
            assert str(together.value) == str(alone.value)
            assert no_connection_out(client)
