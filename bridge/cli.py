"""``taskmanager-bridge``: the command line of the bridge.

Each subcommand is a function taking the parsed arguments and returning an
exit code; errors of the bridge become one line on stderr and exit code 2.
The API key is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias

from taskmanager import TaskManagerClient, TaskManagerError

from . import migrate
from .config import BridgeConfig, parse_toml
from .database import display_url, normalise_url
from .errors import BridgeConfigError, BridgeError
from .logs import setup_logging
from .metrics import Metrics, NullMetrics
from .operations import Operations
from .schema import OUTBOX_STATUSES, TASK_STATUSES
from .storage import open_store

Command = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _config(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig.load(args.config, db_url=args.db_url)


def _where(config: BridgeConfig) -> str:
    return display_url(normalise_url(config.db_url))


# -- db ----------------------------------------------------------------------------------
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    migrate.upgrade(config.db_url, args.revision)
    print(f"{_where(config)}: at schema revision {migrate.current(config.db_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    config = _config(args)
    revision = migrate.current(config.db_url)
    if revision is None:
        print(
            f"{_where(config)}: no taskmanager-bridge schema (run: taskmanager-bridge db upgrade)"
        )
        return 1
    expected = migrate.head_revision()
    state = "up to date" if revision == expected else f"expected {expected}"
    print(f"{_where(config)}: schema revision {revision} ({state})")
    return 0 if revision == expected else 1


# -- run / worker ----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Bridge, Daemon

    config = _config(args)
    if not config.types:
        raise BridgeConfigError(
            "types: the daemon needs the task types to claim "
            '(types = ["..."] in the config, or BRIDGE_TYPES=a,b)'
        )
    with contextlib.closing(open_store(config.db_url, config.busy_timeout_seconds)) as store:
        operations = Operations(store, config)
        metrics = Metrics(operations) if args.metrics_port is not None else NullMetrics()
        client = TaskManagerClient(config.client_config(), observer=metrics.observe_request)
        daemon = Daemon(Bridge(store, client, config, metrics=metrics))
        # Before anything is visible from outside: a SIGTERM sent as soon as the metrics
        # answer must stop the daemon cleanly, not kill it.
        daemon.handle_signals()
        if isinstance(metrics, Metrics):
            metrics.serve(args.metrics_port, args.metrics_address)
            logging.getLogger("bridge.daemon").info(
                "metrics on http://%s:%d/metrics", args.metrics_address, args.metrics_port
            )
        return daemon.run_forever()


def cmd_worker(args: argparse.Namespace) -> int:
    from .queue import LocalQueue
    from .worker import Worker, load_handler

    handler = load_handler(args.handler)
    config = _config(args)
    with LocalQueue(config=config) as queue:
        worker = Worker(queue, dict.fromkeys(args.type, handler), args.concurrency)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            logging.getLogger("bridge.worker").info("signal %d: finishing the task in hand", signum)
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        handled = worker.run(max_tasks=args.max_tasks)
        logging.getLogger("bridge.worker").info("worker stopped after %d task(s)", handled)
    return 0


# -- status ------------------------------------------------------------------------------
def status_document(config: BridgeConfig, now: datetime | None = None) -> dict[str, Any]:
    """What ``status --json`` prints (a stable shape, see docs/OPERATIONS.md)."""
    with Operations.open(config) as operations:
        return operations.snapshot(now or datetime.now(timezone.utc)).to_json()


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    if not args.watch:
        return _print_status(status_document(config), args.json)
    try:
        while True:
            doc = status_document(config)
            print("\033[2J\033[H", end="")  # clear the terminal, cursor home
            print(
                f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC, every {args.interval:g} s "
                "(Ctrl-C to stop)"
            )
            _print_status(doc, args.json)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _print_status(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"queue: {doc['database']}   remote worker id: {doc['worker_id'] or '(daemon not run)'}")
    header = "".join(f"{s:>10}" for s in TASK_STATUSES)
    print(f"  {'type':30}{header}")
    for task_type, by_status in doc["tasks"].items():
        print(f"  {task_type:30}" + "".join(f"{by_status[s]:>10}" for s in TASK_STATUSES))
    age = doc["oldest_pending_outbox_age_seconds"]
    oldest = f" (oldest {age:.0f} s)" if age is not None else ""
    outbox = ", ".join(f"{s} {n}" for s, n in doc["outbox"].items())
    print(f"outbox: {outbox}{oldest}")
    for task_type, plan in doc["claim_limits"].items():
        reason = plan["reason"] or "prefetch room"
        print(f"claim limit {task_type}: {plan['limit']} ({reason}; {plan['queued']} queued)")
    print(
        f"last contact: {doc['last_contact'] or 'never'}   "
        f"contact: {_contact_line(doc['contact'])}"
    )
    return 0


def _contact_line(contact: dict[str, Any]) -> str:
    words = {"ok": "ok", "outage": "OUTAGE", "auth_failed": "AUTH FAILED", "unknown": "unknown"}
    line = str(words.get(contact["state"], contact["state"]))
    if contact["since"] and contact["state"] != "unknown":
        line += f" since {contact['since']}"
    if contact["reason"] and contact["state"] != "ok":
        line += f" ({contact['reason']})"
    return line


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
    print(f"{'id':>7} {'kind':13} {'status':10} {'remote':>8} {'tries':>5}  reason")
    for e in entries:
        reason = (e.last_error or "").replace("\n", " ")[:90]
        print(
            f"{e.id:>7} {e.kind:13} {e.status:10} {e.remote_id or '-':>8} {e.attempts:>5}  {reason}"
        )
    return 0


def _on_dead_rows(args: argparse.Namespace, verb: str, done: str) -> int:
    """``outbox retry`` and ``outbox discard``: the given dead rows, or all with --dead."""
    if not args.dead and not args.ids:
        raise BridgeError(f"outbox {verb}: give row ids, or --dead for every dead row")
    with Operations.open(_config(args)) as operations:
        act = operations.retry_dead if verb == "retry" else operations.discard_dead
        count = act(None if args.dead else args.ids, datetime.now(timezone.utc))
    print(f"{count} dead row(s) {done}")
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
    from .outbox import Verdict

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
    from .demo import run_demo

    return run_demo(tasks=args.tasks, outage_seconds=args.outage_seconds)


def _add_db(commands: Subparsers) -> None:
    db = commands.add_parser("db", help="the local queue's schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)


def _add_run(commands: Subparsers) -> None:
    run = commands.add_parser("run", help="run the daemon (claim, deliver, reap, reconcile)")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (needs the [metrics] extra)",
    )
    run.add_argument("--metrics-address", default="127.0.0.1")
    run.set_defaults(func=cmd_run)


def _add_worker(commands: Subparsers) -> None:
    worker = commands.add_parser("worker", help="run a handler on tasks from the local queue")
    worker.add_argument("--handler", required=True, help="package.module:function")
    worker.add_argument(
        "--type", action="append", required=True, help="task type to run it on (repeatable)"
    )
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--max-tasks", type=int, default=None, help="stop after this many")
    worker.set_defaults(func=cmd_worker)


def _add_status(commands: Subparsers) -> None:
    status = commands.add_parser("status", help="queue and outbox counts, contact, outage")
    status.add_argument("--json", action="store_true", help="machine-readable (stable keys)")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.set_defaults(func=cmd_status)


def _add_health(commands: Subparsers) -> None:
    health = commands.add_parser("health", help="exit 0 when healthy, 1 when not (for probes)")
    health.add_argument(
        "--max-outbox-age",
        type=float,
        default=900.0,
        help="seconds the oldest pending outbox row may wait",
    )
    health.add_argument(
        "--max-tick-age", type=float, default=60.0, help="seconds since the daemon's last tick"
    )
    health.set_defaults(func=cmd_health)


def _add_prune(commands: Subparsers) -> None:
    prune = commands.add_parser("prune", help="delete settled outbox rows and finished tasks")
    prune.add_argument("--older-than", required=True, help="age: 7d, 12h, 30m, 90s")
    prune.set_defaults(func=cmd_prune)


def _add_outbox(commands: Subparsers) -> None:
    outbox = commands.add_parser("outbox", help="inspect or replay outbox rows").add_subparsers(
        dest="outbox_command", required=True
    )
    listing = outbox.add_parser("list", help="rows, oldest first")
    listing.add_argument("--status", choices=OUTBOX_STATUSES)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_outbox_list)
    retry = outbox.add_parser("retry", help="make dead rows pending again")
    retry.add_argument("ids", nargs="*", type=int)
    retry.add_argument("--dead", action="store_true", help="every dead row")
    retry.set_defaults(func=cmd_outbox_retry)
    discard = outbox.add_parser("discard", help="end dead rows for good (kept as superseded)")
    discard.add_argument("ids", nargs="*", type=int)
    discard.add_argument("--dead", action="store_true", help="every dead row")
    discard.set_defaults(func=cmd_outbox_discard)


def _add_register_types(commands: Subparsers) -> None:
    register = commands.add_parser(
        "register-types", help="register task types from a JSON or TOML file"
    )
    register.add_argument("file")
    register.set_defaults(func=cmd_register_types)


def _add_demo(commands: Subparsers) -> None:
    demo = commands.add_parser("demo", help="emulator + daemon + 2 workers, with an outage")
    demo.add_argument("--tasks", type=int, default=40)
    demo.add_argument("--outage-seconds", type=float, default=4.0)
    demo.set_defaults(func=cmd_demo)


COMMANDS = (
    _add_db,
    _add_run,
    _add_worker,
    _add_status,
    _add_health,
    _add_prune,
    _add_outbox,
    _add_register_types,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmanager-bridge",
        description="Local queue and outbox between workers and the TaskManager API.",
    )
    parser.add_argument("--config", help="TOML config (default: $BRIDGE_CONFIG or ./bridge.toml)")
    parser.add_argument("--db-url", help="local queue database (overrides the config)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on stderr: text (default) or JSON lines",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    command: Command = args.func
    try:
        return command(args)
    except (BridgeError, TaskManagerError) as exc:
        print(f"taskmanager-bridge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
