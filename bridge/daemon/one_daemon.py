"""One daemon per queue and remote worker id: the role is a lease in ``bridge_state``.

Two daemons on one queue with one worker id would claim for each other and reset each
other's contact state. So a daemon takes the role before it writes anything: the row
``daemon:<worker id>`` names its holder (host, pid, since) and how long the lease lasts;
the holder renews it as it ticks. A second daemon is refused with that holder's name,
unless the holder is gone: its lease lapsed (a host that died), or it was this host and
its process no longer exists (a daemon killed and restarted at once). Separate worker
ids on one PostgreSQL queue hold separate roles.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import BridgeError
from ..storage import Store
from ..times import ago, from_iso

LEASE_SECONDS = 30.0  # how long a holder that stopped ticking keeps the role, at least
RENEWALS_PER_LEASE = 3  # renewed this often within a lease (from the reap tick)
KEY_PREFIX = "daemon:"
_ME = uuid.uuid4().hex  # this process: a host name and a pid are not enough (containers)


class DaemonAlreadyRunning(BridgeError):
    """Another daemon holds this queue and worker id (its host, pid and start named)."""


def _key(worker_id: str) -> str:
    """The state row's key (at most 64 characters: a long id is hashed)."""
    key = KEY_PREFIX + worker_id
    return key if len(key) <= 64 else KEY_PREFIX + hashlib.sha256(worker_id.encode()).hexdigest()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str  # ISO
    until: str  # ISO: the lease's end
    process: str = ""  # a random id of the holding process

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a row names (keys a newer version added are passed over), or None
        for a row no version wrote: then nobody holds the role."""
        try:
            found = json.loads(text)
            return cls(**{name: found[name] for name in cls.__dataclass_fields__ if name in found})
        except (ValueError, TypeError, KeyError):
            return None

    def is_me(self) -> bool:
        return self.process == _ME

    def gone(self, now: datetime) -> bool:
        until = from_iso(self.until)
        if until is None or until <= now:
            return True
        return self.host == socket.gethostname() and not _process_exists(self.pid)


class DaemonRole:
    """This daemon's hold on its queue and worker id (``renew`` from every reap tick:
    the lease lasts ``RENEWALS_PER_LEASE`` reap intervals, at least ``LEASE_SECONDS``)."""

    def __init__(self, store: Store, worker_id: str, reap_interval_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.key = _key(worker_id)
        self.lease = max(LEASE_SECONDS, RENEWALS_PER_LEASE * reap_interval_seconds)
        self.since: datetime | None = None
        self.renewed: datetime | None = None

    def _mine(self, now: datetime) -> str:
        assert self.since is not None
        until = now + timedelta(seconds=self.lease)
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.since.isoformat(),
                "until": until.isoformat(),
                "process": _ME,
            }
        )

    def take(self, now: datetime) -> None:
        """Hold the role, or raise ``DaemonAlreadyRunning`` naming the daemon that does."""
        self.since = now
        self._hold(now)

    def renew(self, now: datetime) -> None:
        """Keep the role (at most every third of the lease); raises
        ``DaemonAlreadyRunning`` when another daemon took it meanwhile (this one stalled
        past its lease)."""
        every = self.lease / RENEWALS_PER_LEASE
        if self.renewed is not None and (now - self.renewed).total_seconds() < every:
            return
        self._hold(now)

    def release(self) -> None:
        """Give the role up at a clean stop, if it is still this daemon's: the next
        daemon starts at once."""
        if self.since is not None:
            self.store.release_role(self.key, _held_by_me)

    def _hold(self, now: datetime) -> None:
        mine = self._mine(now)

        def may_take(current: str) -> bool:
            holder = Holder.parse(current)
            return holder is None or holder.is_me() or holder.gone(now)

        held = self.store.hold_role(self.key, mine, now, may_take)
        if held != mine:
            holder = Holder.parse(held)
            assert holder is not None
            raise DaemonAlreadyRunning(
                f"another daemon runs on this queue with worker id {self.worker_id}: pid "
                f"{holder.pid} on {holder.host}, since {ago(from_iso(holder.since), now)} "
                "(stop it first, or give this one its own TASKMANAGER_WORKER_ID)"
            )
        self.renewed = now


def _held_by_me(current: str) -> bool:
    holder = Holder.parse(current)
    return holder is not None and holder.is_me()
