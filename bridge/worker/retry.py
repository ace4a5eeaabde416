"""Retry policy per task type: how often a failed handler run is tried again locally,
and after how long.

Only what the handler marks as worth retrying is retried: a raised ``Retry``, or an
exception class listed in ``retry_on``. Everything else fails the task at once, and
the failure goes to the server, which runs the task again up to its own attempt
limit (3 on the reference deployment). Local retries count the task's local starts
(``LocalTask.attempts``), which are never reset, so they are spent within the first
remote claim: a task runs at most ``attempts`` + (server attempts - 1) times.
The jitter comes from an injected ``random.Random`` so tests can pin it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class Retry(Exception):
    """Raise from a handler to run its task again later (within its policy's attempts).

    ``after`` overrides the policy's back-off for this retry (seconds).
    """

    def __init__(self, reason: str = "retry requested", *, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after

    def __reduce__(self) -> tuple[type[Retry], tuple[str], dict[str, float | None]]:
        """Pickled whole (``after`` included): it crosses a pipe from a handler process."""
        return (type(self), (str(self),), {"after": self.after})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` local runs at most; the n-th retry waits ``backoff * 2**(n-1)``, capped
    at ``backoff_max``, each delay spread by up to ``jitter`` of itself either way."""

    attempts: int = 3
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: float = 0.25
    retry_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.backoff_max < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff and backoff_max must be >= 0, jitter in 0..1")

    def retries(self, error: BaseException) -> bool:
        return isinstance(error, (Retry, *self.retry_on))

    def delay(self, attempts_done: int, error: BaseException, rng: random.Random) -> float | None:
        """Seconds to wait before the next run, or ``None`` when the task should fail now."""
        if not self.retries(error) or attempts_done >= self.attempts:
            return None
        if isinstance(error, Retry) and error.after is not None:
            return max(0.0, float(error.after))
        base = min(self.backoff_max, self.backoff * 2.0 ** max(0, attempts_done - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


NO_RETRY = RetryPolicy(attempts=1)
