"""What every subcommand shares: the config the options chose, the database's name,
and the ages operators type (``7d``)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from ..config import BridgeConfig
from ..errors import BridgeError
from ..storage import display_url, normalise_url


def load_config(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig.load(args.config, db_url=args.db_url)


def where(config: BridgeConfig) -> str:
    """The database, as messages show it (no password)."""
    return display_url(normalise_url(config.db_url))


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
