"""What the daemon knows of the server right now: the state of contact, from the last
answer (or its absence), kept per daemon start.

Outage (no answer) and refused authentication are different states: the first
waits for the network, the second for an operator to fix the key, and telling
them apart is what lets ``status`` and ``health`` say which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

ContactState = Literal["unknown", "ok", "outage", "auth_failed"]


@dataclass(frozen=True)
class Contact:
    state: ContactState
    since: datetime
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"state": self.state, "since": self.since.isoformat(), "reason": self.reason}
        )

    @classmethod
    def from_json(cls, text: str | None) -> Contact | None:
        if not text:
            return None
        data: dict[str, Any] = json.loads(text)
        return cls(data["state"], datetime.fromisoformat(data["since"]), data.get("reason", ""))
