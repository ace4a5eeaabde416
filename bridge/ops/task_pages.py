"""The dashboard's view of tasks and workers: the main page's sections (workers with
their last beat, recent failures with their reasons, throughput by type, a search
box), the task list (``/tasks?status=&type=&since=&q=``) and one task's page
(``/tasks/ID``, ``/tasks/remote:ID``: what ``tasks show`` prints).

Server-side HTML like the main page; every value from the database is escaped and a
task's numbers carry ``data-metric`` attributes the browser test compares with the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from ..models import TASK_STATUSES, LocalTask
from ..times import ago, from_iso, span
from .inspection import WorkerView
from .operations import DashboardView, TypeThroughput

LIST_LIMIT = 100


def metric(name: str, value: Any, text: str | None = None) -> str:
    """A number a test or a script can find: ``data-metric`` names it."""
    shown = escape(str(value) if text is None else text)
    return f'<span data-metric="{escape(name)}" data-value="{escape(str(value))}">{shown}</span>'


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    """Cells are HTML already (escaped by the caller)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    return f'<table class="wide"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def task_link(task_id: int) -> str:
    return f'<a href="/tasks/{task_id}">{task_id}</a>'


# -- the main page's sections ------------------------------------------------------------------
def search_section() -> str:
    options = "".join(f'<option value="{s}">{s}</option>' for s in ("", *TASK_STATUSES))
    return (
        '<section><h2>Find tasks</h2><form method="get" action="/tasks">'
        '<input name="q" placeholder="an id, or text in the type, error or params"> '
        f'<select name="status">{options}</select> '
        '<input name="type" placeholder="type"> <input type="submit" value="search"></form>'
        '<p><a href="/tasks">all tasks, newest first</a> · '
        '<a href="/tasks?status=failed">failed</a></p></section>'
    )


def _worker_row(worker: WorkerView, now: datetime) -> list[str]:
    info = worker.info
    return [
        escape(info.id),
        metric(f"workers.{info.id}.state", worker.state),
        escape(ago(info.beat_at, now)),
        escape(f"{info.pool} x{info.concurrency}"),
        metric(f"workers.{info.id}.running", worker.running),
        metric(f"workers.{info.id}.done", info.done),
        metric(f"workers.{info.id}.failed", info.failed),
        escape(", ".join(info.types)),
        escape(ago(info.started_at, now)),
    ]


def workers_section(view: DashboardView) -> str:
    now = view.snapshot.now
    rows = [_worker_row(worker, now) for worker in view.snapshot.workers]
    headers = ["worker", "state", "last beat", "pool", "running", "done", "failed", "types"]
    return (
        '<section id="workers"><h2>Workers</h2>'
        + table([*headers, "started"], rows, "no worker has recorded itself yet")
        + "</section>"
    )


def failures_section(view: DashboardView) -> str:
    now = view.snapshot.now
    rows = [
        [
            task_link(task.id),
            escape(task.type),
            escape(ago(task.finished_at, now)),
            f'<span class="reason">{escape((task.error or "").splitlines()[0][:200])}</span>',
        ]
        for task in view.failures
        if task.error is not None
    ]
    return (
        '<section id="failures"><h2>Recent failures</h2>'
        + table(["task", "type", "failed", "reason"], rows, "no task has failed")
        + "</section>"
    )


def _type_row(row: TypeThroughput) -> list[str]:
    total = row.done + row.failed
    per_minute = total / row.minutes
    return [
        escape(row.task_type),
        metric(f"by_type.{row.task_type}.done", row.done),
        metric(f"by_type.{row.task_type}.failed", row.failed),
        escape(f"{per_minute:.1f}/min"),
    ]


def by_type_section(view: DashboardView) -> str:
    minutes = view.by_type[0].minutes if view.by_type else 60
    return (
        f'<section id="by-type"><h2>Throughput by type, last {minutes} min</h2>'
        + table(
            ["type", "done", "failed or expired", "rate"],
            (_type_row(row) for row in view.by_type),
            "nothing finished in that time",
        )
        + "</section>"
    )


def sections(view: DashboardView) -> str:
    """The main page's task and worker sections, in order."""
    return search_section() + workers_section(view) + failures_section(view) + by_type_section(view)


# -- the task pages --------------------------------------------------------------------------
def list_page(tasks: list[LocalTask], now: datetime, filters: dict[str, str]) -> str:
    """``/tasks``: newest first, with the filters that chose them."""
    shown = {key: value for key, value in filters.items() if value}
    title = "Tasks" + (f" ({escape(urlencode(shown))})" if shown else "")
    rows = [
        [
            task_link(task.id),
            escape(str(task.remote_id or "-")),
            escape(task.type),
            metric(f"tasks.{task.id}.status", task.status),
            str(task.attempts),
            escape(ago(task.created_at, now)),
            f'<span class="reason">{escape((task.error or "").splitlines()[0][:160])}</span>'
            if task.error
            else "",
        ]
        for task in tasks
    ]
    body = table(
        ["id", "remote", "type", "status", "tries", "created", "error"], rows, "no task matches"
    )
    more = f'<p class="hint">the newest {LIST_LIMIT} shown</p>' if len(tasks) >= LIST_LIMIT else ""
    return f"<section><h2>{title}</h2>{search_section()}{body}{more}</section>"


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)
    return f"<pre>{escape(text)}</pre>"


def _when(doc: dict[str, Any], key: str, now: datetime) -> str:
    return escape(ago(from_iso(doc[key]), now, never="-"))


def task_page(doc: dict[str, Any], now: datetime, actions: bool) -> str:
    """``/tasks/ID``: one task whole (``inspection.detail_json``)."""
    task_id = doc["id"]
    facts = [
        ["status", metric("task.status", doc["status"])],
        ["type", escape(doc["type"])],
        ["remote id", escape(str(doc["remote_id"] or "local only"))],
        ["attempts here", metric("task.attempts", doc["attempts"])],
        ["remote attempt", escape(str(doc["remote_attempt"] or "-"))],
        ["progress", f"{doc['progress']}%"],
        ["created", _when(doc, "created_at", now)],
        ["started", _when(doc, "started_at", now)],
        ["finished", _when(doc, "finished_at", now)],
        ["ran", escape(span(doc["ran_seconds"]) if doc["ran_seconds"] is not None else "-")],
        ["held by", escape(doc["locked_by"] or "-")],
        ["lease ends", _when(doc, "lease_expires_at", now)],
    ]
    parts = [
        f"<section><h2>Task {task_id}</h2>{table(['', ''], facts, '')}</section>",
        f"<section><h2>Params</h2>{_pre(doc['params'])}</section>",
    ]
    if doc["result"] is not None:
        parts.append(f"<section><h2>Result</h2>{_pre(doc['result'])}</section>")
    if doc["error"]:
        trace = _pre(doc["error_detail"]) if doc["error_detail"] else ""
        parts.append(
            f'<section><h2>Error</h2><p class="reason">{escape(doc["error"])}</p>{trace}</section>'
        )
    rows = []
    for row in doc["outbox"]:
        cells = [
            str(row["id"]),
            escape(row["kind"]),
            metric(f"outbox_row.{row['id']}.status", row["status"]),
            str(row["attempts"]),
            _when(row, "settled_at", now) if row["settled_at"] else "not yet",
            f'<span class="reason">{escape(row["reason"] or "")}</span>',
        ]
        if actions and row["status"] == "dead":
            cells.append(
                f'<button form="act" name="retry" value="{row["id"]}">retry</button> '
                f'<button form="act" name="discard" value="{row["id"]}">discard</button>'
            )
        rows.append(cells)
    headers = ["row", "kind", "status", "tries", "settled", "verdict"]
    parts.append(
        "<section><h2>Outbox rows</h2>"
        + table(headers + (["action"] if actions else []), rows, "no outbox row")
        + "</section>"
    )
    return "".join(parts)
