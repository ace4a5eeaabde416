"""The subcommands of ``taskmanager-bridge``: each takes the parsed arguments and
returns an exit code (the parser and the error handling are in ``cli``). The API key is
never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from taskmanager import TaskManagerClient

from ..config import BridgeConfig
from ..config_values import parse_toml
from ..daemon.metrics_sink import MetricsSink
from ..errors import BridgeConfigError, BridgeError
from ..ops.metrics import Metrics, daemon_metrics
from ..ops.operations import Operations, sqlite_file_missing, upgrade_command
from ..ops.status_text import progress_lines, status_lines
from ..storage import check_schema, display_url, migrations, normalise_url, open_store
from ..times import ago

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _config(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig.load(args.config, db_url=args.db_url)


def _where(config: BridgeConfig) -> str:
    return display_url(normalise_url(config.db_url))


# -- db ----------------------------------------------------------------------------------
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    known = migrations.known_revisions()
    if args.revision not in ("head", *known):
        raise BridgeError(
            f"db upgrade: no schema revision {args.revision!r} "
            f"(known: {', '.join(known)}; head is {known[-1]})"
        )
    migrations.upgrade(config.db_url, args.revision)
    print(f"{_where(config)}: at schema revision {migrations.current(config.db_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    config = _config(args)
    fix = upgrade_command(args.config, args.db_url)
    missing = sqlite_file_missing(config.db_url)  # opening it would create an empty file
    if missing is not None:
        print(f"{_where(config)}: no taskmanager-bridge schema (no such file; create it: {fix})")
        return 1
    revision = migrations.current(config.db_url)
    if revision is None:
        print(f"{_where(config)}: no taskmanager-bridge schema (run: {fix})")
        return 1
    expected = migrations.head_revision()
    state = "up to date" if revision == expected else f"expected {expected}"
    print(f"{_where(config)}: schema revision {revision} ({state})")
    return 0 if revision == expected else 1


# -- run / worker ----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from ..daemon.jobs import DaemonJobs
    from ..daemon.service import Daemon

    config = _config(args)
    if not config.types:
        raise BridgeConfigError(
            "types: the daemon needs the task types to claim "
            '(types = ["..."] in the config, or BRIDGE_TYPES=a,b)'
        )
    from ..daemon.descriptors import descriptor_need, ensure_descriptors
    from ..ops.dashboard_server import TOKEN_VARIABLE, ActionPolicy, DashboardLimits

    # Checked before anything is written: a refused setting leaves the database untouched.
    policy = ActionPolicy.decide(
        args.dashboard_actions, os.environ.get(TOKEN_VARIABLE), args.metrics_address
    )
    serving = args.metrics_port is not None
    ensure_descriptors(descriptor_need(config, DashboardLimits().connections if serving else 0))
    with contextlib.closing(open_store(config.db_url, config.busy_timeout_seconds)) as store:
        operations = Operations(store, config)
        metrics = daemon_metrics(operations) if serving else MetricsSink()
        http = config.http_library()
        client = TaskManagerClient(
            config.client_config(), observer=metrics.observe_request, http=http
        )
        logging.getLogger("bridge.daemon").info("requests to the server go through %s", http)
        with contextlib.closing(client):
            jobs = _wait_for_database(
                lambda: DaemonJobs(store, client, config, metrics=metrics),
                lambda: check_schema(store.engine),
            )
            daemon = Daemon(jobs)
            # Before anything is visible from outside: a SIGTERM sent as soon as the page
            # answers must stop the daemon cleanly, not kill it.
            daemon.handle_signals()
            server = _dashboard(args, operations, metrics, policy) if serving else None
            try:
                return daemon.run_forever()
            finally:
                if server is not None:
                    server.stop()


def _dashboard(
    args: argparse.Namespace, operations: Operations, metrics: object, policy: Any
) -> Any:
    """Bind the daemon's HTTP port (the dashboard, /healthz and, with the extra, /metrics)."""
    from ..ops.dashboard_server import DashboardApp, DashboardServer

    render = metrics.render if isinstance(metrics, Metrics) else None
    server = DashboardServer(
        DashboardApp(operations, policy, render), args.metrics_address, args.metrics_port
    )
    server.start()
    log = logging.getLogger("bridge.daemon")
    log.info("dashboard on %s (health probe: %shealthz)", server.url, server.url)
    if render is not None:
        log.info("metrics on %smetrics", server.url)
    else:
        log.info("no /metrics: prometheus-client is not installed (pip install '.[metrics]')")
    if policy.enabled:
        log.warning(
            "dashboard actions on: dead outbox rows can be retried or discarded from the page%s",
            " with the token" if policy.token else " (loopback only)",
        )
    return server


def _wait_for_database(start: Callable[[], T], check: Callable[[], None]) -> T:
    """Start in spite of passing database trouble (a write lock held longer than the busy
    timeout, a full disk): waited out and logged once, not an exit; a signal meanwhile
    stops the start (exit 0). A schema that is missing or wrong still stops it."""
    from ..storage import GaveUp, Patience

    given_up = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: given_up.set()) for sig in STOP_SIGNALS}
    try:
        return Patience(check, backoff_max_seconds=5.0).call("starting the daemon", start, given_up)
    except GaveUp:
        raise SystemExit(0) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_worker(args: argparse.Namespace) -> int:
    """Exit codes: ``bridge.worker.WorkerExit`` (0 requested stop, 1 schema changed or a
    second signal, 2 bad arguments or no usable database at start, 3 results unstored)."""
    from ..queue import LocalQueue
    from ..worker.handlers import TaskPolicy, load_handler
    from ..worker.process_pool import PoolOptions
    from ..worker.retry import RetryPolicy
    from ..worker.service import Worker

    handler = load_handler(args.handler, args.app_dir)
    config = _config(args)
    policy = TaskPolicy(
        time_limit=args.time_limit,
        retry=RetryPolicy(attempts=args.retries + 1, backoff=args.retry_backoff),
    )
    with LocalQueue(config=config) as queue:
        worker = Worker(
            queue,
            dict.fromkeys(args.type, handler),
            args.concurrency,
            default_policy=policy,
            grace_seconds=args.grace,
            summary_seconds=args.summary_every,
            pool=args.pool,
            pool_options=PoolOptions(args.max_tasks_per_child, args.max_memory_mb),
        )
        worker.handle_signals()
        worker.run(max_tasks=args.max_tasks)
    if worker.fatal is not None:
        print(f"taskmanager-bridge: error: {worker.fatal}", file=sys.stderr)
    return int(worker.exit_code)


# -- status ------------------------------------------------------------------------------
def status_document(config: BridgeConfig, now: datetime | None = None) -> dict[str, Any]:
    """What ``status --json`` prints (a stable shape, see docs/OPERATIONS.md)."""
    with Operations.open(config) as operations:
        return operations.snapshot(now or datetime.now(timezone.utc)).to_json()


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    if not args.watch:
        return _print_status(status_document(config), args.json)
    previous: tuple[float, dict[str, Any]] | None = None
    try:
        while True:
            doc = status_document(config)
            taken = time.monotonic()
            print("\033[2J\033[H", end="")  # clear the terminal, cursor home
            print(
                f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC, every {args.interval:g} s "
                "(Ctrl-C to stop)"
            )
            _print_status(doc, args.json)
            if previous is not None and not args.json:
                print("\n".join(progress_lines(previous[1], doc, taken - previous[0])))
            previous = (taken, doc)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _print_status(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print("\n".join(status_lines(doc, datetime.now(timezone.utc))))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """0 when healthy, 1 otherwise, with the reason: for systemd, Docker, Kubernetes probes."""
    with Operations.open(_config(args)) as operations:
        problems = operations.health_problems(
            datetime.now(timezone.utc), args.max_outbox_age, args.max_tick_age
        )
    if problems:
        print("unhealthy: " + "; ".join(problems))
        return 1
    print("healthy")
    return 0


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` -> timedelta; anything else is one clear error.

    A unit is required: a bare ``7`` once meant 7 seconds and pruned what the
    operator meant to keep. No signs, exponents, ``inf`` or ``nan``, nothing zero,
    nothing over a hundred years (a typo, whatever it meant).
    """
    import re

    units, longest = {"d": 86400, "h": 3600, "m": 60, "s": 1}, timedelta(days=36500)
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([dhms])", text.strip())
    seconds = float(match[1]) * units[match[2]] if match else 0.0
    if not 0 < seconds <= longest.total_seconds():
        raise BridgeError(
            "--older-than must be a positive age with its unit, like 7d, 12h, 30m or 90s "
            f"(at most {longest.days}d), got {text!r}"
        )
    return timedelta(seconds=seconds)


def cmd_prune(args: argparse.Namespace) -> int:
    age = parse_age(args.older_than)
    with Operations.open(_config(args)) as operations:
        rows, finished = operations.prune(age, datetime.now(timezone.utc))
    print(
        f"pruned {rows} settled outbox row(s) and {finished} finished task(s) older than "
        f"{args.older_than}; nothing pending or dead was touched"
    )
    return 0


# -- outbox --------------------------------------------------------------------------------
def cmd_outbox_list(args: argparse.Namespace) -> int:
    with Operations.open(_config(args)) as operations:
        entries = operations.outbox(args.status, args.limit)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": e.id,
                        "kind": e.kind,
                        "status": e.status,
                        "remote_id": e.remote_id,
                        "remote_attempt": e.remote_attempt,
                        "attempts": e.attempts,
                        "created_at": e.created_at.isoformat(),
                        "reason": e.last_error,
                        "payload": e.payload,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return 0
    now = datetime.now(timezone.utc)
    width = max(shutil.get_terminal_size((120, 24)).columns, 60)
    print(f"{'id':>7} {'kind':13} {'status':10} {'remote':>8} {'tries':>5}  {'created':14}")
    for e in entries:
        print(
            f"{e.id:>7} {e.kind:13} {e.status:10} {e.remote_id or '-':>8} {e.attempts:>5}  "
            f"{ago(e.created_at, now):14}"
        )
        if e.last_error:  # the whole reason, wrapped, never cut
            for line in textwrap.wrap(
                e.last_error, width - 9, initial_indent="reason: ", subsequent_indent="  "
            ):
                print(f"{'':9}{line}")
    if not entries:
        print("(no rows)")
    return 0


def _on_dead_rows(args: argparse.Namespace, verb: str, done: str) -> int:
    """``outbox retry`` and ``outbox discard``: the given dead rows, or all with --dead."""
    if not args.dead and not args.ids:
        raise BridgeError(f"outbox {verb}: give row ids, or --dead for every dead row")
    if args.dead and args.ids:
        raise BridgeError(f"outbox {verb}: give row ids or --dead, not both")
    with Operations.open(_config(args)) as operations:
        act = operations.retry_dead if verb == "retry" else operations.discard_dead
        count = act(None if args.dead else args.ids, datetime.now(timezone.utc))
    print(f"{count} dead row(s) {done}" if count or args.ids else "no dead rows: nothing to do")
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    return _on_dead_rows(args, "retry", "made pending again")


def cmd_outbox_discard(args: argparse.Namespace) -> int:
    return _on_dead_rows(args, "discard", "discarded (kept as superseded, with their reason)")


# -- register-types ------------------------------------------------------------------------
def read_type_definitions(path: Path) -> list[dict[str, Any]]:
    """A JSON list (or {"types": [...]}) or a TOML file of [[types]] tables."""
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = parse_toml(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise BridgeError(f"{path}: cannot read type definitions: {exc}") from None
    items = data.get("types") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise BridgeError(f"{path}: expected a list of types (or a 'types' list)")
    for index, item in enumerate(items):
        missing = [
            k
            for k in ("name", "version", "param_schema")
            if not isinstance(item, dict) or k not in item
        ]
        if missing:
            raise BridgeError(f"{path}: type #{index + 1} lacks {', '.join(missing)}")
    return [dict(item) for item in items]


def cmd_register_types(args: argparse.Namespace) -> int:
    from ..daemon.delivery import Verdict

    definitions = read_type_definitions(Path(args.file))
    config = _config(args)
    client = TaskManagerClient(config.client_config())
    with Operations.open(config) as operations:
        now = datetime.now(timezone.utc)
        for done in operations.register_types(definitions, client, now):
            verdict, reason = done.outcome.verdict, done.outcome.reason
            if verdict is Verdict.DELIVERED:
                print(f"registered {done.name} v{done.version} ({reason})")
            elif verdict is Verdict.DEAD:
                print(f"refused {done.name}: {reason}", file=sys.stderr)
                return 1
            elif verdict is Verdict.AUTH_FAILED:
                print(
                    f"taskmanager-bridge: error: the server refuses the API key "
                    f"({config.api_key_source}): {reason}; {done.name} stays queued in the outbox",
                    file=sys.stderr,
                )
                return 1
            else:
                print(
                    f"queued {done.name} v{done.version} in the outbox "
                    f"(server not reachable now: {reason}); the daemon will send it"
                )
    return 0


# -- demo ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from ..ops.demo import run_demo

    return run_demo(tasks=args.tasks, outage_seconds=args.outage_seconds)
