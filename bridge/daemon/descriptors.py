"""How many file descriptors the daemon may need, and making sure it may open them.

At its open-file limit every new socket or file fails with "Too many open files":
the daemon's requests to the server fail, it reports an outage of a healthy server
and stops claiming. What it may hold open at once is bounded by its settings: the
database pool, the connections to the server, the dashboard's connection cap, and
what the interpreter itself keeps open. At start the daemon raises its soft limit
to that need when the hard limit allows (what servers do: the soft limit is only a
default) and warns, with the numbers and how to raise it, when it is still short.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from ..config import BridgeConfig
from ..storage import POOL_OVERFLOW, normalise_url

logger = logging.getLogger("bridge.daemon")

POOL_SIZE = 5  # SQLAlchemy's default pool_size, which open_engine keeps
SQLITE_FILES_PER_CONNECTION = 2  # the database and its WAL (the SHM is one per process)
JOB_REQUESTS = 4  # the scheduler's jobs besides the fan-outs, one request at a time each
# The interpreter, its imports, stdio, the SHM, the scheduler's and the event loop's
# wake-ups, systemd's socket: 26 descriptors measured on a daemon just started (a few
# database and server connections included), with room to spare.
BASE_DESCRIPTORS = 64


@dataclass(frozen=True)
class DescriptorNeed:
    """What the daemon may hold open at once, by cause."""

    database: int
    server: int
    dashboard: int
    base: int = BASE_DESCRIPTORS

    @property
    def total(self) -> int:
        return self.database + self.server + self.dashboard + self.base

    def __str__(self) -> str:
        return (
            f"{self.total} (database pool {self.database}, connections to the server "
            f"{self.server}, dashboard {self.dashboard}, the process itself {self.base})"
        )


def descriptor_need(config: BridgeConfig, dashboard_connections: int) -> DescriptorNeed:
    """The most descriptors ``run`` with ``config`` may hold open at once, when its
    dashboard serves up to ``dashboard_connections`` (0: no dashboard)."""
    width = config.most_connections
    backend = make_url(normalise_url(config.db_url)).get_backend_name()
    per_connection = SQLITE_FILES_PER_CONNECTION if backend == "sqlite" else 1
    return DescriptorNeed(
        database=(POOL_SIZE + POOL_OVERFLOW) * per_connection,
        # A claim fan-out and a delivery fan-out, each ``width`` wide, and the other jobs.
        server=2 * width + JOB_REQUESTS,
        # Its connections and its listening socket.
        dashboard=dashboard_connections + 1 if dashboard_connections else 0,
    )


def ensure_descriptors(need: DescriptorNeed) -> int:
    """Raise the soft open-file limit to ``need`` when it is lower and the hard limit
    allows; warn when it stays lower. The soft limit in force afterwards.

    Raised to the need, not to the hard limit: descriptors numbered above 1024 break
    the libraries that still wait with ``select()``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = need.total
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a sandbox may refuse even within hard
            logger.debug("cannot raise the open-file limit to %d: %s", target, exc)
        else:
            logger.info("open-file limit raised from %d to %d (needed: %s)", soft, target, need)
            soft = target
    if soft < wanted:
        logger.warning(
            "open-file limit too low: the daemon may need %s file descriptors, its limit "
            "is %d (hard limit %s); at the limit its requests fail with 'Too many open "
            "files' and claiming stops. Raise it: LimitNOFILE=%d in the systemd unit, or "
            "`ulimit -n %d` in the shell that starts the daemon",
            need,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            wanted,
            wanted,
        )
    return soft
