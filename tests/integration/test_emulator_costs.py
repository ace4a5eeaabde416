"""The emulator's cost model: service time, bounded concurrency, random deadlocks."""

from __future__ import annotations

import threading
import time

from taskmanager.emulator import EmulatorServer


def test_requests_beyond_the_concurrency_wait_for_a_place():
    with EmulatorServer(service_seconds=0.1, concurrency=2) as server:
        clients = [server.client() for _ in range(4)]
        started = time.monotonic()
        threads = [threading.Thread(target=c.health_check) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # Four requests, two at a time, 0.1 s each: at least two rounds.
        assert time.monotonic() - started >= 0.2


def test_random_deadlocks_are_rolled_back_and_the_client_sends_again():
    with EmulatorServer(deadlock_rate=0.3, seed=7) as server:
        admin = server.client(retry_attempts=8, backoff_base=0.001, backoff_max=0.01)
        admin.register_task_type("cost.t", "1", {"type": "object"})
        ids = [admin.create_task("cost.t", {"n": n}) for n in range(20)]
        for _ in ids:
            task = admin.claim_task(task_type="cost.t")
            assert task is not None
            admin.complete_task(task.id, {"ok": True})
        statuses = [r.status for r in server.requests]
        assert statuses.count(500) >= 5  # deadlocks did happen...
        assert all(admin.get_task(i).status == "completed" for i in ids)  # ...and cost nothing
        completions = [
            r for r in server.requests if r.path.endswith("/complete") and r.status == 200
        ]
        assert len(completions) == 20  # each applied once


def test_a_network_delay_holds_no_place_among_the_concurrency():
    """A 0.4 s round trip: one request takes at least 0.4 s; eight at once, served one at
    a time for 0.01 s each, take about 0.4 + 0.08 s, not 8 x 0.4 (the delay is the
    network's, not the server's)."""
    with EmulatorServer(service_seconds=0.01, concurrency=1, network_seconds=0.2) as server:
        client = server.client()
        started = time.monotonic()
        assert client.health_check()
        alone = time.monotonic() - started
        clients = [server.client() for _ in range(8)]
        threads = [threading.Thread(target=c.health_check) for c in clients]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        together = time.monotonic() - started
        arrivals = [r for r in server.requests if r.path == "/health"]
    assert 0.4 <= alone < 0.6
    assert 0.4 <= together < 1.2, together
    # The server's own record: the answer was ready after the request's inbound half.
    assert all(r.answered - r.at < 0.2 for r in arrivals)


def test_the_client_measures_the_round_trip_without_the_servers_queueing():
    """The fastest recent answer is the round trip plus one request's service: a 0.2 s
    round trip shows as at least 0.2 s; four requests queued behind one place at the
    server (0.1 s each) make the slowest answer ~0.6 s, and the fastest stays ~0.3 s."""
    with EmulatorServer(service_seconds=0.1, concurrency=1, network_seconds=0.1) as server:
        client = server.client()
        assert client.fastest_answer_seconds() is None  # nothing answered yet
        threads = [threading.Thread(target=client.health_check) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        fastest = client.fastest_answer_seconds()
        assert fastest is not None and 0.3 <= fastest < 0.45
