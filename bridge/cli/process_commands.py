"""The long-running subcommands: ``run`` (the daemon), ``worker``, ``demo``."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from taskmanager import TaskManagerClient

from ..config import BridgeConfig
from ..daemon.metrics_sink import MetricsSink
from ..errors import BridgeConfigError
from ..ops.metrics import Metrics, daemon_metrics
from ..ops.operations import Operations
from ..storage import check_schema, open_store
from .common import load_config

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# -- run / worker ----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from ..daemon.jobs import DaemonJobs
    from ..daemon.service import Daemon

    config = load_config(args)
    if not config.types:
        raise BridgeConfigError(
            "types: the daemon needs the task types to claim "
            '(types = ["..."] in the config, or BRIDGE_TYPES=a,b)'
        )
    if not config.client_config().api_key:  # every request would be refused, for ever
        raise BridgeConfigError(
            "no API key: set TASKMANAGER_API_KEY in the daemon's environment "
            "(or api_key in [taskmanager] of the config file)"
        )
    from ..daemon.descriptors import descriptor_need, ensure_descriptors
    from ..ops.dashboard_app import TOKEN_VARIABLE, ActionPolicy
    from ..ops.dashboard_server import DashboardLimits

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
        with contextlib.closing(client):
            stop_asked = threading.Event()
            jobs = _wait_for_database(
                lambda: DaemonJobs(store, client, config, metrics=metrics),
                lambda: check_schema(store.engine),
                stop_asked,
            )
            logging.getLogger("bridge.daemon").info("requests to the server go through %s", http)
            daemon = Daemon(jobs)
            # Before anything is visible from outside: a SIGTERM sent as soon as the page
            # answers must stop the daemon cleanly, not kill it.
            daemon.handle_signals()
            if stop_asked.is_set():  # a signal came as the start succeeded: stop cleanly
                daemon.request_stop()
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
    from ..ops.dashboard_app import DashboardApp
    from ..ops.dashboard_server import DashboardServer

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


def _wait_for_database(
    start: Callable[[], T], check: Callable[[], None], stop_asked: threading.Event
) -> T:
    """Start in spite of passing database trouble (a write lock held longer than the busy
    timeout, a full disk): waited out and logged once, not an exit; a signal meanwhile
    stops the start (exit 0). A schema that is missing or wrong still stops it.

    A signal that comes while ``start`` succeeds is left set in ``stop_asked`` for the
    caller to honour, and on success the handler that sets it stays until the caller
    installs its own: swallowed here, a SIGTERM left a daemon that had taken its role
    running on (seen under load, when a test stopped it as soon as it showed), and with
    the default handler back in between, it would have killed it outright."""
    from ..storage import GaveUp, Patience

    previous = {sig: signal.signal(sig, lambda *_: stop_asked.set()) for sig in STOP_SIGNALS}
    started = False
    try:
        jobs = Patience(check, backoff_max_seconds=5.0).call(
            "starting the daemon", start, stop_asked
        )
        started = True
        return jobs
    except GaveUp:
        raise SystemExit(0) from None
    finally:
        if not started:
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
    config = load_config(args)
    warn_unclaimed_types(config, args.type)
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


def warn_unclaimed_types(config: BridgeConfig, types: list[str]) -> None:
    """A worker for a type the daemon does not claim waits for ever, silently: say so at
    start, with the configured name a typo most likely meant. Only when the config lists
    ``types`` at all (a queue used without a daemon has none)."""
    unclaimed = [name for name in dict.fromkeys(types) if name not in config.types]
    if not config.types or not unclaimed:
        return
    named = []
    for name in unclaimed:
        close = difflib.get_close_matches(name, config.types, n=1)
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
    logging.getLogger("bridge.worker").warning(
        "type %s not in the config's types (%s), the ones the daemon claims: its tasks "
        "come only if queued locally (LocalQueue.enqueue)",
        ", ".join(named),
        ", ".join(config.types),
    )


# -- demo ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from ..ops.demo import run_demo

    return run_demo(tasks=args.tasks, outage_seconds=args.outage_seconds)
