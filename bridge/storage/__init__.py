"""The local queue's storage: every query of the bridge lives in this package.

``Connector`` owns connections and transactions; the queries are grouped by
the table they serve (``tasks``, ``outbox``, ``state``; ``pruning`` for both
tables at once), and ``Store`` is all
of them over one connector. Each public method is one transaction; times are
passed in (``now``) so callers, and tests, control the clock.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from ..database import check_schema, open_engine
from .connector import Connector
from .outbox import OutboxQueries
from .pruning import PruneQueries
from .state import StateQueries
from .statements import Prepared
from .tasks import TaskQueries
from .views import ViewQueries


class Store(TaskQueries, OutboxQueries, StateQueries, ViewQueries, PruneQueries):
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


__all__ = ["Connector", "Store", "open_store"]
