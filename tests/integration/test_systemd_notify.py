"""systemd's notify protocol over a real unix datagram socket: the ``Notifier`` alone,
and the daemon as a process (READY=1 at start, WATCHDOG=1 from its ticks, STOPPING=1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.daemon.systemd import Notifier
from bridge.storage.migrations import upgrade
from taskmanager.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        yield sock, path
    finally:
        sock.close()


def _receive_until(sock: socket.socket, wanted: str, seconds: float = 30) -> list[str]:
    """Messages received until one contains ``wanted`` (fails after ``seconds``)."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(message)
        if wanted in message:
            return seen
    pytest.fail(f"no {wanted!r} within {seconds} s; received {seen}")


def test_notifier_sends_each_message_as_one_datagram(notify_socket):
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_seconds == 30.0
    assert notifier.ready() and notifier.watchdog() and notifier.stopping()
    received = [sock.recv(4096).decode() for _ in range(3)]
    assert received[0].startswith("READY=1\n") and received[1] == "WATCHDOG=1"
    assert received[2].startswith("STOPPING=1\n")


def test_notifier_outside_systemd_and_with_a_broken_socket(tmp_path: Path, caplog):
    assert not Notifier({}).enabled and not Notifier({}).ready()
    broken = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert not broken.ready() and not broken.watchdog()  # never raises
    assert sum("cannot notify systemd" in r.message for r in caplog.records) == 1
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert other.watchdog_seconds is None  # the watchdog belongs to another process


def test_abstract_socket_name(tmp_path: Path):
    name = f"bridge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"


@pytest.mark.acceptance
def test_daemon_notifies_ready_watchdog_and_stopping(tmp_path: Path, notify_socket):
    sock, path = notify_socket
    db = str(tmp_path / "q.db")
    upgrade(db)
    with EmulatorServer() as server:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'db_url = "{db}"\ntypes = ["t.notify"]\nreap_interval_seconds = 0.2\n'
            f'[taskmanager]\napi_url = "{server.url}"\n'
        )
        env = {
            **os.environ,
            "TASKMANAGER_API_KEY": server.api_key,
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "1000000",
        }
        daemon = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--config", str(config), "run"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            started = _receive_until(sock, "READY=1")
            ticks = _receive_until(sock, "WATCHDOG=1")
            _receive_until(sock, "WATCHDOG=1")  # it keeps coming, tick after tick
        finally:
            daemon.send_signal(signal.SIGTERM)
            stopping = _receive_until(sock, "STOPPING=1")
            _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert not any("STOPPING" in m for m in started + ticks)
    assert any(m.startswith("STOPPING=1") for m in stopping)
    assert "WatchdogSec" not in err  # 0.2 s ticks are well inside a 1 s watchdog
