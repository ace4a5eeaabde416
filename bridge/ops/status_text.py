"""``status`` as text: the ``status --json`` document for a person, and, between two
refreshes of ``status --watch``, how fast the queue drains and what is left.

Times are ages ("12 s ago"), not ISO stamps: the JSON keeps the exact values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..models import TASK_STATUSES
from ..times import ago, from_iso, rate, span

_CONTACT_WORDS = {"ok": "ok", "outage": "OUTAGE", "auth_failed": "AUTH FAILED"}


def contact_line(contact: dict[str, Any], now: datetime) -> str:
    """``ok since 3 min ago``, ``OUTAGE since 12 s ago (connection refused)``."""
    state = str(contact["state"])
    line = _CONTACT_WORDS.get(state, state)
    since = from_iso(contact["since"])
    if since is not None and state != "unknown":
        line += f" since {ago(since, now)}"
    if contact["reason"] and state != "ok":
        line += f" ({contact['reason']})"
    return line


def claiming_stopped(contact_state: str) -> str:
    """Why no claim goes through whatever the claim limit says (the limit is the daemon's
    plan, not what the server lets it do), or "" when nothing stops them."""
    if contact_state == "auth_failed":
        return "the server refuses the API key"
    if contact_state == "outage":
        return "the server does not answer (outage)"
    return ""


def no_tasks_line(last_prune: datetime | None, now: datetime) -> str:
    """What an empty queue means: never used, or its finished tasks pruned."""
    if last_prune is None:
        return "no tasks yet"
    return f"no tasks: nothing queued or running; finished tasks pruned {ago(last_prune, now)}"


def status_lines(doc: dict[str, Any], now: datetime) -> list[str]:
    """The plain ``status`` output."""
    worker_id = doc["worker_id"] or "(daemon not run)"
    lines = [f"queue: {doc['database']}   remote worker id: {worker_id}"]
    header = "".join(f"{s:>10}" for s in TASK_STATUSES)
    lines.append(f"  {'type':30}{header}")
    for task_type, by_status in doc["tasks"].items():
        lines.append(f"  {task_type:30}" + "".join(f"{by_status[s]:>10}" for s in TASK_STATUSES))
    if not doc["tasks"]:
        lines.append(f"  ({no_tasks_line(from_iso(doc.get('last_prune')), now)})")
    age = doc["oldest_pending_outbox_age_seconds"]
    oldest = f" (oldest waits {span(age)})" if age is not None else ""
    outbox = ", ".join(f"{s} {n}" for s, n in doc["outbox"].items())
    lines.append(f"outbox: {outbox}{oldest}")
    stopped = claiming_stopped(doc["contact"]["state"])
    for task_type, plan in doc["claim_limits"].items():
        reason = plan["reason"] or "prefetch room"
        queued = f"{plan['queued']} queued"
        said = f"stopped ({stopped}; planned {plan['limit']}: {reason}; {queued})"
        shown = said if stopped else f"{plan['limit']} ({reason}; {queued})"
        lines.append(f"claim limit {task_type}: {shown}")
    lines.append(
        f"last contact: {ago(from_iso(doc['last_contact']), now)}   "
        f"contact: {contact_line(doc['contact'], now)}"
    )
    limited = from_iso(doc.get("rate_limited_until"))
    if limited is not None and limited > now:
        lines.append(f"rate limited (429): the refused job waits, until {ago(limited, now)}")
    lines.extend(worker_lines(doc.get("workers", []), now))
    return lines


def worker_lines(workers: list[dict[str, Any]], now: datetime) -> list[str]:
    """The worker processes: state, last beat, what they run and have done."""
    if not workers:
        return ["workers: none has recorded itself yet (taskmanager-bridge worker ...)"]
    lines = ["workers:"]
    for worker in workers:
        beat = ago(from_iso(worker["last_beat_at"]), now)
        state = worker["state"].upper() if worker["state"] == "lost" else worker["state"]
        lines.append(
            f"  {worker['id']:24} {state:8} beat {beat:14} {worker['pool']:7} "
            f"x{worker['concurrency']:<4} running {worker['running']:<4} "
            f"done {worker['done']:<6} failed {worker['failed']:<5} {', '.join(worker['types'])}"
        )
    return lines


def _finished(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in ("done", "failed", "expired", "cancelled"))


def _left(seconds: float, count: int, per_second: float) -> str:
    if count == 0:
        return "nothing left"
    if per_second <= 0:
        return f"{count} left"
    return f"{count} left, ~{span(count / per_second)} to go"


def progress_lines(previous: dict[str, Any], current: dict[str, Any], seconds: float) -> list[str]:
    """Rates between two documents ``seconds`` apart, and what is left at that pace."""
    if seconds <= 0:
        return []
    lines = []
    for task_type, counts in current["tasks"].items():
        before = previous["tasks"].get(task_type, {})
        finished = _finished(counts) - _finished(before)
        left = counts.get("queued", 0) + counts.get("running", 0)
        per_second = max(finished, 0) / seconds
        lines.append(
            f"  {task_type}: finishing {rate(max(finished, 0), seconds)}; "
            f"{_left(seconds, left, per_second)} (queued + running)"
        )
    delivered = sum(current["outbox"].get(s, 0) for s in ("delivered", "superseded", "dead"))
    delivered -= sum(previous["outbox"].get(s, 0) for s in ("delivered", "superseded", "dead"))
    pending = current["outbox"].get("pending", 0)
    per_second = max(delivered, 0) / seconds
    lines.append(
        f"  outbox: settling {rate(max(delivered, 0), seconds)}; "
        f"{_left(seconds, pending, per_second)} (pending)"
    )
    return [f"over the last {span(seconds)}:", *lines]
