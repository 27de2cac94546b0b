"""Per-token rates as the pricer keeps them: plain floats, or cliff tiers over a base rate.

genai-prices lists prices in USD per million tokens as ``Decimal`` (or ``TieredPrices``);
they are converted here once per model, so pricing an event is float multiplications.
A config override (``prices:``) becomes the same `Rates`, with no tiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from costwatch.settings import PriceOverride

__all__ = [
    "ONE",
    "Conditional",
    "Rate",
    "Rates",
    "at",
    "base",
    "override_rates",
    "per_token",
    "scale",
]

MTOK = 1_000_000.0
ONE = Decimal(1)

# A rate is USD per token: a float, or ((threshold, rate), ...) tiers above a base rate.
Rate = float | tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Rates:
    input: Rate
    cache_read: Rate
    cache_write: Rate  # the 5-minute (default) cache-write rate
    output: Rate
    source: str
    version: str
    per_request: float = 0.0  # e.g. Perplexity's request fee; in cost_usd, in neither split
    cache_write_1h: Rate = 0.0  # the 1-hour cache-write rate (the cache_write rate when none is listed)


@dataclass(frozen=True, slots=True)
class Conditional:
    """A model whose price depends on the request time: `calc_price` per event, with this context."""

    context: dict[str, str] | None
    multiplier: Decimal


def per_token(value: Any, multiplier: Decimal = ONE) -> Rate | None:
    """USD per token; a multiplier is applied in Decimal, so 5 x 1.1 is 5.5, not 5.500000000000001."""
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(scale(value, multiplier)) / MTOK
    tiers = tuple((int(t.start), float(scale(t.price, multiplier)) / MTOK) for t in value.tiers)
    return (float(scale(value.base, multiplier)) / MTOK, tiers)  # TieredPrices


def scale(value: Any, multiplier: Decimal) -> Any:
    return value if multiplier == ONE else Decimal(value) * multiplier


def at(rate: Rate, total_input: int) -> float:
    """The rate for a request with this many input tokens: the highest tier it passes ("cliff")."""
    if isinstance(rate, float):
        return rate
    base_rate, tiers = rate
    for start, tier_rate in reversed(tiers):
        if total_input > start:
            return tier_rate
    return base_rate


def base(rate: Rate) -> float:
    return rate if isinstance(rate, float) else rate[0]


def override_rates(o: PriceOverride) -> Rates:
    """A config override: cached reads and cache writes at the input rate unless it names theirs."""
    inp = o.input_per_mtok / MTOK
    write = (o.cache_write_per_mtok / MTOK) if o.cache_write_per_mtok is not None else inp
    return Rates(
        input=inp,
        cache_read=(o.cached_input_per_mtok / MTOK) if o.cached_input_per_mtok is not None else inp,
        cache_write=write,
        output=o.output_per_mtok / MTOK,
        source="override",
        version="override",
        cache_write_1h=write,
    )
