"""What the local queue hands out (plain frozen values, never live ORM rows), and the
names of the states its tasks and outbox rows go through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

# The states and kinds as types mypy checks; the tuples (for SQL and CLI choices) follow them.
TaskStatus = Literal["queued", "running", "done", "failed", "expired"]
FinishedTaskStatus = Literal["done", "failed", "expired"]
OutboxKind = Literal["complete", "fail", "progress", "create_task", "register_type"]
# superseded: the server's state made the row moot (alert on it); obsolete: a progress
# report made moot by its own task's end (routine).
OutboxStatus = Literal["pending", "delivered", "superseded", "obsolete", "dead"]
FinalOutboxStatus = Literal["delivered", "superseded", "obsolete", "dead"]

TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
FINISHED_TASK_STATUSES: tuple[FinishedTaskStatus, ...] = get_args(FinishedTaskStatus)
OUTBOX_KINDS: tuple[OutboxKind, ...] = get_args(OutboxKind)
OUTBOX_STATUSES: tuple[OutboxStatus, ...] = get_args(OutboxStatus)
FINAL_OUTBOX_STATUSES: tuple[FinalOutboxStatus, ...] = get_args(FinalOutboxStatus)
SETTLED_OUTBOX_STATUSES = ("delivered", "superseded", "obsolete")  # prunable; dead is kept


@dataclass(frozen=True)
class LocalTask:
    """A task in the local queue, as a worker sees it.

    ``locked_by`` + ``attempts`` are the claim token: ``complete``/``fail``/
    ``progress``/``heartbeat`` succeed only while the row still carries them.
    ``remote_id`` is ``None`` for a local-only task (``LocalQueue.enqueue``).
    """

    id: int
    type: str
    params: dict[str, Any]
    priority: int
    status: str
    attempts: int
    locked_by: str | None
    locked_until: datetime | None
    remote_id: int | None
    remote_attempt: int | None
    remote_worker_id: str | None
    lease_expires_at: datetime | None
    progress: int
    result: dict[str, Any] | None
    error: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def payload(self) -> dict[str, Any]:
        """The specification's hybrid pattern calls params ``payload``."""
        return self.params

    @property
    def is_remote(self) -> bool:
        return self.remote_id is not None

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> LocalTask:
        """From a row whose columns are in this class's field order (``TASK_COLUMNS``):
        the worker's hot path, without a name lookup per column."""
        if values[_PARAMS] is None or values[_METADATA] is None:
            values = list(values)
            values[_PARAMS] = values[_PARAMS] or {}
            values[_METADATA] = values[_METADATA] or {}
        return cls.from_fields(dict(zip(_FIELDS, values, strict=True)))

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> LocalTask:
        """From every field by name, in a dict the task then owns (as its ``__dict__``).

        The frozen dataclass's ``__init__`` sets its 19 fields one ``object.__setattr__``
        at a time, half the cost of building a task from a row."""
        task = object.__new__(cls)
        object.__setattr__(task, "__dict__", fields)
        return task

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> LocalTask:
        """From a row keyed by column name (any column order)."""
        return cls.from_values([row[name] for name in _FIELDS])


_FIELDS = list(LocalTask.__dataclass_fields__)
_PARAMS, _METADATA = _FIELDS.index("params"), _FIELDS.index("metadata")
# Every field of a task just inserted that its caller does not give (the constants its
# INSERT writes, NULL for the rest): a task built from what was inserted
# (``LocalTask.from_fields``) needs no read of its row.
NEW_TASK_FIELDS: dict[str, Any] = {
    **dict.fromkeys(_FIELDS),
    "status": "queued",
    "attempts": 0,
    "progress": 0,
}


@dataclass(frozen=True)
class OutboxEntry:
    """One remote side effect waiting for (or done with) delivery."""

    id: int
    kind: str
    task_id: int | None
    remote_id: int | None
    remote_attempt: int | None
    remote_worker_id: str | None
    dedupe_key: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    settled_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> OutboxEntry:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CachedTaskType:
    name: str
    remote_id: int | None
    version: str | None
    param_schema: dict[str, Any] | None


@dataclass(frozen=True)
class QueueCounts:
    """What ``status`` shows: tasks by (type, status), outbox by status, the oldest backlog."""

    tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    oldest_pending_outbox: datetime | None = None

    def tasks_with_status(self, status: str) -> int:
        return sum(n for (_type, s), n in self.tasks.items() if s == status)


@dataclass(frozen=True)
class TaskDetail:
    """One task as ``tasks show`` and the dashboard's task page show it: the task, the
    handler's traceback of its last failure, and every outbox row of the task."""

    task: LocalTask
    error_detail: str | None
    outbox: list[OutboxEntry]


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as it recorded itself (``Worker.run``): ``id`` is its lock owner
    (host-pid), the prefix of the ``locked_by`` of every task it runs."""

    id: str
    host: str
    pid: int
    types: list[str]
    concurrency: int
    pool: str
    started_at: datetime
    beat_at: datetime
    stopped_at: datetime | None
    done: int
    failed: int

    def state(self, now: datetime, lost_after: float) -> str:
        """``stopped``, ``lost`` (no beat for ``lost_after`` seconds: gone without a word,
        killed or hung) or ``alive``."""
        if self.stopped_at is not None:
            return "stopped"
        return "lost" if (now - self.beat_at).total_seconds() > lost_after else "alive"
