"""The suite's PostgreSQL rule: skipped locally when unreachable, a failure under CI=true."""

from __future__ import annotations

import pytest

from tests.integration.helpers import postgres_decision

DOWN = "PostgreSQL not reachable at postgresql://postgres@127.0.0.1:5432/test: refused"


@pytest.mark.parametrize("env", [{}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}])
def test_unreachable_postgres_skips_locally_with_its_reason(env: dict[str, str]):
    assert postgres_decision(env, DOWN) == ("skip", DOWN)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_unreachable_postgres_fails_under_ci(value: str):
    action, reason = postgres_decision({"CI": value}, DOWN)
    assert action == "fail" and DOWN in reason and "CI=true" in reason


@pytest.mark.parametrize("env", [{}, {"CI": "true"}])
def test_reachable_postgres_runs(env: dict[str, str]):
    assert postgres_decision(env, None) == ("run", "")
