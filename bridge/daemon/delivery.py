"""Delivering one outbox row, and what its answer means.

Every answer maps to exactly one ``Outcome`` so that every row ends
``delivered``, ``superseded`` or ``dead`` with its reason, or waits for a
later attempt (promise 3):

* delivered: the server applied it, now or earlier (a replay whose first answer
  was lost is recognised by reading the task back: promise 4);
* superseded: the server's state made it moot (our lease went to another
  worker; a progress report for a task no longer ours), verified by a read;
* dead: refused for good (400 validation, 404, 413, the 500 "Data too long" of a value
  the server cannot store, or refused by the client before sending); later rows are
  not blocked;
* retry: a 5xx or an unreadable answer, tried again after a back-off;
* outage / auth_failed / rate_limited: not this row's fault; the push stops and backs off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from taskmanager import (
    TaskManagerAuthError,
    TaskManagerClient,
    TaskManagerConflictError,
    TaskManagerConnectionError,
    TaskManagerError,
    TaskManagerNotFoundError,
    TaskManagerRateLimitError,
    TaskManagerValidationError,
)
from taskmanager.calls import Calls
from taskmanager.exchange import Steps

from ..models import FinalOutboxStatus, OutboxEntry
from ..storage import Store


class Verdict(Enum):
    DELIVERED = "delivered"
    SUPERSEDED = "superseded"
    DEAD = "dead"
    RETRY = "retry"
    OUTAGE = "outage"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str | None = None
    retry_after: float | None = None
    remote_id: int | None = None  # the id a create/register got


def _send(entry: OutboxEntry, calls: Calls) -> Steps[Outcome]:
    payload = entry.payload
    if entry.kind in ("complete", "fail", "progress") and entry.remote_id is None:
        return Outcome(Verdict.DEAD, f"{entry.kind} row has no remote task id")
    remote_id = int(entry.remote_id or 0)
    worker = entry.remote_worker_id
    if entry.kind == "complete":
        result = payload.get("result") or {}
        done = yield from calls.complete_task(remote_id, result, worker_id=worker)
        note = "already applied (answer lost earlier; verified by reading the task)"
        return Outcome(Verdict.DELIVERED, note if done.settled_by_read else None)
    if entry.kind == "fail":
        error = str(payload.get("error") or "failed")
        failed = yield from calls.complete_task(
            remote_id, None, "failed", worker_id=worker, error=error
        )
        note = f"server status {failed.status}"
        if failed.settled_by_read:
            note += "; already applied (verified by reading the task)"
        return Outcome(Verdict.DELIVERED, note)
    if entry.kind == "progress":
        yield from calls.update_progress(
            remote_id, int(payload["progress"]), payload.get("message"), worker_id=worker
        )
        return Outcome(Verdict.DELIVERED)
    if entry.kind == "create_task":
        created = yield from calls.create_task_detailed(
            payload["type"], payload["params"], int(payload.get("priority") or 0)
        )
        note = f"remote task {created.id}" + (" (deduplicated)" if created.deduplicated else "")
        return Outcome(Verdict.DELIVERED, note, remote_id=created.id)
    if entry.kind == "register_type":
        registered = yield from calls.register_task_type(
            payload["name"], payload["version"], payload["param_schema"]
        )
        return Outcome(Verdict.DELIVERED, f"task type id {registered.id}", remote_id=registered.id)
    return Outcome(Verdict.DEAD, f"unknown outbox kind {entry.kind!r}")


def _conflict(entry: OutboxEntry, exc: TaskManagerConflictError) -> Outcome:
    task = exc.current_task
    if entry.kind == "progress":
        return Outcome(Verdict.SUPERSEDED, f"task no longer ours to report on: {exc.message}")
    if task is None:  # the read-back failed: cannot tell yet
        reason = f"{exc.message}; the task could not be read to verify"
        cause = exc.read_error
        # The server or the network, not this row: no attempt of the row is spent (a
        # completion that landed must not end dead because an outage hid it).
        if isinstance(cause, TaskManagerRateLimitError):
            return Outcome(Verdict.RATE_LIMITED, f"{reason}: {cause}", cause.retry_after)
        if isinstance(cause, TaskManagerConnectionError):
            return Outcome(Verdict.OUTAGE, f"{reason}: {cause}")
        return Outcome(Verdict.RETRY, reason)
    holder = f" by {task.claimed_by}" if task.claimed_by else ""
    return Outcome(
        Verdict.SUPERSEDED,
        f"{exc.message}: the server shows the task {task.status}{holder} "
        f"(attempt {task.attempts}; ours was {entry.remote_attempt}); our result is kept locally",
    )


def deliver(entry: OutboxEntry, client: TaskManagerClient) -> Outcome:
    """Send one row and classify the answer; never raises a ``TaskManagerError``."""
    try:
        return client.run(delivery(entry, client.calls))
    except TaskManagerError as exc:  # refused before the row's steps began (a closed client)
        return Outcome(Verdict.RETRY, str(exc))


def delivery(entry: OutboxEntry, calls: Calls) -> Steps[Outcome]:
    """``deliver`` as steps, for a caller that has several rows in flight at once."""
    try:
        return (yield from _send(entry, calls))
    except TaskManagerConflictError as exc:
        return _conflict(entry, exc)
    except TaskManagerRateLimitError as exc:
        return Outcome(Verdict.RATE_LIMITED, str(exc), retry_after=exc.retry_after)
    except TaskManagerConnectionError as exc:
        return Outcome(Verdict.OUTAGE, str(exc))
    except TaskManagerAuthError as exc:  # our key, not this row: stop and back off
        return Outcome(Verdict.AUTH_FAILED, str(exc))
    except TaskManagerNotFoundError as exc:
        return Outcome(Verdict.DEAD, str(exc))
    # 400, 413, the 500 "Data too long" (TaskManagerDataTooLongError: the same body fails
    # the same way, so never retried), and refusals before sending
    except TaskManagerValidationError as exc:
        new = [d for d in exc.details if d not in str(exc)]
        details = f" ({'; '.join(new)})" if new else ""
        return Outcome(Verdict.DEAD, f"{exc}{details}")
    except TaskManagerError as exc:  # 5xx, protocol errors: maybe better later
        return Outcome(Verdict.RETRY, str(exc))


def apply_outcome(
    store: Store, entry: OutboxEntry, outcome: Outcome, now: datetime
) -> FinalOutboxStatus | None:
    """The local effects of a row's outcome, and the final status to record for it
    (``None``: the row stays pending). The caller records it: at once, or with its batch."""
    if outcome.verdict is Verdict.DELIVERED:
        if entry.kind == "register_type":
            payload = entry.payload
            store.cache_task_type(
                payload["name"], outcome.remote_id, payload["version"], payload["param_schema"], now
            )
        return "delivered"
    if outcome.verdict is Verdict.SUPERSEDED:
        return "superseded"
    if outcome.verdict is Verdict.DEAD:
        return "dead"
    return None
