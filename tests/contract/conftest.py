"""Where the contract suite runs: the emulator (default) or a real deployment.

Set ``TASKMANAGER_CONTRACT_URL`` and ``TASKMANAGER_CONTRACT_KEY`` to run the
same scenarios against a real server (and ``TASKMANAGER_CONTRACT_CLAIM_TIMEOUT``
to the deployment's claim timeout in seconds for the lease-expiry scenario).
Scenarios needing fault injection or emulator settings are skipped there.
Every scenario uses fresh type names, so none assumes an empty server.
Each scenario runs twice: with ``TaskManagerClient`` and with
``AsyncTaskManagerClient`` (behind ``tests.both_clients``), so they cannot drift.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from taskmanager import TaskManagerClient, TaskManagerConfig, TaskType
from taskmanager.emulator import EmulatorServer

from ..both_clients import CLIENT_KINDS, make_client

CHANNEL_SCHEMA = {
    "type": "object",
    "properties": {"channel_url": {"type": "string", "minLength": 1}, "top_n": {"type": "integer"}},
    "required": ["channel_url"],
}


class SentRequests:
    """A client's request observer: every HTTP attempt it made, as (method, path template).

    Empty after a call means the client refused it before sending anything.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, method: str, path: str, _outcome: str, _seconds: float) -> None:
        self.calls.append((method, path))


@dataclass
class Target:
    """The server under test and what the suite may do to it."""

    url: str
    key: str
    emulator: EmulatorServer | None
    claim_timeout: float | None
    client_kind: str = "sync"

    @property
    def is_emulator(self) -> bool:
        return self.emulator is not None

    def client(self, observer: SentRequests | None = None, **config: Any) -> TaskManagerClient:
        """The client under test (blocking, or the async one behind a blocking face)."""
        values = {
            "api_url": self.url,
            "api_key": self.key,
            "backoff_base": 0.05,
            "retry_deadline": 10.0,
            **config,
        }
        client: TaskManagerClient = make_client(
            self.client_kind, TaskManagerConfig(**values), observer=observer
        )
        return client

    def raw(
        self, method: str, path: str, *, key: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """A request that bypasses the client, to see the server's own answer."""
        headers = {"X-API-Key": self.key if key is None else key, **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def let_a_second_pass(self) -> None:
        """Make the next task's ``created_at`` later than the last one's.

        The server keeps ``created_at`` to the second and orders only by it, so
        tasks created within one second have no guaranteed order between them.
        """
        if self.emulator is not None:
            self.emulator.advance_clock(1.0)
        else:
            time.sleep(1.0)

    def expire_leases(self) -> None:
        """Let every current claim run past the server's claim timeout."""
        if self.emulator is not None:
            self.emulator.advance_clock(self.emulator.settings.claim_timeout + 1)
        elif self.claim_timeout is not None:
            time.sleep(self.claim_timeout + 1)
        else:
            pytest.skip("set TASKMANAGER_CONTRACT_CLAIM_TIMEOUT to run lease expiry on a server")


@pytest.fixture(params=CLIENT_KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    kind = request.param
    url = os.environ.get("TASKMANAGER_CONTRACT_URL")
    if url:
        timeout = os.environ.get("TASKMANAGER_CONTRACT_CLAIM_TIMEOUT")
        yield Target(
            url.rstrip("/"),
            os.environ.get("TASKMANAGER_CONTRACT_KEY", ""),
            None,
            float(timeout) if timeout else None,
            kind,
        )
        return
    with EmulatorServer(api_key="contract-key") as server:
        yield Target(server.url, server.api_key, server, server.settings.claim_timeout, kind)


@pytest.fixture
def emulator(target: Target) -> EmulatorServer:
    """The emulator behind ``target``; skips the scenario against a real server."""
    if target.emulator is None:
        pytest.skip("needs fault injection or emulator settings: emulator only")
    return target.emulator


@pytest.fixture
def client(target: Target) -> Iterator[TaskManagerClient]:
    with target.client(worker_id=f"contract-{uuid.uuid4().hex[:8]}") as c:
        yield c


@pytest.fixture
def fresh_type(client: TaskManagerClient) -> Callable[..., TaskType]:
    """Register a type with a never-used name; returns the registered type."""

    def register(schema: dict[str, Any] | None = None, prefix: str = "Contract") -> TaskType:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        return client.register_task_type(name, "1.0", schema or CHANNEL_SCHEMA)

    return register
