"""A faithful TaskManager API emulator: real HTTP on loopback, SQLite state, fault injection.

with EmulatorServer(claim_timeout=2) as server:
    client = server.client()
    ...
    with server.outage():
        ...            # the port refuses connections
    server.faults.drop_after_commit(path="/tasks/*/complete")
"""

from .app import EmulatorApp, EmulatorSettings
from .faults import FaultPlan
from .server import EmulatorServer, RequestRecord
from .store import EmulatorStore

__all__ = [
    "EmulatorApp",
    "EmulatorServer",
    "EmulatorSettings",
    "EmulatorStore",
    "FaultPlan",
    "RequestRecord",
]
