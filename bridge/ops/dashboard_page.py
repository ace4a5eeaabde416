"""The dashboard page: one HTML document rendered from ``Operations.dashboard(now)``.

Server-side HTML with inline CSS and SVG, plus a few lines of plain JavaScript
that re-fetch the page and swap its live part (no build step, no library;
without JavaScript a ``<noscript>`` refresh does the same). Every number that
``status --json`` also reports carries a ``data-metric`` attribute, so that a
test (or a script) reads the page the way a person does and compares. Every
value from the database is escaped; no secret is ever on the page: actions that
need a token ask the operator to type it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from taskmanager._version import __version__

from ..models import OUTBOX_STATUSES, TASK_STATUSES, LocalTask, OutboxEntry
from ..times import ago, rate, span
from . import task_pages
from .operations import DashboardView, RunningTask, Throughput
from .status_text import claiming_stopped, no_tasks_line

REFRESH_SECONDS = 5


@dataclass(frozen=True)
class PageOptions:
    """What the page offers besides reading: the actions, and whether they need a token."""

    actions: bool = False
    token_required: bool = False
    note: str = ""  # the outcome of the last action, shown once


def _metric(name: str, value: Any, text: str | None = None) -> str:
    """A number the test and scripts can find: ``data-metric`` names it."""
    shown = escape(str(value) if text is None else text)
    return f'<span data-metric="{escape(name)}" data-value="{escape(str(value))}">{shown}</span>'


def _rows(cells: Iterable[Iterable[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)


def _table(headers: Iterable[str], body: str, empty: str, css: str = "") -> str:
    if not body:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- sections --------------------------------------------------------------------------------
def _contact(view: DashboardView) -> str:
    snap, now = view.snapshot, view.snapshot.now
    contact = snap.contact
    state = contact.state if contact else "unknown"
    words = {"ok": "ok", "outage": "outage", "auth_failed": "API key refused", "unknown": "unknown"}
    lines = [
        f'<p class="state {escape(state)}">contact: '
        f"{_metric('contact.state', state, words.get(state, state))}"
    ]
    if contact is not None and state != "unknown":
        lines[0] += f" since {escape(ago(contact.since, now))}"
    lines[0] += "</p>"
    if contact is not None and contact.reason and state != "ok":
        lines.append(f'<p class="reason">{escape(contact.reason)}</p>')
    if snap.rate_limited_until is not None:
        lines.append(
            f'<p class="state outage">rate limited (429): the refused job waits until '
            f"{escape(ago(snap.rate_limited_until, now))}</p>"
        )
    lines.append(f"<p>last answer from the API: {escape(ago(snap.last_contact, now))}</p>")
    lines.append(
        f"<p>daemon last ticked: {escape(ago(snap.last_tick, now, 'never (not running?)'))}</p>"
    )
    if snap.foreign_claims:
        lines.append(
            f'<p class="state outage">{snap.foreign_claims} claim(s) by worker id '
            f"{escape(snap.worker_id or '')} were not made by this bridge: give each bridge "
            "its own TASKMANAGER_WORKER_ID</p>"
        )
    return "<section><h2>Server contact</h2>" + "".join(lines) + "</section>"


def _tasks(view: DashboardView) -> str:
    doc_tasks: dict[str, dict[str, int]] = view.snapshot.to_json()["tasks"]
    body = _rows(
        [escape(task_type)]
        + [_metric(f"tasks.{task_type}.{status}", counts[status]) for status in TASK_STATUSES]
        for task_type, counts in doc_tasks.items()
    )
    return (
        "<section><h2>Tasks by type</h2>"
        + _table(
            ["type", *TASK_STATUSES],
            body,
            no_tasks_line(view.snapshot.last_prune, view.snapshot.now),
            "numbers",
        )
        + "</section>"
    )


def _claims(view: DashboardView) -> str:
    now = view.snapshot.now
    contact = view.snapshot.contact
    stopped = claiming_stopped(contact.state if contact else "unknown")
    body = _rows(
        [
            escape(task_type),
            _metric(
                f"claim_limits.{task_type}.limit", plan["limit"], "stopped" if stopped else None
            ),
            escape(
                plan["reason"]
                or (f"prefetch full ({plan['queued']} queued)" if plan["limit"] == 0 else "")
                or "prefetch room"
            ),
            escape(
                f"{plan['duration']:.1f} s a task "
                f"({'measured' if plan['measured'] else 'assumed: default_task_seconds'})"
            ),
            escape(ago(datetime.fromisoformat(plan["at"]), now) if plan.get("at") else "-"),
        ]
        for task_type, plan in view.snapshot.claim_plans.items()
    )
    why = f'<p class="state outage">claiming is stopped: {escape(stopped)}</p>' if stopped else ""
    return (
        "<section><h2>Claim limit</h2>"
        + (why if body else "")
        + _table(
            ["type", "may claim", "why not more", "task duration", "planned"],
            body,
            "the daemon has not planned a claim yet",
        )
        + "</section>"
    )


def _running_row(task: RunningTask) -> list[str]:
    lease = "local task" if task.lease_left_seconds is None else span(task.lease_left_seconds)
    if task.lease_left_seconds is not None and task.lease_left_seconds < 0:
        lease = f"ran out {span(task.lease_left_seconds)} ago"
    return [
        str(task.id),
        escape(str(task.remote_id or "-")),
        escape(task.type),
        f"{task.progress}%",
        escape(task.locked_by or "-"),
        escape(span(task.age_seconds) if task.age_seconds is not None else "-"),
        escape(lease),
    ]


def _running(view: DashboardView) -> str:
    body = _rows(_running_row(task) for task in view.running)
    headers = ["id", "remote", "type", "progress", "worker", "running for", "lease left"]
    return (
        "<section><h2>Running now</h2>"
        + _table(headers, body, "no task is running", "wide")
        + "</section>"
    )


def _outbox(view: DashboardView) -> str:
    snap = view.snapshot
    counts = snap.counts.outbox
    cells = "".join(
        f"<td>{escape(status)}</td><td>{_metric(f'outbox.{status}', counts.get(status, 0))}</td>"
        for status in OUTBOX_STATUSES
    )
    age = snap.oldest_pending_age
    oldest = "nothing pending"
    if age is not None:
        waited = _metric("outbox.oldest_pending_age", round(age, 1), span(age))
        oldest = f"oldest pending row waits for {waited}"
    return (
        f'<section><h2>Outbox</h2><table class="numbers"><tr>{cells}</tr></table>'
        f"<p>{oldest}</p></section>"
    )


def _dead_row(entry: OutboxEntry, now_text: str, options: PageOptions) -> list[str]:
    row = [
        str(entry.id),
        escape(entry.kind),
        escape(str(entry.remote_id or "-")),
        str(entry.attempts),
        now_text,
        f'<span class="reason">{escape(entry.last_error or "")}</span>',
    ]
    if options.actions:
        row.append(
            f'<button form="act" name="retry" value="{entry.id}">retry</button> '
            f'<button form="act" name="discard" value="{entry.id}">discard</button>'
        )
    return row


def _dead(view: DashboardView, options: PageOptions) -> str:
    now = view.snapshot.now
    body = _rows(_dead_row(e, escape(ago(e.created_at, now)), options) for e in view.dead)
    headers = ["id", "kind", "remote", "tries", "created", "reason"]
    if options.actions:
        headers.append("action")
    hint = (
        ""
        if options.actions
        else '<p class="hint">fix the cause, then <code>taskmanager-bridge outbox retry ID</code> '
        "or <code>outbox discard ID</code> (actions here: <code>run --dashboard-actions</code>)</p>"
    )
    return (
        '<section id="dead"><h2>Dead outbox rows (newest first)</h2>'
        + _table(headers, body, "no dead rows", "wide")
        + (hint if view.dead else "")
        + "</section>"
    )


def throughput_svg(series: list[Throughput], width: int = 600, height: int = 120) -> str:
    """Bars per minute, done stacked under failed; the last bar is the minute in progress."""
    top = max((b.done + b.failed for b in series), default=0) or 1
    slot = width / max(len(series), 1)
    bars = []
    for index, bucket in enumerate(series):
        x = index * slot + 2
        done_h = bucket.done / top * (height - 20)
        failed_h = bucket.failed / top * (height - 20)
        y_done = height - 14 - done_h
        bars.append(
            f'<rect class="done" x="{x:.1f}" y="{y_done:.1f}" width="{slot - 4:.1f}" '
            f'height="{done_h:.1f}"><title>{bucket.start:%H:%M} UTC: {bucket.done} done, '
            f"{bucket.failed} failed</title></rect>"
        )
        if bucket.failed:
            bars.append(
                f'<rect class="failed" x="{x:.1f}" y="{y_done - failed_h:.1f}" '
                f'width="{slot - 4:.1f}" height="{failed_h:.1f}"/>'
            )
    labels = f'<line x1="0" y1="{height - 14}" x2="{width}" y2="{height - 14}" class="axis"/>'
    if series:
        labels += (
            f'<text x="0" y="{height - 2}">{series[0].start:%H:%M} UTC</text>'
            f'<text x="{width}" y="{height - 2}" text-anchor="end">now</text>'
            f'<text x="0" y="10">{top}/min</text>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="tasks finished per minute">{"".join(bars)}{labels}</svg>'
    )


def _throughput(view: DashboardView) -> str:
    series = view.throughput
    done = sum(b.done for b in series)
    failed = sum(b.failed for b in series)
    minutes = len(series)
    last_full = series[-2] if len(series) >= 2 else None
    latest = (
        f"; last full minute {last_full.done + last_full.failed}"
        f" ({rate(last_full.done + last_full.failed, 60)})"
        if last_full
        else ""
    )
    return (
        f"<section><h2>Throughput, last {minutes} min</h2>"
        f"<p>{_metric('throughput.done', done)} done, {_metric('throughput.failed', failed)} "
        f"failed or expired{escape(latest)}</p>"
        f"{throughput_svg(series)}</section>"
    )


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px}
header h1{font-size:18px;margin:0}header p{margin:2px 0;color:#c9cfdb}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px;padding:14px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}th,td{padding:3px 8px;border-bottom:1px solid #eef0f4;
text-align:left;vertical-align:top}
table.numbers td+td,table.numbers th+th{text-align:right}
.state.ok span{color:#177245;font-weight:600}.state.outage,.state.auth_failed{color:#b3261e;
font-weight:600}.reason{color:#6b3a00;word-break:break-word}.empty,.hint{color:#6b7280}
svg.chart rect.done{fill:#3c8d5a}svg.chart rect.failed{fill:#c0392b}
svg.chart text{font-size:10px;fill:#6b7280}svg.chart line.axis{stroke:#c7ccd6}
form#act{padding:0 20px 8px;background:#1d2330;color:#c9cfdb}
header a{color:#fff;text-decoration:none}pre{white-space:pre-wrap;word-break:break-word;
background:#f6f7f9;padding:6px;margin:0;font-size:12px}
.note{background:#fff7d6;padding:6px 20px;margin:0}
"""

_SCRIPT = f"""
const live = document.getElementById("live");
setInterval(async () => {{
  if (document.activeElement && document.activeElement.tagName === "INPUT") return;
  try {{
    const answer = await fetch(location.pathname, {{cache: "no-store"}});
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    live.replaceWith(page.getElementById("live"));
  }} catch (error) {{ document.title = "taskmanager-bridge (daemon not answering)"; }}
}}, {REFRESH_SECONDS * 1000});
"""


def _actions_form(options: PageOptions) -> str:
    if not options.actions:
        return ""
    token = (
        '<label>token <input type="password" name="token" autocomplete="off" '
        'placeholder="BRIDGE_DASHBOARD_TOKEN"></label>'
        if options.token_required
        else ""
    )
    return (
        '<form id="act" method="post" action="/actions">'
        f"actions on dead rows are enabled {token}</form>"
    )


def render(view: DashboardView, options: PageOptions | None = None) -> str:
    """The whole page."""
    options = options or PageOptions()
    snap = view.snapshot
    note = f'<p class="note">{escape(options.note)}</p>' if options.note else ""
    live = (
        f'<div id="live"><header><p>as of {snap.now:%H:%M:%S} UTC, refreshed every '
        f"{REFRESH_SECONDS} s</p></header><main>"
        + _contact(view)
        + _outbox(view)
        + _tasks(view)
        + _claims(view)
        + _throughput(view)
        + _running(view)
        + _dead(view, options)
        + task_pages.sections(view)
        + "</main></div>"
    )
    refresh = f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>'
    return shell(
        snap.database, snap.worker_id, f"{_actions_form(options)}{note}{live}", options, refresh
    ).replace("</body>", f"<script>{_SCRIPT}</script></body>")


def shell(
    database: str,
    worker_id: str | None,
    body: str,
    options: PageOptions,
    head: str = "",
    title: str = "taskmanager-bridge",
) -> str:
    """A whole page around ``body``: the header naming the queue, the style."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{head}"
        f"<style>{_STYLE}</style></head><body>"
        f'<header><h1><a href="/">taskmanager-bridge</a> {escape(__version__)}</h1>'
        f"<p>queue {escape(database)}, remote worker id "
        f"{escape(worker_id or '(daemon not run)')}</p></header>"
        f"{body}</body></html>"
    )


def render_tasks(
    snapshot_database: str,
    worker_id: str | None,
    tasks: list[LocalTask],
    now: datetime,
    filters: dict[str, str],
    options: PageOptions,
) -> str:
    """``/tasks``: the task list page."""
    body = "<main>" + task_pages.list_page(tasks, now, filters) + "</main>"
    return shell(snapshot_database, worker_id, body, options, title="tasks - taskmanager-bridge")


def render_task(
    database: str, worker_id: str | None, doc: dict[str, Any], now: datetime, options: PageOptions
) -> str:
    """``/tasks/ID``: one task's page (its dead rows' actions, when they are on)."""
    main = "<main>" + task_pages.task_page(doc, now, options.actions) + "</main>"
    title = f"task {doc['id']} - taskmanager-bridge"
    return shell(database, worker_id, _actions_form(options) + main, options, title=title)
