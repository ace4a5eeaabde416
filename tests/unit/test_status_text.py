"""status as text: ages instead of ISO stamps, and rates with what is left under --watch."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bridge.ops.status_text import progress_lines, status_lines
from bridge.times import ago, rate, span

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def _doc(queued: int, done: int, pending: int, delivered: int) -> dict[str, object]:
    counts = {"queued": queued, "running": 2, "done": done, "failed": 0, "expired": 0}
    return {
        "database": "sqlite:////q.db",
        "worker_id": "host-bridge-1",
        "tasks": {"scrape": counts},
        "outbox": {"pending": pending, "delivered": delivered, "superseded": 0, "dead": 0},
        "oldest_pending_outbox_age_seconds": 75.0,
        "last_contact": (NOW - timedelta(seconds=12)).isoformat(),
        "contact": {
            "state": "outage",
            "since": (NOW - timedelta(minutes=4, seconds=3)).isoformat(),
            "reason": "connection refused",
        },
        "claim_limits": {},
        "rate_limited_until": (NOW + timedelta(seconds=30)).isoformat(),
    }


def test_ages_read_as_ages():
    assert span(0.44) == "0.4 s" and span(12) == "12 s" and span(243) == "4 min 3 s"
    assert span(3725) == "1 h 2 min" and span(90000) == "1 d 1 h"
    assert ago(NOW - timedelta(seconds=12), NOW) == "12 s ago"
    assert ago(NOW + timedelta(seconds=30), NOW) == "in 30 s"
    assert ago(None, NOW) == "never"
    assert rate(10, 4) == "2.5/s" and rate(1, 30) == "2.0/min" and rate(1, 0) == "-"
    # One rule: per minute below one a second, nothing included (it read "0.0/s" beside
    # "30.0/min" on the dashboard).
    assert rate(0, 60) == "0.0/min" and rate(60, 60) == "1.0/s"


def test_status_shows_ages_not_timestamps():
    text = "\n".join(status_lines(_doc(5, 10, 3, 7), NOW))
    assert "last contact: 12 s ago" in text
    assert "OUTAGE since 4 min 3 s ago (connection refused)" in text
    assert "(oldest waits 1 min 15 s)" in text
    assert "rate limited (429): the refused job waits, until in 30 s" in text
    assert "+00:00" not in text


def test_watch_shows_rates_and_what_is_left():
    lines = progress_lines(_doc(20, 10, 8, 0), _doc(10, 20, 4, 8), 5.0)
    assert lines[0] == "over the last 5.0 s:"
    assert "scrape: finishing 2.0/s; 12 left, ~6.0 s to go (queued + running)" in lines[1]
    assert "outbox: settling 1.6/s; 4 left, ~2.5 s to go (pending)" in lines[2]
    assert progress_lines(_doc(1, 1, 0, 0), _doc(1, 1, 0, 0), 0) == []
