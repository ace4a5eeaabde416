"""``taskmanager-bridge``: the command line of the bridge.

Each subcommand is a function taking the parsed arguments and returning an
exit code; errors of the bridge become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import migrate
from .config import BridgeConfig
from .database import display_url, normalise_url
from .errors import BridgeError
from .schema import SCHEMA_REVISION

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig.load(args.config, db_url=args.db_url)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = _config(args)
    migrate.upgrade(config.db_url, args.revision)
    where = display_url(normalise_url(config.db_url))
    print(f"{where}: at schema revision {migrate.current(config.db_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    config = _config(args)
    revision = migrate.current(config.db_url)
    where = display_url(normalise_url(config.db_url))
    if revision is None:
        print(f"{where}: no taskmanager-bridge schema (run: taskmanager-bridge db upgrade)")
        return 1
    state = "up to date" if revision == SCHEMA_REVISION else f"expected {SCHEMA_REVISION}"
    print(f"{where}: schema revision {revision} ({state})")
    return 0 if revision == SCHEMA_REVISION else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmanager-bridge",
        description="Local queue and outbox between workers and the TaskManager API.",
    )
    parser.add_argument(
        "--config", help="TOML config file (default: $BRIDGE_CONFIG or ./bridge.toml)"
    )
    parser.add_argument("--db-url", help="local queue database (overrides the config)")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="the local queue's schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(handler=cmd_db_current)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except BridgeError as exc:
        print(f"taskmanager-bridge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
