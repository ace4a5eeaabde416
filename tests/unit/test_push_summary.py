"""Delivered outbox rows: each push at DEBUG, a summary at INFO once a minute."""

from __future__ import annotations

import logging

import pytest

from bridge.daemon.push_summary import PushSummary


def test_pushes_are_summarised_once_a_minute(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="bridge.daemon")
    now = [0.0]
    summary = PushSummary(monotonic=lambda: now[0])
    for tenth in range(1, 1300):  # a push every 0.1 s for 130 s, a row in every 10th
        now[0] = tenth / 10
        summary.pushed(1 if tenth % 10 == 0 else 0)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        "delivered 60 outbox rows in the last 60 s",
        "delivered 60 outbox rows in the last 60 s",
    ]
    per_push = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(per_push) == 129 and per_push[0].getMessage() == "delivered 1 outbox row(s)"
    summary.flush()  # the daemon's stop: what the last minute delivered
    assert caplog.records[-1].getMessage() == "delivered 9 outbox rows in the last 10 s"
    summary.flush()
    assert caplog.records[-1].getMessage() == "delivered 9 outbox rows in the last 10 s"
