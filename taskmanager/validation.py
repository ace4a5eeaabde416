"""Client-side checks of params, schemas, sizes and type names, before anything is sent.

A request the server would reject costs a round trip when online and, for the
bridge, an outbox row that can only go ``dead`` when offline. So params are
checked against the type's JSON Schema here with ``jsonschema``, adjusted to
the server's own validator where the two disagree: the server's ``integer``
rejects ``1.0`` (JSON Schema draft 7 accepts it). The server's storage limits
are here too: what it stores is measured as it stores it (``stored_size``), and
type names are checked for what its URL matching can find (``check_type_name``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .dedupe import php_json
from .encoding import EncodingError, json_writer, to_json
from .exceptions import TaskManagerDataTooLongError, TaskManagerValidationError

# The server keeps params, a result and a failure's error text in MariaDB TEXT columns:
# at most this many bytes each. Over it, its insert fails with a 500 "Data too long"
# that no resend cures, so a bigger value is refused here instead.
STORED_MAX_BYTES = 65_535

# How many times longer than json.dumps' compact output php_json can be (3.4, rounded up).
_PHP_JSON_MAX_GROWTH = 4
_compact_text = json_writer(ensure_ascii=False, compact=True)

# What RFC 3986 lets stand raw in a path segment besides letters and digits ("pchar";
# quote() keeps letters, digits and "-._~" itself). The server matches /task-types/{name}
# without percent-decoding, so these must go out as they are.
PATH_SEGMENT_SAFE = "!$&'()*+,;=:@"
_RAW_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")


def stored_size(value: Any) -> int:
    """How many bytes the server stores for a JSON value: its compact re-encoding
    (``php_json``: no spaces, non-ASCII as raw UTF-8, ``/`` unescaped) in UTF-8."""
    return len(php_json(value).encode("utf-8", "surrogatepass"))


def check_stored_size(value: Any, what: str, column: str) -> None:
    """Refuse a value the server could not store (``TaskManagerDataTooLongError`` naming
    ``what``, its size and the limit); ``column`` is where the server would put it.

    Called on every completion, so the exact size (``php_json``, pure Python) is measured
    only when the C encoder's size says it could matter: PHP's encoding is never more
    than 3.4 times as long (``1e+16`` becomes ``10000000000000000``, U+2028 an escape).
    What is not JSON at all is left to the encoder, which names the bad value."""
    try:
        quick = _compact_text(value)
        if len(quick.encode("utf-8", "surrogatepass")) * _PHP_JSON_MAX_GROWTH <= STORED_MAX_BYTES:
            return
        size = stored_size(value)
    except (TypeError, ValueError):
        return
    if size <= STORED_MAX_BYTES:
        return
    raise TaskManagerDataTooLongError(
        None,
        f"{what}: {size:,} bytes as the server stores them (compact JSON, UTF-8), over "
        f"its limit of {STORED_MAX_BYTES:,} bytes per value ({column}): it would answer "
        "500 'Data too long'. Keep large data elsewhere and pass a reference to it.",
        column=column,
        size=size,
        limit=STORED_MAX_BYTES,
    )


def fit_error_text(text: str) -> str:
    """A failure's error text cut to what the server stores, with a marker saying so.

    Never refused: a failure must always reach the server, or its task would stay
    claimed there until its lease ran out. The cut falls between characters."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= STORED_MAX_BYTES:
        return text
    marker = (
        f" [cut: the error text was {len(data):,} bytes; the server stores {STORED_MAX_BYTES:,}]"
    )
    room = STORED_MAX_BYTES - len(marker.encode("utf-8"))
    while room > 0 and data[room] & 0xC0 == 0x80:  # not inside a multi-byte character
        room -= 1
    return data[:room].decode("utf-8", "surrogatepass") + marker


def type_name_segment(name: str) -> str:
    """A type name as the path segment of ``/task-types/{name}``: raw wherever a path
    allows, percent-encoded only where it must (space, ``/``, ``?``, ``#``, ``%``,
    non-ASCII), since the server compares the segment without decoding it."""
    return quote(name, safe=PATH_SEGMENT_SAFE)


def check_type_name(name: Any) -> str:
    """A type name the server can find by name again, else ``TaskManagerValidationError``.

    The server can register any name, but looks one up (``GET /task-types/{name}``, the
    only way to its id: ``GET /task-types`` is broken there) by the raw path segment: a
    name that needs percent-encoding is never found, so its tasks could never be claimed.
    ``.`` and ``..`` are path steps that clients and servers resolve away."""
    if not isinstance(name, str) or not _RAW_SEGMENT.fullmatch(name) or name in (".", ".."):
        raise _local_error(
            f"task type name {name!r} can never be claimed: the server looks a type up by "
            "its name in the URL path without decoding it, so a name may use only letters, "
            "digits and -._~!$&'()*+,;=:@ (no spaces, '/', '?', '#', '%' or non-ASCII), "
            "and cannot be '.' or '..'"
        )
    return name


@functools.cache
def server_compatible_validator() -> Any:
    """Draft 7 with the server's ``integer``. Imported on first use: jsonschema is a tenth
    of a second of every process's start, and a worker or ``status`` never needs it."""
    import jsonschema.validators

    integer = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft7Validator, type_checker=integer
    )


def _local_error(message: str, details: list[str] | None = None) -> TaskManagerValidationError:
    data = {"error": message, "details": details} if details else None
    return TaskManagerValidationError(None, message, data)


def ensure_json(value: Any, what: str) -> None:
    """Refuse what JSON cannot carry (NaN, infinities, objects) before storing or sending it;
    the message names the key path (``taskmanager.encoding``, the one encoder)."""
    try:
        to_json(value, what, convert=False)
    except EncodingError as exc:
        raise _local_error(f"{what} are not JSON serialisable: {exc}") from None


def check_params_shape(params: Any) -> dict[str, Any]:
    """Params must be a non-empty JSON object: the server rejects ``{}`` and lists."""
    if not isinstance(params, Mapping):
        raise _local_error(f"params must be a JSON object (dict), got {type(params).__name__}")
    if not params:
        raise _local_error(
            "params must not be empty: the TaskManager server rejects {} "
            "(it decodes to an empty PHP array). Send at least one field."
        )
    ensure_json(params, "params")
    return dict(params)


def check_schema(schema: Any) -> dict[str, Any]:
    """A param schema the server accepts: an object with a top-level ``type``, valid JSON Schema."""
    if not isinstance(schema, Mapping):
        raise _local_error(f"param_schema must be a JSON object, got {type(schema).__name__}")
    if "type" not in schema:
        raise _local_error("param_schema needs a top-level 'type' (the server rejects it without)")
    import jsonschema

    try:
        server_compatible_validator().check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _local_error(f"param_schema is not valid JSON Schema: {exc.message}") from None
    return dict(schema)


def compile_schema(schema: Mapping[str, Any]) -> Any:
    """A reusable validator for a schema (compiling costs more than validating)."""
    return server_compatible_validator()(schema)


def validate_params(validator: Any, task_type: str, params: Mapping[str, Any]) -> None:
    """Raise one error listing every way ``params`` break the type's schema."""
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        details = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors
        ]
        raise _local_error(
            f"Parameter validation failed for task type {task_type!r}: " + "; ".join(details),
            details,
        )
