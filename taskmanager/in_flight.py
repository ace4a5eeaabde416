"""Several operations' requests in flight at once from one thread, on ``http.client``.

Why: the bridge's daemon keeps up to 16 claims and as many deliveries in flight.
With a thread each, every answer wakes its own thread, which then waits its turn
for the GIL behind the others woken with it: on a 2-core machine shared with the
workers those hand-offs cost more CPU than the requests themselves (several
wake-ups a task at 50-150 us each, measured in docs/BENCHMARKS.md). Here the
calling thread sends each operation's request, waits in one ``select`` for
whichever answers come first, and reads each as it arrives, so one wake-up may
bring several answers and no thread ever waits for another.

The operations are ``Steps`` (``Calls.claim_task(...)``, or a caller's own generator
that ``yield from``s them and does its local work between requests): they run on
this thread, between their requests, exactly as ``TaskManagerClient`` would run
them one at a time, with the same retries, waits, answers and errors. A ``Sleep``
(a retry's back-off, a rate limit's wait) parks only its own operation.

A request that needs a new connection (the pool keeps them open between requests,
so at start and after an outage) waits for a thread of its own to open it (name
lookup, connect, TLS handshake), which then wakes the loop to send it: a server whose
connects hang (a host that is down, a firewall that drops them) costs each operation
its own connect timeout, side by side, as on threads, not one after another. Nothing
is sent after an interrupt.

A readable socket is not yet an answer: what is there is read without waiting.
Under TLS the server's own records (session tickets) wake the select too, and
interim answers (102, 103) come before the answer: nothing yet, interim heads only,
or an answer's status line not yet whole, means wait on. What stays blocking:
sending a request on an open connection, and reading the rest of an answer once its
status line is in (an answer is a few hundred bytes, in one or two segments; a
server that sends half an answer and stalls, or trickles it, holds every operation
here until that request's deadline, the read timeout after it left, where it would
hold only its own thread). No answer
within the read timeout after the request left ends that request as a timeout, as
on a thread; an answer that came while the thread was busy past that time (an
operation's own work) is read first.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

from .exceptions import TaskManagerConfigError
from .exchange import Drive, Send, Sleep, Steps
from .protocol import Answer, Outcome
from .stdlib_transport import MAX_HEADERS, MAX_LINE, StdlibTransport

_R = TypeVar("_R")
_WAKE = object()  # the selector's mark for the connect threads' wake-up socket


class _Operation(Generic[_R]):
    """One operation's place: its steps, and the request it has in flight, if any."""

    __slots__ = ("connection", "deadline", "drive", "fileno", "first", "index", "send")

    def __init__(self, index: int, steps: Steps[_R]) -> None:
        self.index = index
        self.drive = Drive(steps)
        self.send: Send | None = None
        self.connection: http.client.HTTPConnection | None = None
        self.fileno = -1
        self.deadline = 0.0
        self.first = b""  # the answer's first bytes, kept while waiting for more


def run_together(
    transport: StdlibTransport,
    operations: Sequence[Steps[_R]],
    width: int,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[_R]:
    """Every operation's result, in order, with at most ``width`` under way at once
    (the next starts as one ends); the first exception is raised once all ended,
    as ``Fanout.run`` does on threads. ``clock`` times the operations' sleeps (the
    client's, so that a test's fake clock and sleep go together); requests' time
    limits are always on the real one."""
    return _Together(transport, operations, max(1, width), clock).run()


class _Together(Generic[_R]):
    def __init__(
        self,
        transport: StdlibTransport,
        operations: Sequence[Steps[_R]],
        width: int,
        clock: Callable[[], float],
    ) -> None:
        self.transport = transport
        operations = list(operations)  # any iterable, as on the other transports
        self.waiting = operations[::-1]  # popped from the end: in order
        self.count = len(operations)
        self.width = width
        self.clock = clock
        self.results: list[_R | None] = [None] * len(operations)
        self.errors: list[BaseException | None] = [None] * len(operations)
        self.sleeping: list[tuple[float, int, _Operation[_R]]] = []
        self.selector = selectors.DefaultSelector()
        self.in_flight: dict[int, _Operation[_R]] = {}  # by the connection's file number
        self.under_way = 0
        # Requests waiting for a connect thread to open their connection, and what the
        # threads opened (or raised), handed back under the lock with a wake-up byte.
        self.opening: dict[_Operation[_R], Send] = {}
        self._opened: list[tuple[_Operation[_R], http.client.HTTPConnection | BaseException]] = []
        self._opened_lock = threading.Lock()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._over = False

    def run(self) -> list[_R]:
        if self.transport.closed:
            for steps in self.waiting:
                steps.close()
            raise TaskManagerConfigError("the client is closed")
        try:
            while self.waiting or self.under_way:
                self._start_more()
                if self.under_way:
                    self._wait()
        except BaseException:
            self._abandon()
            raise
        finally:
            with self._opened_lock:
                self._over = True  # a thread still opening gives back what it opens
            self.selector.close()
            if self._wake is not None:
                for end in self._wake:
                    end.close()
        for error in self.errors:
            if error is not None:
                raise error
        return self.results  # type: ignore[return-value]  # every slot filled, none raised

    def _start_more(self) -> None:
        """Start operations while there is room: in a loop, not by recursion, since
        thousands may end at once without a request (a push's chains after a stop)."""
        while self.waiting and self.under_way < self.width:
            index = self.count - len(self.waiting)
            self.under_way += 1
            self._advance(_Operation(index, self.waiting.pop()))

    def _advance(self, operation: _Operation[_R]) -> None:
        """Run an operation up to its next request or sleep (sending the request), or to
        its end; a request that cannot be sent is answered at once with its outcome."""
        while True:
            try:
                step = operation.drive.next()
            except Exception as exc:  # the operation's own error: kept for the end
                self._ended(operation, error=exc)
                return
            if step is None:
                self._ended(operation)
                return
            if isinstance(step, Sleep):
                wake_at = self.clock() + step.seconds
                heapq.heappush(self.sleeping, (wake_at, operation.index, operation))
                return
            with operation.drive.sending():
                started = self.transport.start(step, open_new=False)
                if started is None:
                    self._send_aside(operation, step)
                    return
                if isinstance(started, http.client.HTTPConnection):
                    self._send_off(operation, step, started)
                    return
                operation.drive.reply = started

    def _send_aside(self, operation: _Operation[_R], send: Send) -> None:
        """Send ``send`` once a thread of its own has opened a new connection for it."""
        if self._wake is None:
            self._wake = socket.socketpair()
            for end in self._wake:  # a full buffer must never block a connect thread
                end.setblocking(False)
            self.selector.register(self._wake[0], selectors.EVENT_READ, _WAKE)
        threading.Thread(
            target=self._open, args=(operation,), daemon=True, name="taskmanager-connect"
        ).start()
        self.opening[operation] = send  # once started (what it hands back is read here)

    def _open(self, operation: _Operation[_R]) -> None:
        """On the connect thread: a new connection (or what opening it raised), handed
        to the loop, which sends the request on it. Nothing is sent from here: after an
        interrupt nobody would read the answer (a claim granted and lost)."""
        opened: http.client.HTTPConnection | BaseException
        try:
            opened = self.transport.pool.take()  # type: ignore[assignment]  # opens one
        except BaseException as exc:  # any: the operation must hear of it, or wait for good
            opened = exc
        with self._opened_lock:
            if not self._over:
                self._opened.append((operation, opened))
                if len(self._opened) == 1:  # one byte wakes the loop for all that follow
                    assert self._wake is not None
                    with contextlib.suppress(BlockingIOError):  # a byte is there already
                        self._wake[1].send(b"\0")
                return
        if isinstance(opened, http.client.HTTPConnection):  # nothing sent on it: keep it
            self.transport.pool.give_back(opened, reusable=True)

    def _take_opened(self) -> None:
        """Send the requests whose connections a connect thread opened, one at a time: an
        interrupt meanwhile leaves the rest to ``_abandon``."""
        assert self._wake is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake[0].recv(4096):
                pass
        while True:
            with self._opened_lock:
                if not self._opened:
                    return
                operation, opened = self._opened.pop(0)
            handed = False  # to ``start``, which gives it back whatever happens
            try:
                send = self.opening[operation]
                with operation.drive.sending():
                    handed = True
                    started = self.transport.start(send, opened=opened)
                    if isinstance(started, http.client.HTTPConnection):
                        self._send_off(operation, send, started)
                    else:
                        operation.drive.reply = started
            except BaseException:  # an interrupt: ``_abandon`` ends the operation
                if not handed and isinstance(opened, http.client.HTTPConnection):
                    self.transport.pool.give_back(opened, reusable=True)
                raise
            del self.opening[operation]
            if operation.connection is None:  # not sent: its outcome, or an error
                self._advance(operation)

    def _send_off(
        self, operation: _Operation[_R], send: Send, connection: http.client.HTTPConnection
    ) -> None:
        """Wait for the answer to the request just sent on ``connection``."""
        try:
            fileno = connection.sock.fileno()
            self.selector.register(fileno, selectors.EVENT_READ, operation)
        except BaseException:
            self.transport.pool.give_back(connection, reusable=False)
            raise
        operation.send, operation.connection, operation.fileno = send, connection, fileno
        operation.deadline = time.monotonic() + self.transport.pool.origin.read_timeout
        self.in_flight[fileno] = operation

    def _ended(self, operation: _Operation[_R], error: BaseException | None = None) -> None:
        if error is None:
            self.results[operation.index] = operation.drive.result
        else:
            self.errors[operation.index] = error
        self.under_way -= 1

    def _wait(self) -> None:
        """Until an answer comes in, a sleep ends or a request's time runs out; then
        move each such operation on. With nothing in flight the transport's own
        ``sleep`` waits for the first sleeper (a test's fake clock included)."""
        # On a clock and a sleep of the caller's (a test's: its sleep moves its clock) a
        # sleep is taken at once, as a thread takes it: waiting for it in ``select``
        # would wait in real time for a clock that only that sleep moves.
        faked = (
            self.sleeping
            and self.clock is not time.monotonic
            and self.transport.sleep is not time.sleep
        )
        if faked or (not self.in_flight and not self.opening):
            self.transport.sleep(max(0.0, self.sleeping[0][0] - self.clock()))
            self._advance(heapq.heappop(self.sleeping)[2])
            return
        ends = [op.deadline - time.monotonic() for op in self.in_flight.values()]
        if self.sleeping:
            ends.append(self.sleeping[0][0] - self.clock())
        # Only connects under way: their threads wake the loop (the connect timeout
        # bounds each).
        self._read_ready(max(0.0, min(ends)) if ends else None)
        awake = self.clock()
        while self.sleeping and self.sleeping[0][0] <= awake:
            self._advance(heapq.heappop(self.sleeping)[2])
        now = time.monotonic()
        late = [op for op in self.in_flight.values() if op.deadline <= now]
        if late:
            # The thread may have been busy past a deadline (an operation's own work: a
            # claim's record waiting for SQLite's lock): an answer that came meanwhile
            # is read, not taken for a timeout.
            self._read_ready(0.0)
            for operation in late:
                if operation.connection is not None and operation.deadline <= now:
                    self._timed_out(operation)

    def _read_ready(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            operation = key.data
            if operation is _WAKE:
                self._take_opened()
            elif operation.connection is not None:  # not answered earlier in this round
                self._answered(operation)

    def _answered(self, operation: _Operation[_R]) -> None:
        """Readable is not yet answered: under TLS the server's own records (TLS 1.3
        session tickets, after a new connection's handshake) wake the select too, and
        an interim answer (102, 103) comes before the answer. What is there is read
        without waiting; nothing yet, interim answers only, or a status line not yet
        whole, means wait on (``_past_interim``; reading on would hold every operation
        until this one's answer came)."""
        connection = operation.connection
        assert connection is not None and connection.sock is not None
        try:
            came = _read_now(connection.sock, self.transport.pool.origin.read_timeout)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:  # a TLS failure, a reset: said as a read on a thread says it
            self._reply(operation, partial(self.transport.fail, exc=exc))
            return
        first, wait = _past_interim(operation.first + came)
        if came and wait:  # at its end (b""), the answer is read (and found cut short)
            operation.first = first
            return
        operation.first = b""
        self._reply(
            operation, partial(self.transport.finish, first=first, deadline=operation.deadline)
        )

    def _timed_out(self, operation: _Operation[_R]) -> None:
        late = TimeoutError("no answer within the read timeout")
        self._reply(operation, partial(self.transport.fail, exc=late))

    def _reply(
        self,
        operation: _Operation[_R],
        outcome: Callable[[Send, http.client.HTTPConnection], Answer | Outcome],
    ) -> None:
        """Hand the operation what became of its request (``outcome`` of the request and
        its connection, which it gives back), and move it on."""
        send, connection = self._land(operation)
        with operation.drive.sending():
            operation.drive.reply = outcome(send, connection)
        self._advance(operation)

    def _land(self, operation: _Operation[_R]) -> tuple[Send, http.client.HTTPConnection]:
        """The operation's request and connection, no longer waited on."""
        send, connection = operation.send, operation.connection
        assert send is not None and connection is not None
        self.selector.unregister(operation.fileno)
        del self.in_flight[operation.fileno]
        operation.send = operation.connection = None
        operation.first = b""  # never read as the next request's
        return send, connection

    def _abandon(self) -> None:
        """An interrupt (KeyboardInterrupt, a cancel): every request still in flight
        counts as unanswered, its connection closed, its steps closed."""
        with self._opened_lock:
            self._over = True  # a connect thread still at work gives back what it opens
            opened, self._opened = self._opened, []
        for _, connection in opened:
            if isinstance(connection, http.client.HTTPConnection):  # nothing sent on it
                self.transport.pool.give_back(connection, reusable=True)
        for operation in list(self.in_flight.values()):
            _, connection = self._land(operation)
            self.transport.pool.give_back(connection, reusable=False)
            with contextlib.suppress(Exception):  # an operation's own cleanup failing
                operation.drive.steps.close()
        for operation in [*(entry[2] for entry in self.sleeping), *self.opening]:
            with contextlib.suppress(Exception):  # an operation's own cleanup failing
                operation.drive.steps.close()


def _past_interim(data: bytes) -> tuple[bytes, bool]:
    """An answer's first bytes without the whole interim heads (1xx but 101) they start
    with, and whether to wait for more: nothing else yet, a status line not yet whole
    (``Response`` would wait for the rest of it blocking, holding every operation), or
    an interim head not yet whole. Each line is judged as ``Response`` judges it: what
    it would refuse (a line over ``MAX_LINE`` bytes, more than ``MAX_HEADERS`` header
    lines, a bad status line) goes to it at once, to fail there as on a thread. An
    interim head over ``MAX_LINE`` bytes in all is handed over unfinished too (bounding
    what is kept and scanned again at each read): ``Response`` reads the rest of it
    blocking, which holds the other operations, at most until this one's deadline."""
    at = 0  # where what follows the whole interim heads starts
    while True:
        line_end = data.find(b"\n", at, at + MAX_LINE)
        if line_end < 0:  # the status line, not yet whole (or too long: handed over)
            return data[at:], len(data) - at <= MAX_LINE
        if not _is_interim(data[at:line_end]):
            return data[at:], False
        fields, start = 0, line_end + 1
        while True:  # the interim head's header lines, to its empty line
            line_end = data.find(b"\n", start, start + MAX_LINE)
            if line_end < 0:
                return data[at:], len(data) - at <= MAX_LINE
            if data[start : line_end + 1] in (b"\r\n", b"\n"):
                break
            if fields >= MAX_HEADERS:
                return data[at:], False
            fields, start = fields + 1, line_end + 1
        at = line_end + 1


def _is_interim(status_line: bytes) -> bool:
    """Whether ``Response`` skips ``status_line`` as an interim answer's: parsed as
    ``http.client`` parses it (any run of whitespace between the words, any ``HTTP/``
    version, the code as ``int`` reads it), so that a line written oddly (two spaces
    before the code, a tab, ``HTTP/2 103``) is told apart here exactly as there."""
    words = str(status_line, "iso-8859-1").split(None, 2)
    if len(words) < 2 or not words[0].startswith("HTTP/"):
        return False
    try:
        status = int(words[1])
    except ValueError:
        return False
    return 100 <= status < 200 and status != http.client.SWITCHING_PROTOCOLS


def _read_now(sock: socket.socket, timeout: float) -> bytes:
    """What the socket has for us now (``b""`` at its end); if nothing,
    ``BlockingIOError``, or ``SSLWantReadError`` when only TLS records of its own came.
    The socket waits again afterwards."""
    sock.settimeout(0.0)
    try:
        return sock.recv(65536)
    finally:
        sock.settimeout(timeout)
