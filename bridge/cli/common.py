"""What every subcommand shares: the config the options chose, the database's name,
and the ages operators type (``7d``: ``times.parse_age``)."""

from __future__ import annotations

import argparse

from ..config import BridgeConfig
from ..storage import display_url, normalise_url
from ..times import parse_age

__all__ = ["load_config", "parse_age", "where"]


def load_config(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig.load(args.config, db_url=args.db_url)


def where(config: BridgeConfig) -> str:
    """The database, as messages show it (no password)."""
    return display_url(normalise_url(config.db_url))
