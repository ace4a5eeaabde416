"""Mutation check of the bridge's decisions: each named mutation, applied alone to a copy
of the tree, must make the fast test tiers fail.

    python3 scripts/mutation_check.py            # every mutation
    python3 scripts/mutation_check.py -k claim   # those whose name contains "claim"

Run on demand (not in CI: a few minutes). A mutation whose text is no longer in its
file fails the run, so the list cannot silently go stale as the code changes. The
last score is in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST_TIERS = [
    "tests/unit",
    "tests/integration/test_daemon_ticks.py",
    "tests/integration/test_local_queue.py",
    "tests/integration/test_worker.py",
]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation(
        "claim token without its attempt number",
        "bridge/storage/statements.py",
        'tasks.c.attempts == p("p_attempts"),',
        "",
    ),
    Mutation(
        "dequeue ignores the lease margin",
        "bridge/storage/statements.py",
        'tasks.c.lease_expires_at > p("p_lease_floor")',
        'tasks.c.lease_expires_at > p("p_now")',
    ),
    Mutation(
        "a conflict read back classed RETRY instead of SUPERSEDED",
        "bridge/daemon/delivery.py",
        "    return Outcome(\n        Verdict.SUPERSEDED,",
        "    return Outcome(\n        Verdict.RETRY,",
    ),
    Mutation(
        "a 401 treated as a dead row instead of a refused key",
        "bridge/daemon/delivery.py",
        "return Outcome(Verdict.AUTH_FAILED, str(exc))",
        "return Outcome(Verdict.DEAD, str(exc))",
    ),
    Mutation(
        "429 pause counted from the tick's start",
        "bridge/daemon/server_contact.py",
        "timedelta(seconds=spent + wait)",
        "timedelta(seconds=wait)",
    ),
    Mutation(
        "claim limit ignores what is queued",
        "bridge/daemon/claim_budget.py",
        "limit = min(room, startable - queued)",
        "limit = min(room, startable)",
    ),
    Mutation(
        "claim limit ignores the measured duration",
        "bridge/daemon/pull.py",
        "duration = measured or config.default_task_seconds\n",
        "duration = config.default_task_seconds\n",
    ),
    Mutation(
        "a burst's top-up ignores the claims still in flight",
        "bridge/daemon/pull.py",
        "room = ceiling - self.store.queued_count(task_type) - in_flight",
        "room = ceiling - self.store.queued_count(task_type)",
    ),
    Mutation(
        "a burst's top-up goes past the tasks seen pending",
        "bridge/daemon/pull.py",
        "return max(0, min(room, wanted - taken))",
        "return max(0, room)",
    ),
    Mutation(
        "idle polling never backs off",
        "bridge/daemon/pull.py",
        "previous * 2)",
        "previous)",
    ),
    Mutation(
        "a claim burst goes on after an empty answer",
        "bridge/daemon/pull.py",
        "                    if task is None:\n"
        "                        slots.stop()\n                        break",
        "                    if task is None:\n                        break",
    ),
    Mutation(
        "no per-task hold-back within a push",
        "bridge/daemon/push.py",
        "            if any(must_follow(earlier, entry) for earlier in waiting):\n",
        "            if False:\n",
    ),
    Mutation(
        "no per-task hold-back across pushes",
        "bridge/storage/outbox.py",
        "            ~task_row_waits,\n",
        "",
    ),
    Mutation(
        "no per-type hold-back across pushes (a create before its registration)",
        "bridge/storage/outbox.py",
        "            ~type_row_waits,\n",
        "",
    ),
    Mutation(
        "a create waiting for its retry holds back the creates behind it",
        "bridge/daemon/push.py",
        '    return not (earlier.kind == later.kind == "create_task")\n',
        "    return True\n",
    ),
    Mutation(
        "a result over the server's size limit is stored",
        "bridge/payloads.py",
        '    validated(lambda: check_stored_size(result, "results", "result_json"))\n',
        "",
    ),
    Mutation(
        "a look while tasks seen pending are still to claim",
        "bridge/daemon/pull.py",
        "        if all(self._known.get(task_type, 0) > 0 for task_type in self.config.types):",
        "        if False:",
    ),
    Mutation(
        "an outage does not stop the push",
        "bridge/daemon/push.py",
        "            self._next_push = now + timedelta(seconds=delay)\n            return False",
        "            self._next_push = now + timedelta(seconds=delay)\n            return True",
    ),
    Mutation(
        "a failing row never goes dead",
        "bridge/daemon/push.py",
        "if entry.attempts + 1 >= self.config.outbox_max_attempts:",
        "if False:",
    ),
    Mutation(
        "reconcile ignores the 429 pause",
        "bridge/daemon/reconcile.py",
        '        tick_started = self.monotonic()\n        if self.server.paused(now, "pull"):\n'
        "            return 0\n        try:\n            with self._claims_lock:",
        "        tick_started = self.monotonic()\n        try:\n"
        "            with self._claims_lock:",
    ),
    Mutation(
        "a 429 on claims holds the deliveries back too",
        "bridge/daemon/push.py",
        'if self.server.paused(now, "push") or',
        'if self.server.paused(now, "push") or self.server.paused(now, "pull") or',
    ),
    Mutation(
        "reconcile imports other workers' claims",
        "bridge/daemon/reconcile.py",
        "if row.claimed_by != self.worker_id:",
        "if False:",
    ),
    Mutation(
        "claims of tasks seen pending go on after an empty answer",
        "bridge/daemon/pull.py",
        "known - claimed if claimed == granted else 0",
        "known - claimed",
    ),
    Mutation(
        "idle probes ignore the claim budget",
        "bridge/daemon/pull.py",
        "self._next_pull[task_type] = now + self._probe_interval()",
        "self._next_pull[task_type] = now",
    ),
    Mutation(
        "a claim is sent while the claim window is spent",
        "bridge/daemon/pull.py",
        "                if window_free_at(self.client.rate_limit_for(CLAIM_PATH), width) > 0:\n"
        "                    slots.stop()",
        "                if False:\n                    slots.stop()",
    ),
    Mutation(
        "a 429 on a path does not hold the other threads' requests on it",
        "taskmanager/exchange.py",
        "            self._block_path(path, outcome.retry_after)",
        "            pass",
    ),
    Mutation(
        "reconcile does not report claims no intent explains",
        "bridge/daemon/reconcile.py",
        "                foreign += 1\n",
        "",
    ),
    Mutation(
        "an intent explains claims of any type",
        "bridge/daemon/reconcile.py",
        "(i for i in intents.values() if i.task_type == row.type)",
        "(i for i in intents.values())",
    ),
    Mutation(
        "claim limit stops for good when tasks outlast the lease",
        "bridge/daemon/claim_budget.py",
        "if limit <= 0 and queued == 0 and idle_worker():",
        "if False:",
    ),
    Mutation(
        "a deadlock 500 is not retried",
        "taskmanager/protocol.py",
        "any(marker in message for marker in TRANSIENT_DEADLOCK_MARKERS)",
        "False",
    ),
    Mutation(
        "reaper re-queues stale tasks whatever their lease",
        "bridge/storage/claimed_tasks.py",
        ".where(stale, lease_ok)",
        ".where(stale)",
    ),
]


def stale(root: Path = ROOT) -> list[str]:
    """Mutations whose text is not exactly once in their file (the code moved on)."""
    return [
        mutation.name
        for mutation in MUTATIONS
        if (root / mutation.path).read_text(encoding="utf-8").count(mutation.old) != 1
    ]


def copy_tree(target: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tiers(tree: Path, tests: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", *tests]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument(
        "--tests", nargs="+", default=FAST_TIERS, help="test paths to run (default: fast tiers)"
    )
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.k.lower() in m.name.lower()]
    survivors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        baseline = run_tiers(tree, args.tests)
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:])
            print("the fast tiers fail without any mutation: fix that first")
            return 2
        for mutation in chosen:
            path = tree / mutation.path
            original = path.read_text(encoding="utf-8")
            if original.count(mutation.old) != 1:
                print(f"STALE   {mutation.name}: its text is not exactly once in {mutation.path}")
                return 2
            path.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
            started = time.monotonic()
            try:
                result = run_tiers(tree, args.tests)
            finally:
                path.write_text(original, encoding="utf-8")
            killed = result.returncode != 0
            took = time.monotonic() - started
            print(f"{'killed ' if killed else 'SURVIVED'} {mutation.name} ({took:.0f} s)")
            if not killed:
                survivors.append(mutation.name)
    print(f"\n{len(chosen) - len(survivors)}/{len(chosen)} mutations killed by the fast tiers")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
