"""The client vs the upstream example worker's style and vs a bare requests.Session.

    python tests/bench/client.py [N] [--rounds R]

Against the emulator over HTTP/1.1 keep-alive: N creates, then N claim+complete
pairs, three ways in the same run:

* ours: ``TaskManagerClient`` (envelope parsing, models, validation, retries);
* per-call: a new ``requests.post`` per call (the upstream example worker's style);
* bare session: one ``requests.Session`` sending the same requests, parsing JSON
  and nothing else (the floor).

Targets: ours at most 1.10x the bare session's time; faster than per-call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from taskmanager import TaskManagerClient, TaskManagerConfig
from taskmanager.emulator import EmulatorServer

TYPE = "bench.client"


def _seconds(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


@dataclass(frozen=True)
class _Raw:
    """The same calls as the client makes, written by hand on a ``requests`` sender."""

    url: str
    headers: dict[str, str]
    type_id: int
    n: int

    def post(self, send: Callable[..., Any], path: str, body: dict[str, Any]) -> Any:
        return send(self.url + path, json=body, headers=self.headers, timeout=30).json()["data"]

    def creates(self, send: Callable[..., Any], base: int) -> None:
        for i in range(self.n):
            self.post(send, "/tasks", {"type": TYPE, "params": {"n": base + i}})

    def cycles(self, send: Callable[..., Any]) -> None:
        for _ in range(self.n):
            claim = {"worker_id": "bench", "task_type_id": self.type_id}
            task = self.post(send, "/tasks/claim", claim)
            done = {"worker_id": "bench", "success": True, "result": {"ok": True}}
            self.post(send, f"/tasks/{task['id']}/complete", done)


def one_round(n: int, offset: int, rotation: int) -> dict[str, float]:
    with EmulatorServer() as server:
        ours = TaskManagerClient(
            TaskManagerConfig.from_env(
                {}, api_url=server.url, api_key=server.api_key, worker_id="bench"
            )
        )
        type_id = ours.register_task_type(TYPE, "1", {"type": "object"}).id
        headers = {"X-API-Key": server.api_key, "Content-Type": "application/json"}
        raw = _Raw(server.url, headers, type_id, n)
        session = requests.Session()

        def ours_creates() -> None:
            for i in range(n):
                ours.create_task(TYPE, {"n": offset + i})

        def ours_cycles() -> None:
            for _ in range(n):
                task = ours.claim_task(task_type=TYPE)
                assert task is not None
                ours.complete_task(task.id, {"ok": True})

        contenders = {
            "ours": (ours_creates, ours_cycles),
            "bare": (
                lambda: raw.creates(session.post, offset + n),
                lambda: raw.cycles(session.post),
            ),
            "per-call": (
                lambda: raw.creates(requests.post, offset + 2 * n),
                lambda: raw.cycles(requests.post),
            ),
        }
        order = list(contenders)
        order = order[rotation % 3 :] + order[: rotation % 3]  # the table grows: take turns first
        times: dict[str, float] = {}
        for who in order:
            create, cycle = contenders[who]
            times[f"{who} create"] = _seconds(create)
            times[f"{who} claim+complete"] = _seconds(cycle)
        ours.close()
        session.close()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round(args.n, r * 10 * args.n, r) for r in range(args.rounds)]
    keys = [
        f"{who} {what}"
        for who in ("ours", "bare", "per-call")
        for what in ("create", "claim+complete")
    ]
    median = {key: statistics.median(r[key] for r in rounds) for key in keys}
    print(f"{args.n} operations each, median of {args.rounds} rounds (seconds; ops/s)")
    for key, seconds in median.items():
        print(f"  {key:28s} {seconds:7.2f} s  {args.n / seconds:7.0f}/s")
    for what in ("create", "claim+complete"):
        ours, bare, per_call = (median[f"{who} {what}"] for who in ("ours", "bare", "per-call"))
        print(
            f"  {what}: ours / bare session time {ours / bare:.2f}x (target <= 1.10x); "
            f"per-call / ours time {per_call / ours:.2f}x (target > 1.00x)"
        )


if __name__ == "__main__":
    main()
