"""Instructions a task of the worker loop, its floor and its bounds, counted by valgrind.

``queue_cpu.py`` measures the same four loops in CPU time, whose rounds swing by a
tenth or more on a shared VM: differences of a few microseconds a task hide in that
spread. An instruction count does not move from run to run, so it tells a cut of a
few percent from noise, and it reads the same on another machine with the same
Python and SQLite. It is not time: what an instruction costs varies (cache misses,
the fsync, which runs in the kernel and is not counted here), so a ratio of counts
is the loops' work in user space, beside the time ratios, not instead of them.

Each loop runs in a child process under ``valgrind --tool=callgrind`` on a queue
seeded beforehand (outside valgrind), at two sizes; the difference of their counts,
over the difference of their tasks, is a task's instructions without the start-up
(imports, opening the queue); each queue is checked finished afterwards, outside the
counts. The database lives on /dev/shm where there is one.
Needs valgrind (Debian: ``apt-get install valgrind``); about five minutes.

    python3 tests/bench/loop_instructions.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench import queue_cpu

_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(loop: str, url: str, tasks: int) -> int:
    """User-space instructions of a child that opens the seeded queue and runs ``loop``."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            loop,
            url,
            str(tasks),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
    )
    found = _COLLECTED.search(run.stderr)
    if run.returncode or found is None:
        raise RuntimeError(
            f"{loop} at {tasks} tasks: valgrind exited {run.returncode}\n{run.stderr[-2000:]}"
        )
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=200, help="tasks of the shorter run")
    parser.add_argument("--large", type=int, default=700, help="tasks of the longer run")
    parser.add_argument("loops", nargs="*", default=list(queue_cpu.LOOPS), help="of: %(default)s")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # LOOP URL TASKS
    args = parser.parse_args()
    if args.child:
        loop, url, tasks = args.child
        queue_cpu.LOOPS[loop](url, int(tasks))
        return 0
    unknown = [loop for loop in args.loops if loop not in queue_cpu.LOOPS]
    if unknown:
        parser.error(f"no such loop: {', '.join(unknown)} (of: {', '.join(queue_cpu.LOOPS)})")
    if not 0 < args.small < args.large:
        parser.error("--small must be at least 1 and under --large")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    where = "/dev/shm" if Path("/dev/shm").is_dir() else None
    runs = [(loop, size) for loop in args.loops for size in (args.small, args.large)]
    with tempfile.TemporaryDirectory(dir=where) as folder:
        # Seeded one after another (Alembic's commands are not for threads), then run
        # two at a time.
        urls = []
        for i, (_, size) in enumerate(runs):
            (Path(folder) / str(i)).mkdir()
            urls.append(queue_cpu._seeded(Path(folder) / str(i), size))
        with ThreadPoolExecutor(max_workers=2) as pool:
            found = pool.map(instructions, [loop for loop, _ in runs], urls, [n for _, n in runs])
            counts = dict(zip(runs, found, strict=True))
        for url, (_, size) in zip(urls, runs, strict=True):
            queue_cpu.all_done(url, size)  # here, outside the counts
    per_task = {
        loop: (counts[loop, args.large] - counts[loop, args.small]) / (args.large - args.small)
        for loop in args.loops
    }
    print(f"instructions a task ({args.large} - {args.small} tasks, valgrind callgrind):")
    for loop, count in per_task.items():
        ratio = f"   floor / {loop}: {per_task['floor'] / count:.3f}" if "floor" in per_task else ""
        print(f"  {loop:15s} {count:10,.0f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
