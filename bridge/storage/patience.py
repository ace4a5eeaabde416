"""Waiting out database trouble instead of obeying it (promise 6).

A locked, full, read-only or unreachable database is a passing cause: the call is
tried again after a back-off (doubling, capped), each cause is logged once (and
its end once), and the caller carries on when the cause goes. Only a schema that
changed under the process (dropped, downgraded, replaced by a newer version's) is
not outlived: it raises ``SchemaGone``, whose message names the fixing command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import BridgeError, DatabaseError, SchemaError
from .revisions import check_schema

T = TypeVar("T")
logger = logging.getLogger("bridge.worker")
FIRST_BACKOFF_SECONDS = 0.05


class SchemaGone(BridgeError):
    """The queue database's schema changed under the worker: nothing can succeed now."""


class GaveUp(BridgeError):
    """The caller's ``give_up`` event was set while the database was still in trouble."""


def _cause(error: DatabaseError) -> str:
    """The cause's sentence without the driver's detail: one log line per kind of trouble."""
    return str(error).split(" (", 1)[0]


class Patience:
    """Runs database calls until they succeed; shared by a worker's threads."""

    def __init__(
        self,
        check: Callable[[], None],
        backoff_max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.backoff_max = backoff_max_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._troubles: dict[str, float] = {}  # cause -> when it was first seen
        self.waits = 0

    @classmethod
    def for_engine(cls, engine: object, backoff_max_seconds: float) -> Patience:
        return cls(lambda: check_schema(engine), backoff_max_seconds)  # type: ignore[arg-type]

    def call(self, what: str, action: Callable[[], T], give_up: threading.Event) -> T:
        """``action()``, again and again while the database is in passing trouble.

        Raises ``GaveUp`` when ``give_up`` is set during the trouble, ``SchemaGone``
        when the schema is gone; any other error of ``action`` goes to the caller.
        """
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                value = action()
            except SchemaError as exc:
                raise SchemaGone(str(exc)) from exc
            except DatabaseError as exc:
                self._schema_still_there()
                self._noted(exc, what)
                if give_up.wait(backoff):
                    raise GaveUp(f"gave up {what}: {exc}") from exc
                backoff = min(self.backoff_max, backoff * 2)
                continue
            if self._troubles:
                self._recovered()
            return value

    def _schema_still_there(self) -> None:
        try:
            self._check()
        except SchemaError as exc:
            raise SchemaGone(str(exc)) from exc
        except DatabaseError:
            pass  # cannot even read it now: the same passing trouble

    def _noted(self, error: DatabaseError, what: str) -> None:
        cause = _cause(error)
        with self._lock:
            self.waits += 1
            if cause in self._troubles:
                return
            self._troubles[cause] = self.clock()
        logger.warning(
            "database trouble while %s: %s; waiting it out (retrying, backing off to %g s)",
            what,
            error,
            self.backoff_max,
        )

    def _recovered(self) -> None:
        with self._lock:
            troubles, self._troubles = self._troubles, {}
        now = self.clock()
        for cause, since in troubles.items():
            logger.warning("database usable again after %.1f s (was: %s)", now - since, cause)
