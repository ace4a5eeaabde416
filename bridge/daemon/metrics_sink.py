"""What the daemon reports as it works, for whoever counts it (Prometheus, with the
``[metrics]`` extra: ``bridge.ops.metrics``). This one counts nothing: the daemon runs
the same with metrics off."""

from __future__ import annotations


class MetricsSink:
    """The daemon's reports; each does nothing here."""

    def claimed(self, task_type: str, count: int) -> None:
        """Remote tasks claimed."""

    def settled(self, kind: str, status: str) -> None:
        """An outbox row ended delivered, superseded or dead."""

    def retried(self, kind: str) -> None:
        """An outbox row will be tried again later."""

    def observe_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP attempt to the TaskManager API."""

    def skipped_run(self, job: str) -> None:
        """A job's run skipped because its previous run was still going."""
