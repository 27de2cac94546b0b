"""Dollar amounts for people: cents above a dollar, three significant digits below one.

A budget of $0.0001 per user, or an alert about $0.00148 of spend, used to read
"$0.00 crossed the 100% threshold ($0.00)". Standard library only: the CLI's
fast path (`costwatch status`) uses it.
"""

from __future__ import annotations

import math

__all__ = ["fmt_usd"]

_MAX_DECIMALS = 12


def fmt_usd(value: float, suffix: str = "") -> str:
    """``$1,234.50``, ``$0.50``, ``$0.0148``, ``$0.00148``, ``$0.00`` (zero); a sign before the ``$``."""
    sign = "-" if value < 0 else ""
    v = abs(value)
    if v >= 1 or v == 0 or not math.isfinite(v):
        return f"{sign}${v:,.2f}{suffix}"
    decimals = min(_MAX_DECIMALS, max(2, 2 - math.floor(math.log10(v))))
    text = f"{v:.{decimals}f}"
    if text.startswith("1."):  # rounded up to a dollar (0.9996 → 1.000)
        return f"{sign}$1.00{suffix}"
    head, _, tail = text.partition(".")
    tail = tail.rstrip("0")
    return f"{sign}${head}.{tail.ljust(2, '0')}{suffix}"
