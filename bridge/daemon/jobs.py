"""The daemon's four jobs as one object: pull (claim), push (deliver the outbox),
reconcile (import lost claims) and reap.

Each job is a ``*_tick(now)`` method (tests call them with a fixed clock) of a class
in its own module, over the state of ``job_state``; ``DaemonJobs`` is all four.
``service.Daemon`` runs them on a scheduler. Thread-safe: different jobs may run at
once.
"""

from __future__ import annotations

from .job_state import JobState
from .pull import PullJob
from .push import PushJob
from .reap import ReapJob
from .reconcile import ReconcileJob


class DaemonJobs(PullJob, PushJob, ReconcileJob, ReapJob):
    """The daemon's jobs, over one store and one client (``JobState``)."""


__all__ = ["DaemonJobs", "JobState"]
