"""What goes into the queue as JSON: params, results, metadata, each through the one
encoder and the server's size limit, or refused with a ``ValidationError`` that names
the key path or the size (before anything is written)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from taskmanager import TaskManagerValidationError
from taskmanager.encoding import EncodingError, to_json
from taskmanager.validation import check_stored_size

from .errors import ValidationError


def validated(call: Callable[[], Any]) -> Any:
    """Run a client-side check, re-raising its error as the bridge's ``ValidationError``."""
    try:
        return call()
    except TaskManagerValidationError as exc:
        raise ValidationError(exc.message) from None


def encoded(value: Any, what: str) -> Any:
    """``value`` through the one encoder (datetimes, Decimals, UUIDs, enums, dataclasses...
    become JSON); what it cannot encode is a ``ValidationError`` naming the key path."""
    try:
        return to_json(value, what)
    except EncodingError as exc:
        raise ValidationError(str(exc)) from None


def as_result(value: Any) -> Any:
    """What a handler returned, as a task's result: ``None`` is ``{}``, a value that is
    not a mapping is ``{"result": value}``."""
    if value is None:
        return {}
    return value if isinstance(value, Mapping) else {"result": value}


def encoded_result(value: Any) -> dict[str, Any]:
    """A handler's return value encoded as a result, or ``ValidationError`` naming the key
    path that cannot be stored, or its size when the server could not store it."""
    return stored_result(as_result(value))


def stored_result(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A result as it is stored here and sent: encoded, and no bigger than the server
    keeps (65,535 bytes). A bigger one would be refused there with a 500 no resend cures;
    refused here, the worker fails the task at once, saying why, instead of an outbox row
    that can never be delivered. The same for every task (local-only ones too): a handler
    behaves the same whichever task it serves."""
    result = encoded_object(value, "results")
    validated(lambda: check_stored_size(result, "results", "result_json"))
    return result


def encoded_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    encoded_value = encoded(value or {}, what)
    if not isinstance(encoded_value, dict):
        raise ValidationError(f"{what}: a JSON object (dict) is needed, got {type(value).__name__}")
    return encoded_value


DETAIL_MAX_CHARS = 16_000  # a failed task's traceback, kept locally
_DETAIL_HEAD = 2_000


_OWN_FILES = str(Path(__file__).resolve().parent) + os.sep  # bridge/: the worker's frames


def traceback_text(error: BaseException) -> str | None:
    """``error``'s traceback as Python prints it, from the handler's first frame (the
    worker's own frames above it say nothing about the handler), or None without one."""
    tb = error.__traceback__
    if tb is None:
        return None
    first: TracebackType | None = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
        first = first.tb_next
    return "".join(traceback.format_exception(type(error), error, first or tb))


def bounded_detail(text: str) -> str:
    """A traceback no longer than ``DETAIL_MAX_CHARS``: its start (where it began) and
    its end (where it failed), the middle cut with a marker."""
    if len(text) <= DETAIL_MAX_CHARS:
        return text
    cut = len(text) - DETAIL_MAX_CHARS
    tail = DETAIL_MAX_CHARS - _DETAIL_HEAD
    return f"{text[:_DETAIL_HEAD]}\n[... {cut} characters cut ...]\n{text[-tail:]}"
