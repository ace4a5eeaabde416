"""Why aiohttp: the two asyncio HTTP clients on the same requests, interleaved.

    pip install httpx   # not a dependency of ours; aiohttp is (the async extra)
    python tests/bench/async_http_choice.py [N] [--concurrency C] [--rounds R]

N creates (``POST /tasks``), C at a time, against the emulator (no costs: the
client's own cost is what differs), with one ``aiohttp.ClientSession`` and one
``httpx.AsyncClient``, each with a pool of C connections. Prints requests per
second, the process's CPU seconds (the emulator's threads included: the
same work for both) and the requests sent again after a dropped connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from taskmanager.emulator import EmulatorServer

TYPE = "bench.http"
RESENT: Counter[str] = Counter()  # requests sent again after a dropped connection


def _body(run: int, i: int) -> bytes:
    return json.dumps({"type": TYPE, "params": {"i": i, "run": run}}).encode()


async def with_aiohttp(url: str, key: str, n: int, c: int, run: int) -> None:
    gate = asyncio.Semaphore(c)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def one(i: int) -> None:
            for attempt in range(3):  # a dropped connection is sent again, as our client does
                try:
                    async with (
                        gate,
                        session.post(url + "/tasks", data=_body(run, i), headers=headers) as r,
                    ):
                        await r.text()
                        assert r.status in (200, 201), r.status
                        return
                except aiohttp.ClientConnectionError:
                    RESENT["aiohttp"] += 1
                    if attempt == 2:
                        raise

        await asyncio.gather(*(one(i) for i in range(n)))


async def with_httpx(url: str, key: str, n: int, c: int, run: int) -> None:
    import httpx

    gate = asyncio.Semaphore(c)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=c)) as client:

        async def one(i: int) -> None:
            for attempt in range(3):  # a dropped connection is sent again, as our client does
                try:
                    async with gate:
                        r = await client.post(
                            url + "/tasks", content=_body(run, i), headers=headers
                        )
                    assert r.status_code in (200, 201), r.status_code
                    return
                except httpx.TransportError:
                    RESENT["httpx"] += 1
                    if attempt == 2:
                        raise

        await asyncio.gather(*(one(i) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    contenders: dict[str, Callable[..., Awaitable[None]]] = {
        "aiohttp": with_aiohttp,
        "httpx": with_httpx,
    }
    run = 0
    with EmulatorServer() as server, server.client() as client:
        client.register_task_type(TYPE, "1", {"type": "object"})
        for round_ in range(args.rounds):
            order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
            for name in order:
                run += 1
                wall, cpu = time.perf_counter(), time.process_time()
                asyncio.run(
                    contenders[name](server.url, server.api_key, args.n, args.concurrency, run)
                )
                print(
                    f"round {round_ + 1} {name:8s} {args.n / (time.perf_counter() - wall):6.0f} "
                    f"requests/s  CPU {time.process_time() - cpu:5.2f} s  "
                    f"(sent again after a dropped connection, so far: {RESENT[name]})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
