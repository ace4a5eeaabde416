"""The schema and history subcommands: ``db upgrade``, ``db current``, ``prune``."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from ..errors import BridgeError
from ..ops.operations import Operations, sqlite_file_missing, upgrade_command
from ..storage import migrations
from .common import load_config, parse_age, where


# -- db ----------------------------------------------------------------------------------
def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = load_config(args)
    known = migrations.known_revisions()
    if args.revision not in ("head", *known):
        raise BridgeError(
            f"db upgrade: no schema revision {args.revision!r} "
            f"(known: {', '.join(known)}; head is {known[-1]})"
        )
    migrations.upgrade(config.db_url, args.revision)
    print(f"{where(config)}: at schema revision {migrations.current(config.db_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    config = load_config(args)
    fix = upgrade_command(args.config, args.db_url)
    missing = sqlite_file_missing(config.db_url)  # opening it would create an empty file
    if missing is not None:
        print(f"{where(config)}: no taskmanager-bridge schema (no such file; create it: {fix})")
        return 1
    revision = migrations.current(config.db_url)
    if revision is None:
        print(f"{where(config)}: no taskmanager-bridge schema (run: {fix})")
        return 1
    expected = migrations.head_revision()
    state = "up to date" if revision == expected else f"expected {expected}"
    print(f"{where(config)}: schema revision {revision} ({state})")
    return 0 if revision == expected else 1


def cmd_prune(args: argparse.Namespace) -> int:
    age = parse_age(args.older_than)
    with Operations.open(load_config(args)) as operations:
        rows, finished, workers = operations.prune(age, datetime.now(timezone.utc))
    print(
        f"pruned {rows} settled outbox row(s), {finished} finished task(s) and {workers} "
        f"silent worker(s) older than {args.older_than}; nothing pending or dead was touched"
    )
    return 0
