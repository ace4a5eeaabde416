"""The dashboard test's browser rule: skipped locally without Chromium, a failure under CI."""

from __future__ import annotations

import pytest

from tests.integration.helpers import browser_decision


@pytest.mark.parametrize("env", [{}, {"CI": "false"}])
def test_missing_browser_skips_locally_saying_how_to_get_one(env: dict[str, str]):
    action, reason = browser_decision(env, None)
    assert action == "skip" and "apt-get install chromium" in reason


def test_missing_browser_fails_under_ci():
    action, reason = browser_decision({"CI": "true"}, None)
    assert action == "fail" and "CI=true" in reason


def test_found_browser_runs():
    assert browser_decision({"CI": "true"}, "/usr/bin/chromium") == ("run", "/usr/bin/chromium")
