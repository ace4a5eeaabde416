"""Prometheus metrics for the daemon (optional: the ``metrics`` extra, prometheus-client).

Served at ``/metrics`` on the dashboard's port (``bridge.dashboard_server``).

Counters are fed by the daemon's jobs; queue depth, outbox backlog and contact
age are read from the database at scrape time, so they are right whichever
process changed them (workers write the queue, not the daemon).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from ..daemon.metrics_sink import MetricsSink
from ..errors import BridgeConfigError
from ..models import OUTBOX_STATUSES, TASK_STATUSES
from .operations import Operations


class _QueueCollector:
    """Gauges computed from the database on each scrape."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        snapshot = self.operations.snapshot(datetime.now(timezone.utc))
        counts = snapshot.counts
        depth = GaugeMetricFamily(
            "taskmanager_bridge_tasks", "Local tasks by type and status", labels=["type", "status"]
        )
        # Every status of every type, 0 included: a series that is missing when nothing is
        # queued reads as "no data" in a query or an alert, not as 0.
        types = sorted(set(self.operations.config.types) | {t for t, _ in counts.tasks})
        for task_type in types:
            for status in TASK_STATUSES:
                depth.add_metric([task_type, status], counts.tasks.get((task_type, status), 0))
        yield depth
        rows = GaugeMetricFamily(
            "taskmanager_bridge_outbox_rows", "Outbox rows by status", labels=["status"]
        )
        for row_status in OUTBOX_STATUSES:
            rows.add_metric([row_status], counts.outbox.get(row_status, 0))
        yield rows
        yield GaugeMetricFamily(
            "taskmanager_bridge_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox row (0 when none)",
            value=snapshot.oldest_pending_age or 0.0,
        )
        limits = GaugeMetricFamily(
            "taskmanager_bridge_claim_limit",
            "Tasks of a type the daemon may claim now (0: holding back, see status)",
            labels=["type"],
        )
        for task_type, plan in snapshot.claim_plans.items():
            limits.add_metric([task_type], plan["limit"])
        yield limits
        state = GaugeMetricFamily(
            "taskmanager_bridge_contact",
            "The daemon's contact with the API: 1 for the current state "
            "(unknown, ok, outage, auth_failed)",
            labels=["state"],
        )
        current = snapshot.contact.state if snapshot.contact else "unknown"
        for name in ("unknown", "ok", "outage", "auth_failed"):
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        by_state = GaugeMetricFamily(
            "taskmanager_bridge_workers",
            "Worker processes by state (alive, lost: silent past 3 beats, stopped)",
            labels=["state"],
        )
        states = [worker.state for worker in snapshot.workers]
        for name in ("alive", "lost", "stopped"):
            by_state.add_metric([name], states.count(name))
        yield by_state
        beats = GaugeMetricFamily(
            "taskmanager_bridge_worker_last_beat_seconds",
            "Seconds since each worker process last recorded itself",
            labels=["worker"],
        )
        for worker in snapshot.workers:
            beats.add_metric([worker.info.id], worker.beat_age_seconds)
        yield beats
        contact = snapshot.last_contact
        since = (snapshot.now - contact).total_seconds() if contact else -1.0
        yield GaugeMetricFamily(
            "taskmanager_bridge_seconds_since_contact",
            "Seconds since the last successful answer from the API (-1: never)",
            value=since,
        )


class Metrics(MetricsSink):
    """Counters, a request-latency histogram and database gauges in one registry."""

    def __init__(self, operations: Operations) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError:
            raise BridgeConfigError(
                "metrics need prometheus-client: pip install prometheus-client "
                "(or, from a clone: pip install '.[metrics]')"
            ) from None
        self.registry = CollectorRegistry()
        self._claims = Counter(
            "taskmanager_bridge_claims", "Remote tasks claimed", ["type"], registry=self.registry
        )
        self._settled = Counter(
            "taskmanager_bridge_outbox_settled",
            "Outbox rows ended, by kind and final status",
            ["kind", "status"],
            registry=self.registry,
        )
        self._retried = Counter(
            "taskmanager_bridge_outbox_retries",
            "Outbox deliveries to try again later",
            ["kind"],
            registry=self.registry,
        )
        self._skipped = Counter(
            "taskmanager_bridge_job_runs_skipped",
            "Job runs skipped because the previous run was still going",
            ["job"],
            registry=self.registry,
        )
        self._requests = Histogram(
            "taskmanager_bridge_request_seconds",
            "TaskManager API requests, by endpoint and status",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(operations))

    def claimed(self, task_type: str, count: int) -> None:
        self._claims.labels(task_type).inc(count)

    def settled(self, kind: str, status: str) -> None:
        self._settled.labels(kind, status).inc()

    def retried(self, kind: str) -> None:
        self._retried.labels(kind).inc()

    def observe_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        self._requests.labels(method, endpoint, status).observe(seconds)

    def skipped_run(self, job: str) -> None:
        self._skipped.labels(job).inc()

    def render(self) -> bytes:
        """The exposition text that ``/metrics`` serves (``bridge.dashboard_server``)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


def metrics_available() -> bool:
    """Whether prometheus-client (the ``[metrics]`` extra) is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def daemon_metrics(operations: Operations) -> MetricsSink:
    """``Metrics`` when prometheus-client is installed, else ``MetricsSink``: the dashboard
    and /healthz do not need the extra, only /metrics does."""
    return Metrics(operations) if metrics_available() else MetricsSink()
