"""What an idle bridge spends: CPU and wake-ups a second, per process and per thread.

    python tests/bench/idle_bridge.py [--seconds S] [--rounds R] [--latency-ms MS]

A daemon and a worker (as ``bridge_vs_direct.py`` starts them) on a task type with no
tasks, against the emulator at a round trip of ``--latency-ms``: after a few seconds
to settle, their CPU (user + system) and context switches are read from /proc over
``--seconds``, and each thread's switches a second. Python does not name its threads
for the system: with ``py-spy`` on PATH each thread's name is read from a dump.

What a bridge spends by the second rather than by the task counts in every task's CPU
while tasks come slowly (issue 29): at a 50 ms round trip a run of 1,000 tasks lasts
about 9 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from tests.bench.bridge_vs_direct import (
    Target,
    context_switches,
    cpu_seconds,
    start_processes,
)

SETTLE_SECONDS = 3.0


def thread_switches(pid: int) -> dict[int, int]:
    """Each live thread's context switches so far (voluntary and not), by thread id."""
    found: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        found[int(tid)] = sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from ``py-spy dump`` (empty without it)."""
    if shutil.which("py-spy") is None:
        return {}
    dump = subprocess.run(
        ["py-spy", "dump", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return {
        int(match[1]): match[2] for match in re.finditer(r'Thread (\d+) \(\w+\): "([^"]+)"', dump)
    }


def one_round(latency_ms: float, seconds: float) -> dict[str, tuple[float, float, str]]:
    """Per process: (CPU ms a second, switches a second, the busiest threads)."""
    target = Target(None, None, latency_ms)
    processes = {}
    try:
        admin = target.client()
        task_type = f"idle.{uuid.uuid4().hex[:8]}"
        admin.register_task_type(task_type, "1", {"type": "object"})
        folder = Path(tempfile.mkdtemp(prefix="bench-idle-"))
        env = {**os.environ, "TASKMANAGER_API_KEY": target.key}
        env["PYTHONPATH"] = f"{Path(__file__).resolve().parents[2]}{os.pathsep}"
        env["BENCH_STARTS"] = str(folder / "starts.log")
        processes = start_processes("bridge", target, task_type, 4, folder, env)
        time.sleep(SETTLE_SECONDS)
        cpu = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        switched = {name: context_switches(p.pid) for name, p in processes.items()}
        threads = {name: thread_switches(p.pid) for name, p in processes.items()}
        time.sleep(seconds)
        found = {}
        for name, process in processes.items():
            after = thread_switches(process.pid)
            names = thread_names(process.pid)
            rates = sorted(
                ((after[tid] - threads[name].get(tid, 0)) / seconds, tid) for tid in after
            )
            busiest = ", ".join(
                f"{names.get(tid, tid)} {rate:.0f}" for rate, tid in reversed(rates[-6:])
            )
            found[name] = (
                1000 * (cpu_seconds(process.pid) - cpu[name]) / seconds,
                (context_switches(process.pid) - switched[name]) / seconds,
                busiest,
            )
        return found
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
        target.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    rounds = []
    for number in range(args.rounds):
        found = one_round(args.latency_ms, args.seconds)
        rounds.append(found)
        for name, (cpu, switches, busiest) in found.items():
            print(
                f"  round {number + 1} {name:6} {cpu:5.1f} ms CPU/s, {switches:4.0f} switches/s;"
                f" threads (switches/s): {busiest}",
                flush=True,
            )
    print(f"\nmedian [spread] over {args.rounds} rounds, rtt {args.latency_ms:g} ms, idle:")
    for name in rounds[0]:
        cpu = [r[name][0] for r in rounds]
        woken = [r[name][1] for r in rounds]
        print(
            f"  {name:6} CPU {statistics.median(cpu):.1f} [{min(cpu):.1f}-{max(cpu):.1f}] ms/s,"
            f" switches {statistics.median(woken):.0f} [{min(woken):.0f}-{max(woken):.0f}]/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
