"""What operators read and fix: ``status``, ``health``, ``outbox``, ``register-types``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from taskmanager import TaskManagerClient

from ..config import BridgeConfig
from ..config_values import parse_toml
from ..errors import BridgeError
from ..ops.operations import Operations
from ..ops.status_text import progress_lines, status_lines
from ..times import ago
from .common import load_config


# -- status ------------------------------------------------------------------------------
def status_document(config: BridgeConfig, now: datetime | None = None) -> dict[str, Any]:
    """What ``status --json`` prints (a stable shape, see docs/OPERATIONS.md)."""
    with Operations.open(config) as operations:
        return operations.snapshot(now or datetime.now(timezone.utc)).to_json()


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args)
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
        return 130  # Ctrl-C, the way to stop it: quietly, with the documented code


def _print_status(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print("\n".join(status_lines(doc, datetime.now(timezone.utc))))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """0 when healthy, 1 otherwise, with the reason: for systemd, Docker, Kubernetes probes."""
    with Operations.open(load_config(args)) as operations:
        problems = operations.health_problems(
            datetime.now(timezone.utc), args.max_outbox_age, args.max_tick_age, args.require_contact
        )
    if problems:
        print("unhealthy: " + "; ".join(problems))
        return 1
    print("healthy")
    return 0


# -- outbox --------------------------------------------------------------------------------
def cmd_outbox_list(args: argparse.Namespace) -> int:
    with Operations.open(load_config(args)) as operations:
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
    with Operations.open(load_config(args)) as operations:
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
    config = load_config(args)
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
