"""What a timed wake-up costs here, and what the change watch spends on them.

    python tests/bench/wakeups.py [--seconds S]

1. CPU per timed wait of 5 ms: ``time.sleep``, a bare lock's ``acquire(timeout=)``,
   ``Event.wait`` (a condition and a lock made for each wait). On a small VM each
   is tens of microseconds or more of CPU, more than the read the watch wakes for.
2. A handler call under a time limit (every remote task, its lease being its limit),
   run as the thread engine runs it: on the slot's own thread, its deadline kept by
   the ``Watchman`` (until 2026-12-07 it was handed to a helper thread and back,
   33 us; ``docs/BENCHMARKS.md``): CPU a call.
3. The change watch (``bridge.storage.changes``) while another connection commits
   every 4 ms: its thread's CPU and voluntary context switches a second, read from
   /proc: with a listener, looking every 5 ms (``listener``) and every 20 ms (``daemon``,
   the daemon's push gap); with a caller waiting in it (``waiter``, an idle worker
   slot); with nobody waiting (``nobody``, a worker whose slots are all busy).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from bridge.storage.changes import ChangeWatch
from bridge.storage.engine import open_engine
from bridge.worker.outcome import run_call
from bridge.worker.time_limits import Overrun, Watchman


def cpu_per_wait(wait: Callable[[], object], count: int = 400) -> float:
    started = time.process_time()
    for _ in range(count):
        wait()
    return 1e6 * (time.process_time() - started) / count


def thread_counters(native_id: int) -> tuple[float, int]:
    """(CPU seconds, voluntary switches) of one thread of this process, from /proc."""
    task = Path(f"/proc/self/task/{native_id}")
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    status = (task / "status").read_text()
    switches = int(status.split("voluntary_ctxt_switches:\t")[1].split()[0])
    return ticks / 100, switches


def watch_cost(mode: str, seconds: float) -> tuple[float, float]:
    """The watch thread's (CPU ms, switches) a second while commits come every 4 ms."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "q.db")
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("CREATE TABLE t (x)")
        engine = open_engine(path)
        watch = ChangeWatch(engine, interval=0.02 if mode == "daemon" else 0.005)
        if mode in ("listener", "daemon"):
            watch.on_change(lambda: None)
        watch.start()
        stop = threading.Event()

        def commits() -> None:
            while not stop.is_set():
                writer.execute("INSERT INTO t VALUES (1)")
                time.sleep(0.004)

        def waits() -> None:
            while not stop.is_set():
                watch.wait(watch.generation, 1.0)

        helpers = [threading.Thread(target=commits)]
        if mode == "waiter":
            helpers.append(threading.Thread(target=waits))
        for helper in helpers:
            helper.start()
        time.sleep(0.5)
        assert watch._thread is not None and watch._thread.native_id is not None
        before = thread_counters(watch._thread.native_id)
        time.sleep(seconds)
        after = thread_counters(watch._thread.native_id)
        stop.set()
        watch.poke()
        for helper in helpers:
            helper.join()
        watch.close()
        engine.dispose()
        writer.close()
    return 1000 * (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    lock = threading.Lock()
    lock.acquire()
    event = threading.Event()
    print("CPU per timed wait of 5 ms (us):")
    for name, wait in (
        ("time.sleep", lambda: time.sleep(0.005)),
        ("Lock.acquire(timeout)", lambda: lock.acquire(timeout=0.005)),
        ("Event.wait", lambda: event.wait(0.005)),
    ):
        print(f"  {name:22} {cpu_per_wait(wait):6.1f}")
    watchman = Watchman(lambda call: None)
    calls = 20_000
    started = time.process_time()
    for _ in range(calls):
        call = Overrun(0, 300.0, None, 0.0)
        watchman.watch(call)
        run_call(lambda: None)
        watchman.returned(call)
    watchman.close()
    per_call = 1e6 * (time.process_time() - started) / calls
    print(f"a handler call under a time limit (the watchman's part): {per_call:.1f} us of CPU")
    print("change watch thread, commits every 4 ms (CPU ms a second, switches a second):")
    for mode in ("listener", "daemon", "waiter", "nobody"):
        cpu, switches = watch_cost(mode, args.seconds)
        print(f"  {mode:9} {cpu:6.1f} ms/s {switches:6.0f}/s")


if __name__ == "__main__":
    main()
