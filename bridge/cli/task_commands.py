"""Seeing tasks one by one: ``tasks`` (newest first, by status, type, age, a search)
and ``tasks show ID`` (params, result or error with the handler's traceback, attempts,
timings, lock, every outbox row and its verdict)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from ..ops.inspection import TaskRef, detail_json, task_json
from ..ops.operations import Operations
from ..times import ago, from_iso, span
from .common import load_config, parse_age


def cmd_tasks(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    since = now - parse_age(args.since, "--since") if args.since else None
    with Operations.open(load_config(args)) as operations:
        found = operations.tasks(
            status=args.status,
            task_type=args.type,
            since=since,
            search=args.search,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([task_json(task) for task in found], indent=2))
        return 0
    if not found:
        print("no task matches")
        return 0
    print(f"{'id':>7} {'remote':>8} {'type':28} {'status':8} {'tries':>5}  {'created':14}  error")
    for task in found:
        remote = "" if task.remote_id is None else str(task.remote_id)
        error = (task.error or "").splitlines()[0][:60] if task.error else ""
        print(
            f"{task.id:>7} {remote:>8} {task.type[:28]:28} {task.status:8} {task.attempts:>5}  "
            f"{ago(task.created_at, now):14}  {error}"
        )
    return 0


def cmd_tasks_show(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    with Operations.open(load_config(args)) as operations:
        doc = detail_json(operations.task(TaskRef.parse(args.task)), now)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print("\n".join(detail_lines(doc, now)))
    return 0


def _when(doc: dict[str, Any], key: str, now: datetime) -> str:
    return ago(from_iso(doc[key]), now, never="-")


def detail_lines(doc: dict[str, Any], now: datetime) -> list[str]:
    """``tasks show`` as text."""
    remote = f"remote {doc['remote_id']}" if doc["remote_id"] is not None else "local only"
    lines = [
        f"task {doc['id']} ({remote})  {doc['type']}  {doc['status']}  progress {doc['progress']}%",
        f"  params: {json.dumps(doc['params'], sort_keys=True)}",
    ]
    if doc["result"] is not None:
        lines.append(f"  result: {json.dumps(doc['result'], sort_keys=True)}")
    if doc["error"]:
        lines.append(f"  error: {doc['error']}")
    if doc["error_detail"]:
        lines.append("  traceback:")
        lines.extend(f"    {line}" for line in doc["error_detail"].rstrip().splitlines())
    tries = f"  attempts: {doc['attempts']} here"
    if doc["remote_attempt"] is not None:
        tries += f", remote attempt {doc['remote_attempt']} (as {doc['remote_worker_id']})"
    lines.append(tries)
    ran = f" (waited {span(doc['waited_seconds'])}" if doc["waited_seconds"] is not None else ""
    if ran and doc["ran_seconds"] is not None:
        ran += f", ran {span(doc['ran_seconds'])})"
    elif ran:
        ran += ")"
    lines.append(
        f"  created {_when(doc, 'created_at', now)}, started {_when(doc, 'started_at', now)}, "
        f"finished {_when(doc, 'finished_at', now)}{ran}"
    )
    if doc["locked_by"]:
        lines.append(f"  held by {doc['locked_by']}, lock until {_when(doc, 'locked_until', now)}")
    if doc["lease_expires_at"]:
        lines.append(f"  remote lease ends {_when(doc, 'lease_expires_at', now)}")
    lines.append(f"  outbox rows: {len(doc['outbox']) or 'none'}")
    for row in doc["outbox"]:
        settled = _when(row, "settled_at", now) if row["settled_at"] else "not yet"
        lines.append(
            f"    #{row['id']} {row['kind']:13} {row['status']:10} {row['attempts']} attempt(s), "
            f"settled {settled}: {row['reason'] or '-'}"
        )
    return lines
