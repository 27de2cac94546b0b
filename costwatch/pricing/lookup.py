"""genai-prices, asked once per (provider, model, tier): which model this is, and its rates.

`genai_prices.calc_price` is too slow to call per event at ingest rates, so `resolve` calls
it once to match the model and reads its per-token rates (plain or tiered), which
`Pricer` caches and applies with float arithmetic. A model whose price depends on the
request time (genai-prices ``ConditionalPrice``: start dates, off-peak hours) resolves to
`Conditional` instead and is priced by `calc_exact` per event, with the event's own
timestamp, so it stays exact.

Unknown model, or a model without any token price (genai-prices would say $0): no rates
(the event is unpriced), never a guess.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import version as _dist_version
from typing import Protocol

from costwatch.pricing.costs import Price
from costwatch.pricing.rates import Conditional, Rates, per_token, scale
from costwatch.pricing.tiers import Context, variant_context

__all__ = ["GENAI_PRICES_VERSION", "TokenCounts", "calc_exact", "resolve"]

GENAI_PRICES_VERSION = f"genai-prices {_dist_version('genai-prices')}"


class TokenCounts(Protocol):
    """What `calc_exact` reads of an event: a `UsageEvent`, or one row of a table."""

    provider: str
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    cache_write_tokens: int | None
    cache_write_1h_tokens: int | None
    ts_start: float


def resolve(provider: str, model: str, context: Context) -> Rates | Conditional | None:
    """Ask genai-prices once which model this is and read its rates for this context."""
    from genai_prices import Usage, calc_price
    from genai_prices.types import ModelPrice

    try:
        calc = calc_price(Usage(input_tokens=1, output_tokens=1), model, provider_id=provider)
    except LookupError:
        return None
    variant = variant_context(provider, calc.model, context)
    if variant is None:
        return None
    wanted, multiplier = variant
    if not isinstance(calc.model.prices, ModelPrice):
        return Conditional(wanted or None, multiplier)
    if wanted:
        calc = calc_price(
            Usage(input_tokens=1, output_tokens=1), model, provider_id=provider, price_context=wanted
        )
    mp = calc.model_price
    inp = per_token(mp.input_mtok, multiplier)
    out = per_token(mp.output_mtok, multiplier)
    if inp is None and out is None:
        return None  # priced per request, image or second: not a token model we can price
    # One side unpriced (embeddings have no output price): genai-prices charges it nothing.
    inp = 0.0 if inp is None else inp
    out = 0.0 if out is None else out
    cache_read = per_token(mp.cache_read_mtok, multiplier)
    cache_write = per_token(mp.cache_write_mtok, multiplier)
    cache_write = inp if cache_write is None else cache_write
    cache_write_1h = per_token(mp.cache_write_1h_mtok, multiplier)
    per_request = mp.requests_kcount
    return Rates(
        input=inp,
        cache_read=inp if cache_read is None else cache_read,
        cache_write=cache_write,
        output=out,
        source="genai-prices",
        version=GENAI_PRICES_VERSION,
        per_request=float(scale(per_request, multiplier)) / 1000 if isinstance(per_request, Decimal) else 0.0,
        cache_write_1h=cache_write if cache_write_1h is None else cache_write_1h,
    )


def calc_exact(event: TokenCounts, model: str, how: Conditional) -> Price | None:
    """`calc_price` for one event at its own time: for models whose price depends on it."""
    from genai_prices import Usage, calc_price

    written = event.cache_write_tokens or 0
    written_1h = min(event.cache_write_1h_tokens or 0, written)
    split = (
        {"cache_write_5m_tokens": written - written_1h, "cache_write_1h_tokens": written_1h}
        if written_1h
        else {}
    )
    usage = Usage(
        input_tokens=event.input_tokens or 0,
        output_tokens=event.output_tokens or 0,
        cache_read_tokens=event.cached_input_tokens or 0,
        cache_write_tokens=written,
        **split,
    )
    try:
        calc = calc_price(
            usage,
            model,
            provider_id=event.provider,
            genai_request_timestamp=datetime.fromtimestamp(event.ts_start, tz=timezone.utc),
            price_context=how.context,
        )
    except (LookupError, ValueError):
        return None
    m = how.multiplier
    total = float(calc.total_price * m)
    return Price(
        total,
        float(calc.input_price * m),
        float(calc.output_price * m),
        "genai-prices",
        GENAI_PRICES_VERSION,
        total,
        "computed",
    )
