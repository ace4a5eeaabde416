"""Skipped job runs: every one counted, said at most once a minute."""

from __future__ import annotations

import logging

import pytest

from bridge.daemon.skipped_runs import QuietSkips, SkippedRuns


def test_skips_are_counted_each_and_summarised_once_a_minute(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="bridge.daemon")
    now = [0.0]
    counted: list[str] = []
    skips = SkippedRuns(counted.append, every=60.0, monotonic=lambda: now[0])
    for second in range(0, 119):  # two skips a second for two minutes, as in an outage
        now[0] = float(second)
        skips.skipped("pull")
        skips.skipped("push")
    assert len(counted) == 238
    lines = [r.getMessage() for r in caplog.records]
    # the first minute's, said by the first skip after it: pull 0..60, push 0..59
    assert len(lines) == 1 and "last 60 s" in lines[0] and "pull 61, push 60" in lines[0]
    skips.flush()
    assert len(caplog.records) == 2 and "pull 58, push 59" in caplog.records[1].getMessage()
    skips.flush()  # nothing new: nothing said
    assert len(caplog.records) == 2


def test_the_schedulers_per_skip_warning_is_dropped_and_nothing_else():
    quiet = QuietSkips()
    skip = logging.LogRecord(
        "bridge.scheduler",
        logging.WARNING,
        __file__,
        1,
        'Execution of job "%s" skipped: maximum number of running instances reached (%d)',
        ("pull", 1),
        None,
    )
    other = logging.LogRecord(
        "bridge.scheduler", logging.ERROR, __file__, 1, "Error submitting job", (), None
    )
    assert quiet.filter(skip) is False and quiet.filter(other) is True
