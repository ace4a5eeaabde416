"""CPU per claim+complete pair, component by component, against the floor of each.

    python tests/bench/cpu_floor.py [N] [--concurrency C] [--rounds R]

The emulator runs in a process of its own (``--realistic-costs``: 3 ms a request, 4 at
a time, a deadlock 500 now and then), so the CPU counted (user + system of this
process, from /proc) is the client side's only. Each variant drains N tasks created
beforehand (not counted), with C callers at once, each caller a loop of ``claim`` then
``complete``:

* ``aiohttp bare``: the floor of HTTP on asyncio, two ``session.post`` calls a task,
  JSON in and out, nothing else (no retries, no quirks, no validation);
* ``http.client bare``: the floor of HTTP from threads, C threads each with its own
  keep-alive ``http.client`` connection, JSON in and out, nothing else;
* ``ours async``: ``AsyncTaskManagerClient`` on the same loop;
* ``ours stdlib``: ``TaskManagerClient(http="stdlib")`` shared by C threads, each
  request sent from its own thread on ``http.client`` (the bridge daemon's default);
* ``ours loop``: ``TaskManagerClient(http="aiohttp")`` shared by C threads, each
  request handed to the client's loop thread;
* ``requests``: ``TaskManagerClient()`` shared by C threads: the direct pattern's cost.

Rounds interleave the variants, the order rotating. Prints CPU ms per task, median and
spread, and each variant's ratio to the bare floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from taskmanager import TaskManagerClient, TaskManagerConfig
from tests.integration.helpers import free_port

KEY = "bench-key"
TYPE = "bench.floor"


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskmanager.emulator",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--realistic-costs",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process, f"http://127.0.0.1:{port}/api"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the emulator did not start")


def config(url: str, worker: str = "bench-floor") -> TaskManagerConfig:
    return TaskManagerConfig(api_url=url, api_key=KEY, worker_id=worker, retry_attempts=8)


def on_threads_at_once(count: int, work: Callable[[int], None]) -> None:
    """``work(index)`` on ``count`` threads at once; returns when all have ended."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def fill(url: str, count: int, tag: str) -> int:
    """Create ``count`` tasks of the bench type; its id."""
    with TaskManagerClient(config(url)) as client:
        type_id = client.register_task_type(
            TYPE, "1", {"type": "object", "properties": {"n": {"type": "integer"}}}
        ).id
        for n in range(count):
            client.create_task(TYPE, {"n": n, "tag": tag})
    return int(type_id)


def aiohttp_bare(url: str, type_id: int, concurrency: int) -> int:
    import aiohttp

    headers = {"X-API-Key": KEY, "Accept": "application/json"}

    async def caller(session: aiohttp.ClientSession) -> int:
        done = 0
        while True:
            async with session.post(
                url + "/tasks/claim",
                json={"worker_id": "bare", "task_type_id": type_id},
                headers=headers,
            ) as response:
                body = await response.json(content_type=None)
            if response.status != 200:
                if response.status == 500 and "no active transaction" in str(body).lower():
                    return done
                continue  # a deadlock 500: again
            task = body.get("data", body)
            while True:
                async with session.post(
                    url + f"/tasks/{int(task['id'])}/complete",
                    json={"worker_id": "bare", "success": True, "result": {"ok": 1}},
                    headers=headers,
                ) as response:
                    await response.read()
                if response.status == 200:
                    break
            done += 1

    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            counts = await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        return sum(counts)

    return asyncio.run(main())


def http_client_bare(url: str, type_id: int, concurrency: int) -> int:
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"X-API-Key": KEY, "Accept": "application/json", "Content-Type": "application/json"}
    counts = [0] * concurrency

    def caller(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port)

        def post(path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
            connection.request("POST", parts.path + path, json.dumps(body), headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")

        while True:
            status, body = post("/tasks/claim", {"worker_id": "bare", "task_type_id": type_id})
            if status != 200:
                if status == 500 and "no active transaction" in str(body).lower():
                    return
                continue  # a deadlock 500: again
            task: dict[str, object] = body.get("data", body)  # type: ignore[assignment]
            done = {"worker_id": "bare", "success": True, "result": {"ok": 1}}
            while post(f"/tasks/{int(str(task['id']))}/complete", done)[0] != 200:
                pass
            counts[index] += 1

    on_threads_at_once(concurrency, caller)
    return sum(counts)


def ours_async(url: str, type_id: int, concurrency: int) -> int:
    from taskmanager import AsyncTaskManagerClient

    async def caller(client: AsyncTaskManagerClient) -> int:
        done = 0
        while (task := await client.claim_task(task_type_id=type_id)) is not None:
            await client.complete_task(task.id, {"ok": 1})
            done += 1
        return done

    async def main() -> int:
        async with AsyncTaskManagerClient(config(url)) as client:
            counts = await asyncio.gather(*(caller(client) for _ in range(concurrency)))
        return sum(counts)

    return asyncio.run(main())


def on_threads(http: str) -> Callable[[str, int, int], int]:
    def run(url: str, type_id: int, concurrency: int) -> int:
        counts = [0] * concurrency
        with TaskManagerClient(config(url), http=http) as client:  # type: ignore[arg-type]

            def caller(index: int) -> None:
                while (task := client.claim_task(task_type_id=type_id)) is not None:
                    client.complete_task(task.id, {"ok": 1})
                    counts[index] += 1

            on_threads_at_once(concurrency, caller)
        return sum(counts)

    return run


VARIANTS: dict[str, Callable[[str, int, int], int]] = {
    "aiohttp bare": aiohttp_bare,
    "http.client bare": http_client_bare,
    "ours async": ours_async,
    "ours stdlib": on_threads("stdlib"),
    "ours loop": on_threads("aiohttp"),
    "requests": on_threads("requests"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="?", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    emulator, url = start_emulator()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        names = list(VARIANTS)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                type_id = fill(url, args.tasks, f"{round_no}-{name}")
                before = cpu_seconds()
                done = VARIANTS[name](url, type_id, args.concurrency)
                spent = cpu_seconds() - before
                if done != args.tasks:
                    raise SystemExit(f"{name}: {done} of {args.tasks} tasks done")
                per_task = spent / done * 1000
                results[name].append(per_task)
                print(f"  round {round_no + 1} {name:16} {per_task:.3f} ms/task", flush=True)
    finally:
        emulator.terminate()
        emulator.wait()
    print(f"\nCPU per claim+complete pair, {args.tasks} tasks, {args.concurrency} callers:")
    for name, values in results.items():
        print(f"  {name:16} {against(values, results['aiohttp bare'], 'bare')}")
    return 0


def against(values: list[float], base: list[float], base_name: str) -> str:
    """Median [spread] of ``values``, and of their ratios to ``base`` round by round."""
    ratios = [value / b for value, b in zip(values, base, strict=True)]
    return (
        f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}] ms/task;"
        f" / {base_name} {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
    )


if __name__ == "__main__":
    raise SystemExit(main())
