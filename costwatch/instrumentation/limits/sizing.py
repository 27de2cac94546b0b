"""How much a call may cost before it is sent, and what it cost once its usage is known.

Worst case: input bounded per request shape (`costwatch.instrumentation.bounds`: body bytes
for text, formulas for media), output = ``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens`` (the rule's ``default_max_tokens`` when the request sets none), priced
at the model's per-token rates that the daemon sends (``[input, output, per request]``).
"""

from __future__ import annotations

import re
from typing import Any

from costwatch.instrumentation.bounds import input_bound
from costwatch.protocol import Limit

__all__ = ["CACHE_WRITE_FACTOR", "worst", "write_premium"]

_MAX_RE = re.compile(rb'"max(?:_completion|_output)?_tokens"\s*:\s*(\d{1,9})')
CACHE_WRITE_FACTOR = 2  # Anthropic bills a 1-hour cache write at 2x the input rate (5-minute: 1.25x)


def worst(
    limit: Limit, call: Any, prices: list[float] | None, table: dict[str, list[float] | None]
) -> tuple[float, list[float] | None, str | None]:
    """(worst-case amount, prices, missing price key) of a call for one limit.

    ``prices`` are the call's rates if an earlier limit looked them up already; ``table`` is
    every rate the daemon sent ("provider:model" -> rates, None: the daemon has none).
    """
    if limit.measure == "requests":
        return 1.0, prices, None
    if limit.measure == "usd" and prices is None:
        key = f"{call.provider}:{call.model}"
        prices = table.get(key)
        if prices is None:  # settlement needs the price even without reservations
            return 0.0, None, key
    if not limit.reserve:
        return 0.0, prices, None
    match = _MAX_RE.search(call.body)
    out = int(match.group(1)) if match else limit.default_max_tokens
    inp = call.inp
    if inp < 0:
        inp = call.inp = input_bound(call.body, call.provider, call.model)
    if limit.measure == "tokens":
        return float(inp + out), prices, None
    assert prices is not None
    if b'"cache_control"' in call.body:  # every input token may be a cache write (1-hour: 2x input)
        inp *= CACHE_WRITE_FACTOR
    return inp * prices[0] + out * prices[1] + prices[2], prices, None


def write_premium(event: Any) -> float:
    """Cache writes cost more than input (5-minute: 1.25x, 1-hour: 2x): the extra, in input tokens."""
    total = getattr(event, "cache_write_tokens", None) or 0
    if not total:
        return 0.0
    hour = getattr(event, "cache_write_1h_tokens", None) or 0
    five = getattr(event, "cache_write_5m_tokens", None)
    five = total - hour if five is None else five
    return 0.25 * five + 1.0 * max(total - five, 0)  # unsplit writes: at the 1-hour premium
