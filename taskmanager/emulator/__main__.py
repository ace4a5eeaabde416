"""``python -m taskmanager.emulator``: run the emulator in the foreground, logging each request."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from ..config import is_loopback_host
from .app import EmulatorSettings
from .server import EmulatorServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskmanager.emulator",
        description="Run a TaskManager API emulator (for tests and demos, never production).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="dev", help="the X-API-Key it accepts")
    parser.add_argument("--claim-timeout", type=float, default=300.0, help="lease in seconds")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--db", default=":memory:", help="SQLite file to keep state in")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per window")
    parser.add_argument("--rate-window", type=float, default=60.0)
    parser.add_argument("--max-body-bytes", type=int, default=1_048_576)
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
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with EmulatorServer(settings, host=args.host, port=args.port) as server:
        logging.info(
            "TaskManager emulator on %s (claim timeout %.0f s)", server.url, settings.claim_timeout
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
