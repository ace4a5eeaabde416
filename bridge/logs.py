"""Log output for the bridge's commands: human lines by default, JSON lines on request.

A line about a task carries ``task_id`` (local), ``remote_id`` and ``task_type``
as fields (``task_fields``), so JSON logs can be filtered by task. The API key
never reaches a log line: nothing logs headers or the config's key.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

TASK_FIELDS = ("task_id", "remote_id", "task_type", "outbox_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def task_fields(
    task_id: int | None, remote_id: int | None, task_type: str | None, **more: Any
) -> dict[str, Any]:
    """``extra=`` for a log call about one task."""
    return {"task_id": task_id, "remote_id": remote_id, "task_type": task_type, **more}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any task fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: int = logging.INFO, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every job run at INFO
