"""``LocalQueue``: the API workers use. They never talk to the network.

Every call is one local transaction. ``complete``/``fail``/``progress`` write
the task's new state AND the outbox row the daemon will deliver, so a result
is durable, and will reach the server, the moment the call returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from taskmanager import dedupe_key
from taskmanager.closing import ClosedOnExit
from taskmanager.dedupe import canonical_params
from taskmanager.redact import redact_text
from taskmanager.validation import (
    check_params_shape,
    check_schema,
    check_stored_size,
    check_type_name,
    compile_schema,
    fit_error_text,
    validate_params,
)

from .config import BridgeConfig
from .errors import TaskNotHeldError, ValidationError
from .models import LocalTask, OutboxEntry, OutboxStatus, QueueCounts, WorkerInfo
from .payloads import (
    bounded_detail,
    encoded,
    encoded_object,
    stored_result,
    traceback_text,
    validated,
)
from .storage import NewTask, Store, Write, open_store
from .times import utcnow


def default_lock_owner() -> str:
    """Unique per process on a host: two workers never share a lock owner."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LocalQueue(ClosedOnExit):
    """The durable local queue (SQLite file by default, PostgreSQL for a fleet).

    ``LocalQueue("queue.db")``, ``LocalQueue("postgresql://...")`` or
    ``LocalQueue(config=BridgeConfig.load())``. The database must carry the
    current schema (``taskmanager-bridge db upgrade``); ``migrate=True`` runs
    that upgrade first.
    """

    def __init__(
        self,
        db_url: str | None = None,
        *,
        config: BridgeConfig | None = None,
        locked_by: str | None = None,
        migrate: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``locked_by``: who holds the tasks this queue takes (the ``locked_by`` column;
        default host-pid), not the remote worker id, which is the daemon's."""
        if config is None:
            config = BridgeConfig.load(db_url=db_url)
        elif db_url is not None:  # the given config, with this database
            config = dataclasses.replace(config, db_url=db_url)
        self.config = config
        if migrate:
            from .storage.migrations import upgrade

            upgrade(self.config.db_url)
        self.store: Store = open_store(self.config.db_url, self.config.busy_timeout_seconds)
        self.locked_by = locked_by or default_lock_owner()
        self.clock = clock
        self._validators: dict[str, tuple[str, Any]] = {}
        self._queue_id: str | None = None

    def close(self) -> None:
        self.store.close()

    # -- the worker's calls ------------------------------------------------------------
    def dequeue(
        self,
        types: Sequence[str] | str | None = None,
        locked_by: str | None = None,
        lock_seconds: float | None = None,
    ) -> LocalTask | None:
        """The next task (highest priority, then oldest), locked to ``locked_by`` (default:
        this queue's), or None."""
        wanted = [types] if isinstance(types, str) else types
        return self.store.dequeue(
            wanted,
            locked_by or self.locked_by,
            lock_seconds if lock_seconds is not None else self.config.lock_seconds,
            self.config.lease_margin_seconds,
            self.clock(),
        )

    def any_queued(self, types: Sequence[str] | None = None) -> bool:
        """Whether a task of ``types`` may be waiting: a look that takes no write lock
        (a worker's idle slots look before they try to take)."""
        return self.store.any_queued(types)

    def heartbeat(self, task: LocalTask, lock_seconds: float | None = None) -> datetime:
        """Keep the lock while working; returns the new lock expiry."""
        return self.store.heartbeat(
            task,
            lock_seconds if lock_seconds is not None else self.config.lock_seconds,
            self.clock(),
        )

    def progress(self, task: LocalTask, percent: int, message: str | None = None) -> None:
        """Record progress (renews the lock); the newest value replaces an unsent older one."""
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValidationError(f"progress must be an int 0..100, got {percent!r}")
        self.store.record_progress(task, percent, message, self.config.lock_seconds, self.clock())

    def complete(
        self,
        task: LocalTask,
        result: Mapping[str, Any] | None = None,
        *,
        writes: Sequence[Write] = (),
    ) -> None:
        """Finish the task; durable (and queued for the server) when this returns.

        ``result`` goes through the encoder (``payloads.encoded``): a value it cannot
        encode raises ``ValidationError`` naming its key path, and nothing is written; so
        does a result over the server's 65,535 bytes (``payloads.stored_result``).
        ``writes``: the handler's own writes, each ``write(connection)`` run in this same
        transaction (``TaskContext.write_with_result``); one that raises rolls all back
        (``WriteFailed``)."""
        stored = stored_result(result)
        if writes:
            self.store.complete_with_writes(task, stored, writes, self.clock())
        else:
            self.store.complete(task, stored, self.clock())

    def complete_and_dequeue(
        self,
        task: LocalTask,
        result: Mapping[str, Any] | None = None,
        types: Sequence[str] | str | None = None,
        lock_seconds: float | None = None,
        *,
        writes: Sequence[Write] = (),
    ) -> LocalTask | None:
        """``complete(task)`` then ``dequeue()`` for the same worker, in one transaction.

        Half the commits of the two calls: the worker loop's fast path.
        """
        wanted = [types] if isinstance(types, str) else types
        seconds = lock_seconds if lock_seconds is not None else self.config.lock_seconds
        margin = self.config.lease_margin_seconds
        if writes:
            take = (wanted, seconds, margin)
            return self.store.complete_with_writes(
                task, stored_result(result), writes, self.clock(), take
            )
        return self.store.complete_and_dequeue(
            task, stored_result(result), wanted, seconds, margin, self.clock()
        )

    def idempotency_key(self, task: LocalTask) -> str:
        """One text for every run and attempt of ``task``, for ``record_once``:
        ``taskmanager-task-<remote id>`` for a remote task (the server's ids: one server
        per database of yours, or forget the keys if its ids ever start over), and
        ``local-task-<queue id>-<id>-<created>`` for a local-only one (the queue database's
        own random id, so two queues writing into one database never share a key, and
        its creation time in microseconds, as SQLite may give a pruned task's id again)."""
        if task.remote_id is not None:
            return f"taskmanager-task-{task.remote_id}"
        created = round(task.created_at.timestamp() * 1_000_000)
        return f"local-task-{self.queue_id()}-{task.id}-{created}"

    def queue_id(self) -> str:
        """This queue database's own random id (made on first use, then read once)."""
        if self._queue_id is None:
            self._queue_id = self.store.queue_identity(self.clock())
        return self._queue_id

    def fail(
        self,
        task: LocalTask,
        error: str | BaseException,
        retry: bool = False,
        *,
        delay_seconds: float = 0.0,
        detail: str | None = None,
    ) -> None:
        """Report a failure. ``retry=True`` puts the task back in the local queue instead,
        handed out again after ``delay_seconds`` (while its remote lease allows; the worker's
        retry policy never asks for a delay past it); otherwise the failure is queued for
        the server, which retries it up to its attempt limit. An error text longer than the
        server stores (65,535 bytes) is cut to fit, marked as cut: a failure must always
        reach the server. ``detail`` (the handler's traceback) is kept locally, bounded and
        with the secrets the queue knows masked (``error_detail``); an exception given as
        ``error`` brings its own."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        text = fit_error_text(redact_text(text, self._secrets()))  # it goes to the server
        if detail is None and isinstance(error, BaseException):
            detail = traceback_text(error)
        if detail is not None:
            detail = bounded_detail(redact_text(detail, self._secrets()))
        now = self.clock()
        not_before = now + timedelta(seconds=delay_seconds) if retry and delay_seconds > 0 else None
        self.store.fail(task, text or "failed", retry, now, not_before, detail)

    def _secrets(self) -> list[str | None]:
        """What a traceback must never show: the API key and the dashboard's token, as this
        process knows them."""
        return [
            os.environ.get("TASKMANAGER_API_KEY"),
            str(self.config.taskmanager.get("api_key") or "") or None,
            os.environ.get("BRIDGE_DASHBOARD_TOKEN"),
        ]

    def release(self, task: LocalTask, reason: str) -> None:
        """Hand a held task back to the queue, unfailed, for any worker to take at once
        (a worker stopping before its handler finished)."""
        self.store.fail(task, reason, True, self.clock())

    def enqueue(
        self,
        task_type: str,
        payload: Mapping[str, Any],
        priority: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> LocalTask:
        """Add a local-only task (the specification's hybrid pattern; nothing is sent)."""
        params = encoded_object(payload, "payload")
        meta = encoded_object(metadata, "metadata")
        return self.store.enqueue(task_type, params, int(priority), meta, self.clock())

    # -- batches: one transaction (and one commit) for many tasks -----------------------
    def enqueue_many(
        self,
        items: Iterable[tuple[str, Mapping[str, Any]]],
        priority: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[LocalTask]:
        """``enqueue`` for many ``(type, payload)`` in ONE transaction (one commit): all
        are added, or (on any error) none."""
        meta, rank = encoded_object(metadata, "metadata"), int(priority)
        batch: list[NewTask] = [
            (task_type, encoded_object(payload, "payload"), rank, meta)
            for task_type, payload in items
        ]
        return self.store.enqueue_many(batch, self.clock()) if batch else []

    def dequeue_many(
        self,
        limit: int,
        types: Sequence[str] | str | None = None,
        lock_seconds: float | None = None,
    ) -> list[LocalTask]:
        """Up to ``limit`` tasks for this worker in one transaction, best first; each is
        locked (and its lock renewed by ``heartbeat``) on its own."""
        return self.store.dequeue_many(
            [types] if isinstance(types, str) else types,
            self.locked_by,
            limit,
            lock_seconds if lock_seconds is not None else self.config.lock_seconds,
            self.config.lease_margin_seconds,
            self.clock(),
        )

    def complete_many(
        self, finished: Iterable[tuple[LocalTask, Mapping[str, Any] | None]]
    ) -> list[TaskNotHeldError]:
        """Finish many tasks in ONE transaction: every result is durable (and queued for
        the server) when this returns. A task this worker no longer holds changes nothing
        and comes back as its ``TaskNotHeldError``; the others are done regardless."""
        return self.store.complete_many(self._results(finished), self.clock())

    def complete_many_and_dequeue(
        self,
        finished: Iterable[tuple[LocalTask, Mapping[str, Any] | None]],
        limit: int,
        types: Sequence[str] | str | None = None,
        lock_seconds: float | None = None,
    ) -> tuple[list[TaskNotHeldError], list[LocalTask]]:
        """``complete_many`` then ``dequeue_many(limit)``, in ONE transaction: the batch
        worker loop (one commit per batch). Returns (refusals, the next tasks)."""
        return self.store.complete_many_and_dequeue(
            self._results(finished),
            self.locked_by,
            limit,
            [types] if isinstance(types, str) else types,
            lock_seconds if lock_seconds is not None else self.config.lock_seconds,
            self.config.lease_margin_seconds,
            self.clock(),
        )

    @staticmethod
    def _results(
        finished: Iterable[tuple[LocalTask, Mapping[str, Any] | None]],
    ) -> list[tuple[LocalTask, dict[str, Any]]]:
        return [(task, stored_result(result)) for task, result in finished]

    def record_worker(self, info: WorkerInfo) -> None:
        """Record this worker process (``status``, the dashboard, the metrics show it)."""
        self.store.register_worker(info)

    def worker_beat(self, done: int, failed: int, *, stopped: bool = False) -> None:
        """This worker process is alive (or has ``stopped``), with its counts."""
        self.store.worker_beat(self.locked_by, done, failed, self.clock(), stopped=stopped)

    def get(self, task_id: int) -> LocalTask | None:
        return self.store.get_task(task_id)

    # -- remote side effects, queued (work offline) -------------------------------------
    def create_remote_task(
        self, task_type: str, params: Mapping[str, Any], priority: int = 0
    ) -> OutboxEntry:
        """Queue a remote task creation, validated against the type's cached schema.

        The same params queued twice before delivery give the same outbox row.
        """
        checked = validated(lambda: check_params_shape(encoded(params, "params")))
        self._validate_against_cache(task_type, checked)
        canonical = canonical_params(checked)
        # Over the server's 65,535 bytes, the create could never be delivered: refused now.
        validated(lambda: check_stored_size(canonical, "params", "params_json"))
        return self.store.queue_create_task(
            task_type, canonical, int(priority), dedupe_key(task_type, canonical), self.clock()
        )

    def register_task_type(
        self, name: str, version: str, param_schema: Mapping[str, Any]
    ) -> OutboxEntry:
        """Queue a type registration; its schema validates ``create_remote_task`` at once.

        A name the server could never look up again (it needs percent-encoding in a URL
        path) is refused: its tasks could never be claimed."""
        validated(lambda: check_type_name(name))
        schema = validated(lambda: check_schema(param_schema))
        return self.store.queue_register_type(name, version, schema, self.clock())

    def _validate_against_cache(self, task_type: str, params: dict[str, Any]) -> None:
        cached = self.store.cached_task_type(task_type)
        if cached is None or not cached.param_schema:
            return
        fingerprint = json.dumps(cached.param_schema, sort_keys=True)
        known = self._validators.get(task_type)
        if known is None or known[0] != fingerprint:
            known = (fingerprint, compile_schema(cached.param_schema))
            self._validators[task_type] = known
        validated(lambda: validate_params(known[1], task_type, params))

    # -- observation ---------------------------------------------------------------------
    def status(self) -> QueueCounts:
        return self.store.counts()

    def outbox(self, status: OutboxStatus | None = None, limit: int = 100) -> list[OutboxEntry]:
        return self.store.outbox_entries(status, limit)
