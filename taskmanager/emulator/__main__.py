"""``taskmanager-emulator`` (or ``python -m taskmanager.emulator``): run the emulator in
the foreground, logging each request. Bad arguments and a port that cannot be bound
are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from ..config import is_loopback_host
from .app import REALISTIC_COSTS, EmulatorSettings
from .server import EmulatorServer


class _Formatter(argparse.HelpFormatter):
    """Shows an option's default unless its help already says it (or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """One line and exit code 2 for bad arguments, defaults shown in --help."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=_Formatter,
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _bounded(
    kind: Callable[[str], float], low: float, high: float | None = None
) -> Callable[[str], float]:
    """A number of ``kind`` within [low, high]: out of range is a usage error, not a crash."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high) or value != value:
            bound = f"{low:g}-{high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bound})")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="taskmanager-emulator",
        description="Run a TaskManager API emulator (for tests and demos, never production).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=_bounded(int, 0, 65535), default=8765, help="TCP port")
    parser.add_argument("--api-key", default="dev", help="the X-API-Key it accepts")
    parser.add_argument(
        "--claim-timeout", type=_bounded(float, 0.001), default=300.0, help="lease in seconds"
    )
    parser.add_argument(
        "--max-attempts", type=_bounded(int, 1), default=3, help="claims of a task before it fails"
    )
    parser.add_argument("--db", default=":memory:", help="SQLite file to keep state in")
    parser.add_argument(
        "--rate-limit",
        type=_bounded(int, 1),
        default=None,
        help="requests per window before 429 (default: no limit)",
    )
    parser.add_argument(
        "--rate-window", type=_bounded(float, 0.001), default=60.0, help="rate window in seconds"
    )
    parser.add_argument(
        "--max-body-bytes", type=_bounded(int, 1), default=1_048_576, help="largest request body"
    )
    parser.add_argument(
        "--round-trip-ms",
        type=_bounded(float, 0.0),
        default=0.0,
        help="network delay to emulate: half of it each way, holding no server capacity",
    )
    parser.add_argument(
        "--realistic-costs",
        action="store_true",
        help="serve as the measured PHP server does: 3 ms a request, 4 at a time, 1 deadlock "
        "500 in ~300 completions",
    )
    parser.add_argument(
        "--no-quirks",
        action="store_true",
        help="answer as intended: 404 for an empty claim, working GET /task-types",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not is_loopback_host(args.host):
        logging.warning("listening on %s: the emulator is for tests, not a network", args.host)
    settings = EmulatorSettings(
        api_key=args.api_key,
        claim_timeout=args.claim_timeout,
        max_attempts=args.max_attempts,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        max_body_bytes=args.max_body_bytes,
        quirks=not args.no_quirks,
        db_path=args.db,
        network_seconds=args.round_trip_ms / 2000,
        **(REALISTIC_COSTS if args.realistic_costs else {}),  # type: ignore[arg-type]
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = EmulatorServer(settings, host=args.host, port=args.port)
        server.start()
    except OSError as exc:
        print(
            f"taskmanager-emulator: error: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    except sqlite3.Error as exc:
        print(f"taskmanager-emulator: error: --db {args.db}: {exc}", file=sys.stderr)
        return 2
    with server:
        logging.info(
            "TaskManager emulator on %s (claim timeout %.0f s)", server.url, settings.claim_timeout
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
