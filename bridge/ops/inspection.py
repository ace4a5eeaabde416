"""What an operator looks up: tasks by filter, one task whole (why it failed, its
attempts, timings, lock, every outbox row and its verdict), and the worker processes
(alive, lost, stopped), as JSON-ready documents the CLI, ``status --json`` and the
dashboard share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import BridgeError
from ..models import LocalTask, OutboxEntry, TaskDetail, WorkerInfo
from ..times import iso
from ..worker.registry import LOST_AFTER_BEATS


@dataclass(frozen=True)
class TaskRef:
    """A task as an operator names it: ``12`` (local id) or ``remote:12`` (the server's)."""

    task_id: int | None = None
    remote_id: int | None = None

    @classmethod
    def parse(cls, text: str) -> TaskRef:
        kind, _, number = text.strip().rpartition(":")
        if not (number.isascii() and number.isdecimal()) or kind not in ("", "local", "remote"):
            raise BridgeError(
                f"a task is named by its local id (12) or its remote id (remote:12), got {text!r}"
            )
        return cls(remote_id=int(number)) if kind == "remote" else cls(task_id=int(number))

    def __str__(self) -> str:
        return (
            f"remote task {self.remote_id}"
            if self.remote_id is not None
            else f"task {self.task_id}"
        )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def task_json(task: LocalTask) -> dict[str, Any]:
    """A task's row as ``tasks --json`` lists it."""
    return {
        "id": task.id,
        "remote_id": task.remote_id,
        "type": task.type,
        "status": task.status,
        "attempts": task.attempts,
        "remote_attempt": task.remote_attempt,
        "progress": task.progress,
        "error": task.error,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
    }


def outbox_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "status": entry.status,
        "attempts": entry.attempts,
        "reason": entry.last_error,
        "remote_attempt": entry.remote_attempt,
        "created_at": iso(entry.created_at),
        "settled_at": iso(entry.settled_at),
        "next_attempt_at": iso(entry.next_attempt_at),
    }


def detail_json(detail: TaskDetail, now: datetime) -> dict[str, Any]:
    """Everything ``tasks show`` and the dashboard's task page say of one task."""
    task = detail.task
    doc = task_json(task)
    doc.update(
        params=task.params,
        result=task.result,
        error_detail=detail.error_detail,
        metadata=task.metadata,
        priority=task.priority,
        locked_by=task.locked_by,
        locked_until=iso(task.locked_until),
        lease_expires_at=iso(task.lease_expires_at),
        lease_left_seconds=_seconds(now, task.lease_expires_at),
        remote_worker_id=task.remote_worker_id,
        waited_seconds=_seconds(task.created_at, task.started_at),
        ran_seconds=_seconds(task.started_at, task.finished_at or now),
        outbox=[outbox_json(entry) for entry in detail.outbox],
    )
    return doc


@dataclass(frozen=True)
class WorkerView:
    """A worker process and what is known of it now."""

    info: WorkerInfo
    state: str  # alive, lost or stopped
    beat_age_seconds: float
    running: int  # tasks its slots hold now

    def to_json(self) -> dict[str, Any]:
        info = self.info
        return {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "types": info.types,
            "concurrency": info.concurrency,
            "pool": info.pool,
            "state": self.state,
            "started_at": iso(info.started_at),
            "last_beat_at": iso(info.beat_at),
            "last_beat_age_seconds": round(self.beat_age_seconds, 1),
            "stopped_at": iso(info.stopped_at),
            "done": info.done,
            "failed": info.failed,
            "running": self.running,
        }


def worker_views(
    infos: list[WorkerInfo], running: list[LocalTask], now: datetime, beat_seconds: float
) -> list[WorkerView]:
    """Each worker with its state (lost: silent for ``LOST_AFTER_BEATS`` beats of
    ``beat_seconds``) and the tasks its slots hold (a slot's lock owner is the worker's id
    and ``-<slot>``)."""
    lost_after = beat_seconds * LOST_AFTER_BEATS
    views = []
    for info in infos:
        held = sum(
            1
            for task in running
            if task.locked_by is not None
            and (task.locked_by == info.id or task.locked_by.startswith(f"{info.id}-"))
        )
        views.append(
            WorkerView(
                info,
                info.state(now, lost_after),
                (now - info.beat_at).total_seconds(),
                held,
            )
        )
    return views
