"""The asyncio client vs the blocking client on threads, at the same concurrency.

    python tests/bench/async_client.py [N] [--concurrency C] [--rounds R] [--no-costs]

Against the emulator with the measured server's costs (``REALISTIC_COSTS``: 3 ms
a request, 4 served at once, deadlock 500s now and then, which both clients
retry), N creates, then N claim+complete pairs, with C callers at once:

* async: one ``AsyncTaskManagerClient``, C coroutines on one event loop;
* threads: one ``TaskManagerClient`` shared by C threads;
* loop: the same, built with ``http="aiohttp"`` (its requests carried out by aiohttp
  on an event loop of its own thread: the bridge daemon's default with the extra).

Both open their connections and look up the type id before the clock starts.
Rounds alternate which goes first. Prints each round, then per operation the
median and spread of both times, the ratio async / threads, and the CPU seconds
of this process (the emulator's threads included: the same for both).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from taskmanager import TaskManagerClient
from taskmanager.emulator import EmulatorServer
from taskmanager.emulator.app import REALISTIC_COSTS

TYPE = "bench.async"


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _share(n: int, callers: int) -> list[int]:
    return [n // callers + (1 if i < n % callers else 0) for i in range(callers)]


def threads_round(
    server: EmulatorServer, n: int, callers: int, base: int, http: str = "requests"
) -> dict[str, Any]:
    config = server.client_config(worker_id="bench-threads")
    client = TaskManagerClient(config, http=http)  # type: ignore[arg-type]

    def in_threads(work: Callable[[int, int], None]) -> None:
        offsets = [base + sum(_share(n, callers)[:i]) for i in range(callers)]
        threads = [
            threading.Thread(target=work, args=(offsets[i], count))
            for i, count in enumerate(_share(n, callers))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def creates(offset: int, count: int) -> None:
        for i in range(count):
            client.create_task(TYPE, {"n": offset + i})

    def cycles(_offset: int, count: int) -> None:
        for _ in range(count):
            task = client.claim_task(task_type=TYPE)
            assert task is not None
            client.complete_task(task.id, {"ok": True})

    def warm(_offset: int, _count: int) -> None:
        client.task_type_id(TYPE)
        client.health_check()

    try:
        in_threads(warm)  # connections opened, the type id looked up: not timed
        return {
            "create": _timed(lambda: in_threads(creates)),
            "claim+complete": _timed(lambda: in_threads(cycles)),
        }
    finally:
        client.close()


def async_round(server: EmulatorServer, n: int, callers: int, base: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with server.async_client(worker_id="bench-async") as client:
            await client.task_type_id(TYPE)
            await asyncio.gather(*(client.health_check() for _ in range(callers)))  # connect

            async def creates(offset: int, count: int) -> None:
                for i in range(count):
                    await client.create_task(TYPE, {"n": offset + i})

            async def cycles(_offset: int, count: int) -> None:
                for _ in range(count):
                    task = await client.claim_task(task_type=TYPE)
                    assert task is not None
                    await client.complete_task(task.id, {"ok": True})

            async def together(work: Callable[[int, int], Any]) -> tuple[float, float]:
                cpu, wall = time.process_time(), time.perf_counter()
                shares = _share(n, callers)
                await asyncio.gather(
                    *(work(base + sum(shares[:i]), c) for i, c in enumerate(shares))
                )
                return time.perf_counter() - wall, time.process_time() - cpu

            return {"create": await together(creates), "claim+complete": await together(cycles)}

    return asyncio.run(main())


def spread(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-costs", action="store_true", help="an emulator without costs")
    args = parser.parse_args()
    costs: dict[str, Any] = {} if args.no_costs else dict(REALISTIC_COSTS)
    runs: dict[str, list[dict[str, Any]]] = {"async": [], "threads": [], "loop": []}
    rounds: dict[str, Callable[..., dict[str, Any]]] = {
        "async": async_round,
        "threads": threads_round,
        "loop": lambda *a: threads_round(*a, http="aiohttp"),
    }
    with EmulatorServer(**costs) as server:
        server.client().register_task_type(TYPE, "1", {"type": "object"})
        for round_ in range(args.rounds):
            kinds = list(runs)
            order = kinds[round_ % 3 :] + kinds[: round_ % 3]  # each goes first in turn
            for who in order:
                base = (round_ * 3 + kinds.index(who)) * args.n
                runs[who].append(rounds[who](server, args.n, args.concurrency, base))
            print(
                f"round {round_ + 1}: "
                + "  ".join(
                    f"{who} {op} {runs[who][-1][op][0]:.2f} s"
                    for who in runs
                    for op in ("create", "claim+complete")
                ),
                flush=True,
            )
    print(
        f"\n{args.n} of each operation, {args.concurrency} callers at once, "
        f"emulator costs {costs or 'none'}, {args.rounds} rounds: median (min-max)"
    )
    for op in ("create", "claim+complete"):
        a = [r[op][0] for r in runs["async"]]
        t = [r[op][0] for r in runs["threads"]]
        ratio = [x / y for x, y in zip(a, t, strict=True)]
        cpu_a = [r[op][1] for r in runs["async"]]
        cpu_t = [r[op][1] for r in runs["threads"]]
        lo = [r[op][0] for r in runs["loop"]]
        cpu_lo = [r[op][1] for r in runs["loop"]]
        loop_ratio = [x / y for x, y in zip(lo, t, strict=True)]
        print(
            f"  {op:15s} async {spread(a)} s ({args.n / statistics.median(a):.0f}/s) | "
            f"threads {spread(t)} s ({args.n / statistics.median(t):.0f}/s) | "
            f"async/threads time {spread(ratio)} | CPU s async {spread(cpu_a)} "
            f"threads {spread(cpu_t)}\n"
            f"  {'':15s} loop (threads, http=aiohttp) {spread(lo)} s | loop/threads time "
            f"{spread(loop_ratio)} | CPU s loop {spread(cpu_lo)}"
        )


if __name__ == "__main__":
    main()
