"""What operators ask of a bridge: status, health, dead outbox rows, pruning, type
registration. The CLI, the metrics collector and the dashboard all go through
``Operations``; none of them touches the store or the daemon's state keys.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from taskmanager import TaskManagerClient
from taskmanager.redact import mask_url
from taskmanager.validation import check_schema, check_type_name

from ..config import BridgeConfig
from ..daemon.delivery import Outcome, apply_outcome, deliver
from ..daemon.server_contact import RATE_LIMITED_KEY, Contact
from ..errors import BridgeError, SchemaError
from ..models import (
    OUTBOX_STATUSES,
    TASK_STATUSES,
    LocalTask,
    OutboxEntry,
    OutboxStatus,
    QueueCounts,
    TaskDetail,
)
from ..payloads import validated
from ..storage import (
    CLAIM_PLAN_KEY,
    CONTACT_KEY,
    FIX_COMMAND,
    FOREIGN_CLAIMS_KEY,
    LAST_CONTACT_KEY,
    LAST_TICK_KEY,
    WORKER_ID_KEY,
    Store,
    display_url,
    normalise_url,
    open_store,
)
from ..times import from_iso, iso
from .inspection import TaskRef, WorkerView, worker_views


@dataclass(frozen=True)
class Snapshot:
    """The queue and the daemon's last known state, read at one moment."""

    database: str
    now: datetime
    counts: QueueCounts
    worker_id: str | None
    last_contact: datetime | None
    contact: Contact | None  # None: no daemon has run on this database
    last_tick: datetime | None
    claim_plans: dict[str, dict[str, Any]]  # per type: the daemon's last claim limit and why
    foreign_claims: int  # claims by our worker id this bridge did not make (shared id?)
    rate_limited_until: datetime | None = None  # the last 429's Retry-After end, if still ahead
    workers: list[WorkerView] = field(default_factory=list)  # the worker processes' own rows
    last_prune: datetime | None = None  # when prune last ran: an empty queue may be a pruned one

    @property
    def outage_since(self) -> datetime | None:
        return self.contact.since if self.contact and self.contact.state == "outage" else None

    @property
    def auth_failed(self) -> bool:
        return self.contact is not None and self.contact.state == "auth_failed"

    @property
    def oldest_pending_age(self) -> float | None:
        oldest = self.counts.oldest_pending_outbox
        return (self.now - oldest).total_seconds() if oldest else None

    def to_json(self) -> dict[str, Any]:
        """What ``status --json`` prints (a stable shape, see docs/OPERATIONS.md)."""
        tasks: dict[str, dict[str, int]] = {}
        for (task_type, status), count in sorted(self.counts.tasks.items()):
            tasks.setdefault(task_type, dict.fromkeys(TASK_STATUSES, 0))[status] = count
        return {
            "database": self.database,
            "worker_id": self.worker_id,
            "tasks": tasks,
            "outbox": {s: self.counts.outbox.get(s, 0) for s in OUTBOX_STATUSES},
            "oldest_pending_outbox_age_seconds": self.oldest_pending_age,
            "last_contact": iso(self.last_contact),
            "outage_since": iso(self.outage_since),
            "in_outage": self.outage_since is not None,
            "contact": {
                "state": self.contact.state if self.contact else "unknown",
                "since": iso(self.contact.since) if self.contact else None,
                "reason": self.contact.reason if self.contact else "",
            },
            "claim_limits": self.claim_plans,
            "foreign_claims": self.foreign_claims,
            "rate_limited_until": iso(self.rate_limited_until),
            "workers": [worker.to_json() for worker in self.workers],
            "last_prune": iso(self.last_prune),
        }


@dataclass(frozen=True)
class RunningTask:
    """A task a worker holds now: how long it has run and how much remote lease is left."""

    id: int
    remote_id: int | None
    type: str
    progress: int
    locked_by: str | None
    age_seconds: float | None
    lease_left_seconds: float | None  # None: a local-only task (no remote lease)


@dataclass(frozen=True)
class Throughput:
    """Tasks finished in one minute: ``start`` is the minute's beginning."""

    start: datetime
    done: int
    failed: int  # failed or expired


@dataclass(frozen=True)
class TypeThroughput:
    """One type's tasks finished over the last ``minutes``."""

    task_type: str
    done: int
    failed: int  # failed or expired
    minutes: int


@dataclass(frozen=True)
class DashboardView:
    """Everything the dashboard shows, read at one moment."""

    snapshot: Snapshot
    running: list[RunningTask]
    dead: list[OutboxEntry]
    throughput: list[Throughput]
    failures: list[LocalTask] = field(default_factory=list)
    by_type: list[TypeThroughput] = field(default_factory=list)


@dataclass(frozen=True)
class Registration:
    """What became of one type definition given to ``register_types``."""

    name: str
    version: str
    outcome: Outcome


def _ahead(moment: datetime | None, now: datetime) -> datetime | None:
    return moment if moment is not None and moment > now else None


def _seconds_between(start: datetime | None, end: datetime) -> float | None:
    return (end - start).total_seconds() if start is not None else None


def sqlite_file_missing(db_url: str) -> Path | None:
    """The SQLite file the URL names when it does not exist (opening it would create
    an empty one), else None."""
    url = normalise_url(db_url)
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///") :].split("?", 1)[0])
    return None if path.exists() else path


def upgrade_command(config_path: str | None, db_url: str | None) -> str:
    """``taskmanager-bridge db upgrade`` with the options that chose this database, so
    that the hint upgrades the database the failed command used.

    The hint is printed: a password in ``db_url`` is shown as ``***`` (the operator
    puts it back), and each value is quoted for the shell when it needs it.
    """
    options = ""
    if config_path:
        options += f" --config {shlex.quote(config_path)}"
    if db_url:
        options += f" --db-url {shlex.quote(mask_url(db_url))}"
    return FIX_COMMAND.replace(" db upgrade", f"{options} db upgrade")


PRUNE_KEY = "last_prune"  # when prune last ran (ISO): status tells pruned from never used
THROUGHPUT_ROWS = 100_000  # most finished tasks read for the chart (a dashboard, not a report)
RUNNING_ROWS = 10_000  # most running tasks read to count each worker's


class Operations:
    """The operator's view of one bridge database."""

    def __init__(self, store: Store, config: BridgeConfig) -> None:
        self.store = store
        self.config = config

    @classmethod
    @contextmanager
    def open(cls, config: BridgeConfig) -> Iterator[Operations]:
        """The operations of an existing queue database (never creates an empty file)."""
        missing = sqlite_file_missing(config.db_url)
        if missing is not None:
            raise SchemaError(f"no queue database at {missing}. Create it with: {FIX_COMMAND}")
        store = open_store(config.db_url, config.busy_timeout_seconds)
        try:
            yield cls(store, config)
        finally:
            store.close()

    @property
    def database(self) -> str:
        return display_url(normalise_url(self.config.db_url))

    def snapshot(self, now: datetime) -> Snapshot:
        state = self.store.get_state
        return Snapshot(
            database=self.database,
            now=now,
            counts=self.store.counts(),
            worker_id=state(WORKER_ID_KEY),
            last_contact=from_iso(state(LAST_CONTACT_KEY)),
            contact=Contact.from_json(state(CONTACT_KEY)),
            last_tick=from_iso(state(LAST_TICK_KEY)),
            foreign_claims=int(state(FOREIGN_CLAIMS_KEY) or 0),
            rate_limited_until=_ahead(from_iso(state(RATE_LIMITED_KEY)), now),
            last_prune=from_iso(state(PRUNE_KEY)),
            claim_plans={
                task_type: json.loads(plan)
                for task_type, plan in sorted(self.store.states_with_prefix(CLAIM_PLAN_KEY).items())
            },
            workers=self.workers(now),
        )

    def health_problems(
        self,
        now: datetime,
        max_outbox_age: float,
        max_tick_age: float,
        require_contact: float | None = None,
    ) -> list[str]:
        """Why the bridge is unhealthy (an empty list when it is healthy).

        ``require_contact``: also unhealthy while the server has not answered for that
        many seconds, so that a probe tells "up and serving" from "up and cut off". The
        silence counts from the last answer, or from the daemon's start when it has had
        none since (the contact state is reset at each start, and each change of state
        is a time the server was heard from or given up on).
        """
        snapshot = self.snapshot(now)
        problems = []
        contact, heard = snapshot.contact, snapshot.last_contact
        if require_contact is not None and contact is not None:
            silent = (now - max(contact.since, heard or contact.since)).total_seconds()
            if silent > require_contact:
                last = f"{(now - heard).total_seconds():.0f} s ago" if heard else "never"
                problems.append(
                    f"the server has not answered for {silent:.0f} s "
                    f"(limit {require_contact:g} s; last answer: {last})"
                )
        age = snapshot.oldest_pending_age
        if age is not None and age > max_outbox_age:
            problems.append(
                f"oldest pending outbox row is {age:.0f} s old (limit {max_outbox_age:g} s)"
            )
        if snapshot.auth_failed and snapshot.contact is not None:
            problems.append(f"the server refuses the API key: {snapshot.contact.reason}")
        if snapshot.foreign_claims:
            problems.append(
                f"{snapshot.foreign_claims} claim(s) by worker id {snapshot.worker_id} were not "
                "made by this bridge: give each bridge its own TASKMANAGER_WORKER_ID"
            )
        if snapshot.last_tick is None:
            problems.append("the daemon has never run on this database")
        else:
            idle = (now - snapshot.last_tick).total_seconds()
            if idle > max_tick_age:
                problems.append(
                    f"the daemon last ticked {idle:.0f} s ago (limit {max_tick_age:g} s)"
                )
        return problems

    # -- tasks and workers, one by one ---------------------------------------------------
    def tasks(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        since: datetime | None = None,
        search: str | None = None,
        limit: int = 50,
    ) -> list[LocalTask]:
        """Tasks newest first (see ``Store.task_list`` for what ``search`` matches)."""
        if status is not None and status not in TASK_STATUSES:
            raise BridgeError(f"status: one of {', '.join(TASK_STATUSES)}, got {status!r}")
        return self.store.task_list(
            status=status, task_type=task_type, since=since, search=search, limit=limit
        )

    def task(self, ref: TaskRef) -> TaskDetail:
        """One task whole, by local or remote id; ``BridgeError`` naming it when missing."""
        detail = self.store.task_detail(task_id=ref.task_id, remote_id=ref.remote_id)
        if detail is None:
            raise BridgeError(f"no {ref} in {self.database}")
        return detail

    def workers(self, now: datetime) -> list[WorkerView]:
        """The worker processes, latest beat first: alive, lost (no beat for a while:
        killed or hung) or stopped, with the tasks their slots hold."""
        running = self.store.running_tasks(RUNNING_ROWS)
        beat = self.config.worker_beat_seconds
        return worker_views(self.store.worker_list(), running, now, beat)

    def recent_failures(self, limit: int = 10) -> list[LocalTask]:
        """The newest failed tasks, with the reason each failed."""
        return self.store.task_list(status="failed", limit=limit)

    def outbox(self, status: OutboxStatus | None = None, limit: int = 100) -> list[OutboxEntry]:
        return self.store.outbox_entries(status, limit)

    def running(self, now: datetime, limit: int = 20) -> list[RunningTask]:
        """Tasks a worker holds, longest running first, with their age and lease left."""
        return [
            RunningTask(
                id=task.id,
                remote_id=task.remote_id,
                type=task.type,
                progress=task.progress,
                locked_by=task.locked_by,
                age_seconds=_seconds_between(task.started_at, now),
                lease_left_seconds=(
                    (task.lease_expires_at - now).total_seconds()
                    if task.lease_expires_at is not None
                    else None
                ),
            )
            for task in self.store.running_tasks(limit)
        ]

    def recent_dead(self, limit: int = 10) -> list[OutboxEntry]:
        """The newest dead outbox rows, with their reasons."""
        return self.store.latest_dead(limit)

    def throughput(self, now: datetime, minutes: int = 15) -> list[Throughput]:
        """Tasks finished per minute over the last ``minutes`` (oldest minute first;
        the last one is the minute in progress)."""
        current = now.replace(second=0, microsecond=0)
        starts = [current - timedelta(minutes=m) for m in range(minutes - 1, -1, -1)]
        done = dict.fromkeys(starts, 0)
        failed = dict.fromkeys(starts, 0)
        for finished, status in self.store.finished_since(starts[0], THROUGHPUT_ROWS):
            minute = finished.replace(second=0, microsecond=0)
            if minute in done:
                counter = done if status == "done" else failed
                counter[minute] += 1
        return [Throughput(start, done[start], failed[start]) for start in starts]

    def throughput_by_type(self, now: datetime, minutes: int = 60) -> list[TypeThroughput]:
        """Each type's tasks finished over the last ``minutes``, busiest first."""
        counts: dict[str, list[int]] = {}
        for task_type, status, count in self.store.finished_by_type(
            now - timedelta(minutes=minutes)
        ):
            counts.setdefault(task_type, [0, 0])[0 if status == "done" else 1] += count
        found = [TypeThroughput(t, done, failed, minutes) for t, (done, failed) in counts.items()]
        return sorted(found, key=lambda row: (-(row.done + row.failed), row.task_type))

    def dashboard(self, now: datetime) -> DashboardView:
        """What the dashboard page shows."""
        return DashboardView(
            snapshot=self.snapshot(now),
            running=self.running(now),
            dead=self.recent_dead(),
            throughput=self.throughput(now),
            failures=self.recent_failures(),
            by_type=self.throughput_by_type(now),
        )

    def refuse_unless_dead(self, row_ids: Sequence[int]) -> None:
        """Raise naming every id that is not a dead row (missing, or in another state):
        retry and discard act on dead rows only, and a typo must not pass for "0 rows"."""
        problems = []
        for row_id in row_ids:
            entry = self.store.outbox_entry(row_id)
            if entry is None:
                problems.append(f"row {row_id} does not exist")
            elif entry.status != "dead":
                problems.append(f"row {row_id} is {entry.status}, not dead")
        if problems:
            raise BridgeError(
                "; ".join(problems) + " (only dead rows can be retried or discarded; "
                "see: outbox list --status dead)"
            )

    def retry_dead(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """Make dead rows (all, or these) pending again, due now; ids that are not dead
        rows are refused (``BridgeError``) and nothing changes."""
        if row_ids is not None:
            self.refuse_unless_dead(row_ids)
        return self.store.requeue_outbox(row_ids, now)

    def discard_dead(self, row_ids: Sequence[int] | None, now: datetime) -> int:
        """End dead rows (all, or these) as superseded, keeping their reason; ids that
        are not dead rows are refused (``BridgeError``) and nothing changes."""
        if row_ids is not None:
            self.refuse_unless_dead(row_ids)
        return self.store.discard_outbox(row_ids, now)

    def prune(self, older_than: timedelta, now: datetime) -> tuple[int, int, int]:
        """Delete settled rows, finished tasks and worker rows silent longer than the age;
        (rows, tasks, workers). The time it ran is kept: an empty queue may be a pruned one."""
        rows, finished = self.store.prune(now - older_than)
        workers = self.store.prune_workers(now - older_than)
        self.store.set_state(PRUNE_KEY, now.isoformat(), now)
        return rows, finished, workers

    def register_types(
        self, definitions: Sequence[dict[str, Any]], client: TaskManagerClient, now: datetime
    ) -> Iterator[Registration]:
        """Queue each registration (offline validation starts at once) and send it now.

        Stops after the first refusal; what could not be sent stays in the outbox for
        the daemon.
        """
        for item in definitions:
            name, version = str(item["name"]), str(item["version"])
            validated(partial(check_type_name, name))  # never claimable: not even queued
            schema = validated(partial(check_schema, item["param_schema"]))
            entry = self.store.queue_register_type(name, version, schema, now)
            outcome = deliver(entry, client)
            final = apply_outcome(self.store, entry, outcome, now)
            if final is not None:
                self.store.settle_outbox(entry.id, final, outcome.reason, now)
            yield Registration(name, version, outcome)
