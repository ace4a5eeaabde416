"""The storage room: every query, connection and schema matter of the bridge.

Other rooms import from this package only (an import-linter contract keeps it so),
never from its modules, but for ``migrations`` (Alembic, imported only when a schema
is created or upgraded). Inside: ``engine`` (URLs, engines, errors, the schema check),
``sqlite_locking`` (how a writer waits for SQLite's lock), ``connector`` (connections
and transactions), ``schema`` (the tables), ``revisions`` and ``migrations``,
``patience`` (waiting out database trouble), ``changes`` (wake-ups on commits), and
the queries, grouped by who calls them: ``task_queue`` (the worker's calls),
``claimed_tasks`` (the daemon's claims and reaping), ``task_reads``, ``outbox``,
``state``, ``views``, ``pruning``. ``Store`` is all the queries over one connector:
each public method is one transaction; times are passed in (``now``) so callers, and
tests, control the clock.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from .changes import ChangeWatch
from .claimed_tasks import ClaimQueries
from .connector import Connector
from .engine import display_url, normalise_url, open_engine
from .outbox import OutboxQueries, SettledRow
from .patience import GaveUp, Patience, SchemaGone
from .pruning import PruneQueries
from .revisions import FIX_COMMAND, check_schema
from .sqlite_locking import POOL_OVERFLOW
from .state import (
    CLAIM_PLAN_KEY,
    CONTACT_KEY,
    FOREIGN_CLAIMS_KEY,
    LAST_CONTACT_KEY,
    LAST_TICK_KEY,
    WORKER_ID_KEY,
    ClaimIntent,
    StateQueries,
    ThrottledState,
)
from .statements import Prepared
from .task_queue import NewTask, WorkerQueries, Write
from .task_reads import TaskReads
from .views import ViewQueries
from .workers import WorkerRegistry


class Store(
    WorkerQueries,
    ClaimQueries,
    TaskReads,
    OutboxQueries,
    StateQueries,
    ViewQueries,
    PruneQueries,
    WorkerRegistry,
):
    """All reads and writes of the local queue, one transaction per method."""

    def __init__(self, engine: Engine) -> None:
        self.db = Connector(engine)
        self.sql = Prepared(engine.dialect)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def is_postgresql(self) -> bool:
        return self.db.is_postgresql

    def close(self) -> None:
        self.db.close()


def open_store(db_url: str, busy_timeout: float) -> Store:
    """The store of a database that carries the current schema (``SchemaError`` if not)."""
    engine = open_engine(db_url, busy_timeout=busy_timeout)
    try:
        check_schema(engine)
    except Exception:
        engine.dispose()
        raise
    return Store(engine)


__all__ = [
    "CLAIM_PLAN_KEY",
    "CONTACT_KEY",
    "FIX_COMMAND",
    "FOREIGN_CLAIMS_KEY",
    "LAST_CONTACT_KEY",
    "LAST_TICK_KEY",
    "POOL_OVERFLOW",
    "WORKER_ID_KEY",
    "ChangeWatch",
    "ClaimIntent",
    "Connector",
    "GaveUp",
    "NewTask",
    "Patience",
    "SchemaGone",
    "SettledRow",
    "Store",
    "ThrottledState",
    "Write",
    "check_schema",
    "display_url",
    "normalise_url",
    "open_store",
]
