"""systemd's notify protocol, without a dependency: one datagram per message to the
unix socket named by ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service
started (so ``After=`` units start once the daemon is really up), restarts it
when ``WATCHDOG=1`` stops coming for ``WatchdogSec`` (a hung scheduler, not just
a dead process), and shows ``STOPPING=1``. Outside systemd (no variable) every
call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger("bridge.daemon")


class Notifier:
    """Sends notify messages to the socket of ``env`` (the process environment)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a Linux abstract socket: its address starts with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # The watchdog is ours unless WATCHDOG_PID names another process.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1_000_000 if usec.isdigit() and mine else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one message; False when there is no socket or it failed (logged once:
        a broken socket must never stop the daemon)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1\nSTATUS=claiming and delivering")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1\nSTATUS=stopping: last push")
