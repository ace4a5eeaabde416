"""Shared helpers for tests that run real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bridge_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = ROOT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGS`` run to the end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
        **kwargs,
    )


def most_at_once(records: Iterable[Any], path: str) -> int:
    """The most requests whose path matches ``path`` (a shell pattern: ``/tasks/*``) the
    emulator held at the same moment, from its request log (``server.requests``)."""
    spans = [(r.at, r.answered) for r in records if fnmatch(r.path, path)]
    return max((sum(1 for a, b in spans if a <= at < b) for at, _ in spans), default=0)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll ``condition`` until true or ``timeout``; True when it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


PG_URL_ENV = "BRIDGE_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    import os

    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


def pg_unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    try:
        psycopg.connect(pg_base_url(), connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL not reachable at {pg_base_url()}: {str(exc).strip()[:120]}"
    return None


def ci_requires_postgres(env: Mapping[str, str]) -> bool:
    """CI runs with ``CI=true``: there, the PostgreSQL half of the suite must run."""
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_decision(env: Mapping[str, str], found: str | None) -> tuple[str, str]:
    """What the browser test does: ("run", path), ("skip", why) or ("fail", why).

    Locally a missing Chromium skips with the way to get one; under ``CI=true`` it
    fails (``.ci/run`` installs it), so the dashboard is never silently untested.
    """
    if found is not None:
        return "run", found
    why = (
        f"no headless browser ({', '.join(BROWSERS)}) on PATH: "
        "apt-get install chromium (Debian), or run bash .ci/run"
    )
    if ci_requires_postgres(env):  # the same CI=true rule as PostgreSQL's
        return "fail", f"CI=true needs Chromium for the dashboard test: {why}"
    return "skip", why


def postgres_decision(env: Mapping[str, str], unreachable: str | None) -> tuple[str, str]:
    """What a ``[postgresql]`` test does: ("run", ""), ("skip", why) or ("fail", why).

    Locally an unreachable server skips with its reason; under ``CI=true`` it fails,
    so a broken service cannot turn half the suite into silent skips.
    """
    if unreachable is None:
        return "run", ""
    if ci_requires_postgres(env):
        return "fail", f"CI=true needs PostgreSQL for the [postgresql] tests: {unreachable}"
    return "skip", unreachable


def pg_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]
