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

What stays blocking: opening a new connection (the connect timeout bounds it; the
pool keeps them open between requests), and reading an answer once its first
bytes are in (an answer is a few hundred bytes, in one or two segments; a server
that sends half an answer and stalls holds every operation here for up to the read
timeout, where it would hold only its own thread). No answer within the read
timeout after the request left ends that request as a timeout, as on a thread.
"""

from __future__ import annotations

import heapq
import http.client
import selectors
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .exceptions import TaskManagerConfigError
from .exchange import Drive, Send, Sleep, Steps
from .stdlib_transport import StdlibTransport

_R = TypeVar("_R")


class _Operation(Generic[_R]):
    """One operation's place: its steps, and the request it has in flight, if any."""

    __slots__ = ("connection", "deadline", "drive", "index", "send")

    def __init__(self, index: int, steps: Steps[_R]) -> None:
        self.index = index
        self.drive = Drive(steps)
        self.send: Send | None = None
        self.connection: http.client.HTTPConnection | None = None
        self.deadline = 0.0


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
        self.waiting = list(reversed(operations))  # popped from the end: in order
        self.count = len(operations)
        self.width = width
        self.clock = clock
        self.results: list[_R | None] = [None] * len(operations)
        self.errors: list[BaseException | None] = [None] * len(operations)
        self.sleeping: list[tuple[float, int, _Operation[_R]]] = []
        self.selector = selectors.DefaultSelector()
        self.in_flight: dict[int, _Operation[_R]] = {}  # by the connection's file number
        self.under_way = 0

    def run(self) -> list[_R]:
        if self.transport.closed:
            for steps in self.waiting:
                steps.close()
            raise TaskManagerConfigError("the client is closed")
        try:
            self._start_more()
            while self.under_way:
                self._wait()
        except BaseException:
            self._abandon()
            raise
        finally:
            self.selector.close()
        for error in self.errors:
            if error is not None:
                raise error
        return self.results  # type: ignore[return-value]  # every slot filled, none raised

    def _start_more(self) -> None:
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
                started = self.transport.start(step)
                if not isinstance(started, http.client.HTTPConnection):
                    operation.drive.reply = started
                    continue
                sock = started.sock
                assert sock is not None  # start returns a connected connection
                operation.send, operation.connection = step, started
                operation.deadline = time.monotonic() + self.transport.pool.origin.read_timeout
                self.in_flight[sock.fileno()] = operation
                self.selector.register(sock, selectors.EVENT_READ, operation)
                return

    def _ended(self, operation: _Operation[_R], error: BaseException | None = None) -> None:
        if error is None:
            self.results[operation.index] = operation.drive.result
        else:
            self.errors[operation.index] = error
        self.under_way -= 1
        self._start_more()

    def _wait(self) -> None:
        """Until an answer comes in, a sleep ends or a request's time runs out; then
        move each such operation on. With nothing in flight the transport's own
        ``sleep`` waits for the first sleeper (a test's fake clock included)."""
        if not self.in_flight:
            wake_at, _, operation = heapq.heappop(self.sleeping)
            self.transport.sleep(max(0.0, wake_at - self.clock()))
            self._advance(operation)
            return
        now = time.monotonic()
        timeout = min(op.deadline for op in self.in_flight.values()) - now
        if self.sleeping:
            timeout = min(timeout, self.sleeping[0][0] - self.clock())
        for key, _ in self.selector.select(max(0.0, timeout)):
            self._answered(key.data)
        awake = self.clock()
        while self.sleeping and self.sleeping[0][0] <= awake:
            self._advance(heapq.heappop(self.sleeping)[2])
        now = time.monotonic()
        for operation in [op for op in self.in_flight.values() if op.deadline <= now]:
            self._timed_out(operation)

    def _answered(self, operation: _Operation[_R]) -> None:
        send, connection = self._land(operation)
        with operation.drive.sending():
            operation.drive.reply = self.transport.finish(send, connection)
        self._advance(operation)

    def _timed_out(self, operation: _Operation[_R]) -> None:
        send, connection = self._land(operation)
        late = TimeoutError("no answer within the read timeout")
        with operation.drive.sending():
            operation.drive.reply = self.transport.fail(send, connection, "timeout", late)
        self._advance(operation)

    def _land(self, operation: _Operation[_R]) -> tuple[Send, http.client.HTTPConnection]:
        """The operation's request and connection, no longer waited on."""
        send, connection = operation.send, operation.connection
        assert send is not None and connection is not None
        sock = connection.sock
        if sock is not None:
            self.selector.unregister(sock)
            del self.in_flight[sock.fileno()]
        else:  # closed under us (the client closed): find it by the operation
            fileno = next(f for f, op in self.in_flight.items() if op is operation)
            self.selector.unregister(fileno)
            del self.in_flight[fileno]
        operation.send = operation.connection = None
        return send, connection

    def _abandon(self) -> None:
        """An interrupt (KeyboardInterrupt, a cancel): every request still in flight
        counts as unanswered, its connection closed, its steps closed."""
        for operation in list(self.in_flight.values()):
            _, connection = self._land(operation)
            self.transport.pool.give_back(connection, reusable=False)
            operation.drive.steps.close()
        for _, _, operation in self.sleeping:
            operation.drive.steps.close()
