"""How the benchmarks print a figure over rounds: median [min-max]."""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )
