"""Times as the bridge keeps them (aware UTC, ISO text in its state rows) and as an
operator reads them: "12 s ago", "in 4 min", "1 h 5 min".

``status``, ``outbox list`` and the dashboard show ages, not ISO timestamps with
microseconds: the question asked of a queue is "how long ago", and a reader
should not have to subtract clocks to answer it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .errors import BridgeError


def utcnow() -> datetime:
    """Now, aware, in UTC: the clock every stored time is read against."""
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """``moment`` as ISO text (how the state rows keep times), None for None."""
    return moment.isoformat() if moment else None


def from_iso(text: str | None) -> datetime | None:
    """The inverse of ``iso``: None (or empty text) for None."""
    return datetime.fromisoformat(text) if text else None


_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def span(seconds: float) -> str:
    """A duration in its two largest units: ``0.4 s``, ``12 s``, ``4 min 3 s``, ``2 d 1 h``."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    parts: list[str] = []
    for size, unit in _UNITS:
        count, whole = divmod(whole, size)
        if count or parts:
            parts.append(f"{count} {unit}")
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if not part.startswith("0 ")) or "0 s"


def ago(moment: datetime | None, now: datetime, never: str = "never") -> str:
    """``12 s ago`` (or ``in 12 s`` for a moment ahead); ``never`` for None."""
    if moment is None:
        return never
    seconds = (now - moment).total_seconds()
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(seconds)}"


def rate(count: float, seconds: float) -> str:
    """``3.2/s`` from one a second up, else ``40.0/min`` (nothing too: ``0.0/min``), so
    that a slow queue never reads ``0.0/s``; the one rule of ``status`` and the dashboard."""
    if seconds <= 0:
        return "-"
    per_second = count / seconds
    if per_second >= 1:
        return f"{per_second:.1f}/s"
    return f"{per_second * 60:.1f}/min"


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` -> timedelta; anything else is one clear error.

    A unit is required: a bare ``7`` once meant 7 seconds and pruned what the
    operator meant to keep. No signs, exponents, ``inf`` or ``nan``, nothing zero,
    nothing over a hundred years (a typo, whatever it meant).
    """
    import re

    units, longest = {"d": 86400, "h": 3600, "m": 60, "s": 1}, timedelta(days=36500)
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([dhms])", text.strip())
    seconds = float(match[1]) * units[match[2]] if match else 0.0
    if not 0 < seconds <= longest.total_seconds():
        raise BridgeError(
            f"{option} must be a positive age with its unit, like 7d, 12h, 30m or 90s "
            f"(at most {longest.days}d), got {text!r}"
        )
    return timedelta(seconds=seconds)
