"""``taskmanager-bridge``: the command line of the bridge.

The parser and the error handling: each subcommand is a function of ``commands``
taking the parsed arguments and returning an exit code; errors of the bridge
become one line on stderr and exit code 2. The API key is never printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

from taskmanager import TaskManagerError
from taskmanager._version import __version__

from ..errors import BridgeError, SchemaError
from ..logs import setup_logging
from ..models import OUTBOX_STATUSES, TASK_STATUSES
from ..ops.operations import upgrade_command
from ..storage import FIX_COMMAND
from .db_commands import cmd_db_current, cmd_db_upgrade, cmd_prune
from .process_commands import cmd_demo, cmd_run, cmd_worker
from .status_commands import (
    cmd_health,
    cmd_outbox_discard,
    cmd_outbox_list,
    cmd_outbox_retry,
    cmd_register_types,
    cmd_status,
)
from .task_commands import cmd_tasks, cmd_tasks_show

Command = Callable[[argparse.Namespace], int]


class Subparsers(Protocol):
    """What ``add_subparsers()`` returns, as far as this module uses it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def _add_db(commands: Subparsers) -> None:
    db = commands.add_parser(
        "db", help="the local queue's schema", description="Create, upgrade or show the schema."
    ).add_subparsers(dest="db_command", metavar="{upgrade,current}", required=True)
    upgrade = db.add_parser(
        "upgrade",
        help="create or upgrade the schema (Alembic)",
        description="Create or upgrade the schema. For a PostgreSQL fleet, run it once, "
        "from one host, before starting the new version everywhere.",
    )
    upgrade.add_argument(
        "revision",
        nargs="?",
        default="head",
        help="schema revision to upgrade to (see: db current)",
    )
    upgrade.set_defaults(func=cmd_db_upgrade)
    current = db.add_parser(
        "current", help="show the schema revision (exit 1 when missing or behind)"
    )
    current.set_defaults(func=cmd_db_current)


def _add_run(commands: Subparsers) -> None:
    run = commands.add_parser(
        "run",
        help="run the daemon (claim, deliver, reap, reconcile)",
        description="Run the daemon. With --metrics-port it serves a dashboard (/), a health "
        "probe (/healthz), /status.json and, with the [metrics] extra, Prometheus /metrics.",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve the dashboard, /healthz and /metrics on this port (default: no HTTP)",
    )
    run.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the port listens on (loopback unless you need it elsewhere)",
    )
    run.add_argument(
        "--dashboard-actions",
        action="store_true",
        help="let the dashboard retry or discard dead outbox rows (off a loopback address "
        "it needs a token in BRIDGE_DASHBOARD_TOKEN)",
    )
    run.set_defaults(func=cmd_run)


def _add_worker(commands: Subparsers) -> None:
    worker = commands.add_parser("worker", help="run a handler on tasks from the local queue")
    worker.add_argument("--handler", required=True, help="package.module:function")
    worker.add_argument(
        "--type", action="append", required=True, help="task type to run it on (repeatable)"
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="tasks run at once (threads, processes, or coroutines for async def handlers)",
    )
    worker.add_argument("--max-tasks", type=int, default=None, help="stop after this many")
    worker.add_argument(
        "--app-dir", default=None, help="folder to import the handler from (default: current)"
    )
    worker.add_argument(
        "--time-limit",
        type=_seconds(0),
        default=None,
        help="seconds a handler may run (default: what is left of the remote lease, less "
        "lease_margin_seconds; none for local-only tasks)",
    )
    worker.add_argument(
        "--retries",
        type=int,
        default=2,
        help="local retries of a task whose handler raised bridge.Retry",
    )
    worker.add_argument(
        "--retry-backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)"
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds running handlers get after SIGTERM before their tasks are handed back",
    )
    worker.add_argument(
        "--pool",
        choices=("thread", "process"),
        default="thread",
        help="thread, or process: a handler process per slot, killed and replaced "
        "past the time limit, when it dies, or (below) when it leaks",
    )
    worker.add_argument(
        "--max-tasks-per-child", type=int, default=None, help="process pool: replace after N"
    )
    worker.add_argument(
        "--max-memory-mb",
        type=float,
        default=None,
        help="process pool: replace a handler process whose RSS grew past this",
    )
    worker.add_argument(
        "--summary-every", type=float, default=60.0, help="seconds between summary log lines"
    )
    worker.set_defaults(func=cmd_worker)


def _add_status(commands: Subparsers) -> None:
    status = commands.add_parser("status", help="queue and outbox counts, contact, outage")
    status.add_argument("--json", action="store_true", help="machine-readable (stable keys)")
    status.add_argument(
        "--watch", action="store_true", help="refresh until Ctrl-C, with rates and what is left"
    )
    status.add_argument(
        "--interval",
        type=_seconds(minimum=0.2),
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (at least 0.2)",
    )
    status.set_defaults(func=cmd_status)


def _add_health(commands: Subparsers) -> None:
    health = commands.add_parser("health", help="exit 0 when healthy, 1 when not (for probes)")
    health.add_argument(
        "--max-outbox-age",
        type=_seconds(minimum=0),
        default=900.0,
        metavar="SECONDS",
        help="seconds the oldest pending outbox row may wait",
    )
    health.add_argument(
        "--max-tick-age",
        type=_seconds(minimum=0),
        default=60.0,
        metavar="SECONDS",
        help="seconds since the daemon's last tick",
    )
    health.add_argument(
        "--require-contact",
        type=_seconds(minimum=1),
        default=None,
        metavar="SECONDS",
        help="also fail while the server has not answered for this long (never answered "
        "counts once the daemon has run this long; default: not checked)",
    )
    health.set_defaults(func=cmd_health)


def _add_prune(commands: Subparsers) -> None:
    prune = commands.add_parser("prune", help="delete settled outbox rows and finished tasks")
    prune.add_argument(
        "--older-than", required=True, metavar="AGE", help="age: 7d, 12h, 30m, 90s (required)"
    )
    prune.set_defaults(func=cmd_prune)


def _add_outbox(commands: Subparsers) -> None:
    outbox = commands.add_parser(
        "outbox", help="list outbox rows; retry or discard dead ones"
    ).add_subparsers(dest="outbox_command", metavar="{list,retry,discard}", required=True)
    listing = outbox.add_parser("list", help="rows, oldest first, with their whole reason")
    listing.add_argument(
        "--status", choices=OUTBOX_STATUSES, help="only rows in this status (default: all)"
    )
    listing.add_argument(
        "--limit", type=_count(minimum=1), default=100, metavar="N", help="most rows shown"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable")
    listing.set_defaults(func=cmd_outbox_list)
    for verb, text, func in (
        ("retry", "make dead rows pending again (the daemon sends them)", cmd_outbox_retry),
        ("discard", "end dead rows for good (kept as superseded, reason kept)", cmd_outbox_discard),
    ):
        command = outbox.add_parser(verb, help=text, description=text.capitalize() + ".")
        command.add_argument(
            "ids", nargs="*", type=_count(minimum=1), metavar="ID", help="dead row ids"
        )
        command.add_argument("--dead", action="store_true", help="every dead row")
        command.set_defaults(func=func)


def _add_tasks(commands: Subparsers) -> None:
    tasks = commands.add_parser(
        "tasks",
        help="list tasks (newest first), or show one: tasks show ID",
        description="Tasks newest first, filtered; `tasks show ID` (a local id, or "
        "remote:ID) shows one whole: params, result or error with the handler's traceback, "
        "attempts, timings, lock, and every outbox row with its verdict.",
    )
    tasks.add_argument("--status", choices=TASK_STATUSES, help="only tasks in this status")
    tasks.add_argument("--type", help="only tasks of this type")
    tasks.add_argument(
        "--since", metavar="AGE", help="only tasks created within this age (7d, 12h, 30m, 90s)"
    )
    tasks.add_argument(
        "--search", metavar="TEXT", help="an id, or text in the type, the error or the params"
    )
    tasks.add_argument(
        "--limit", type=_count(minimum=1), default=50, metavar="N", help="most tasks shown"
    )
    tasks.add_argument("--json", action="store_true", help="machine-readable")
    tasks.set_defaults(func=cmd_tasks)
    show = tasks.add_subparsers(dest="tasks_command", metavar="{show}").add_parser(
        "show", help="one task whole (ID: a local id, or remote:ID)"
    )
    show.add_argument("task", metavar="ID", help="a local task id, or remote:ID")
    show.add_argument("--json", action="store_true", help="machine-readable")
    show.set_defaults(func=cmd_tasks_show)


def _add_register_types(commands: Subparsers) -> None:
    register = commands.add_parser(
        "register-types", help="register task types from a JSON or TOML file"
    )
    register.add_argument(
        "file",
        metavar="FILE",
        help='JSON ([{"name", "version", "param_schema"}]) or TOML ([[types]] tables)',
    )
    register.set_defaults(func=cmd_register_types)


def _add_demo(commands: Subparsers) -> None:
    demo = commands.add_parser("demo", help="emulator + daemon + 2 workers, with an outage")
    demo.add_argument(
        "--tasks", type=_count(minimum=1), default=40, metavar="N", help="tasks to create"
    )
    demo.add_argument(
        "--outage-seconds",
        type=_seconds(minimum=0),
        default=4.0,
        metavar="SECONDS",
        help="how long the network is cut",
    )
    demo.set_defaults(func=cmd_demo)


COMMANDS = (
    _add_db,
    _add_run,
    _add_worker,
    _add_status,
    _add_health,
    _add_prune,
    _add_outbox,
    _add_tasks,
    _add_register_types,
    _add_demo,
)


# -- argument types and the parser ----------------------------------------------------------
def _port(text: str) -> int:
    """A TCP port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def _seconds(minimum: float) -> Callable[[str], float]:
    """A finite number of seconds, at least ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not minimum <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} s, got {text}")
        return value

    parse.__name__ = "seconds"
    return parse


def _count(minimum: int) -> Callable[[str], int]:
    """A whole number, at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS) and "default" not in text
        if shown and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit code 2, like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--config``, ``--db-url``, ``-v``, ``--log-format``: before the subcommand (``top``)
    with their defaults, and after it with none of their own (``SUPPRESS``), so that a
    value given after the subcommand wins over one given before, and one given only
    before is kept."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    after = "" if top else "; also before the command"
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"TOML config (default: $BRIDGE_CONFIG, else ./bridge.toml if it exists){after}",
    )
    parser.add_argument(
        "--db-url",
        metavar="URL",
        default=default(None),
        help="local queue database, a SQLite path or postgresql:// URL (overrides the config)"
        + after,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="debug logging" + after
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=default("text"),
        help=f"log lines on stderr: text or JSON lines{'' if top else ' (default: text)'}{after}",
    )


class CommandParser(Parser):
    """A subcommand's parser: it takes the global options too (``worker ... -v``), as
    the docs show them after the command. A subcommand's own option of the same name
    (``conflict_handler="resolve"``) takes its place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        _add_global_options(self, top=False)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="taskmanager-bridge",
        description="Local queue and outbox between workers and the TaskManager API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    commands: Subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    command: Command = args.func
    try:
        return command(args)
    except SchemaError as exc:
        # The fix names the options that chose this database, or it would fix another one.
        fix = upgrade_command(args.config, args.db_url)
        print(f"taskmanager-bridge: error: {str(exc).replace(FIX_COMMAND, fix)}", file=sys.stderr)
        return 2
    except (BridgeError, TaskManagerError) as exc:
        print(f"taskmanager-bridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskmanager-bridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
