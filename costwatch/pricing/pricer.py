"""`Pricer`: an event's cost from its tokens, with rates cached per (provider, model, tier).

Token meaning follows `costwatch.events`: ``input_tokens`` includes cached reads and cache
writes; ``output_tokens`` includes reasoning. Cache reads are priced at the cache-read
rate; cache writes at the 1-hour rate for ``cache_write_1h_tokens`` (part of
``cache_write_tokens``) and the 5-minute rate for the rest, each the input rate when the
model has none, as genai-prices does; reasoning is priced as output. Tiered
(long-context) prices use genai-prices' "cliff" rule: the tier reached by the request's
total input tokens applies to all of its tokens. A per-request fee (Perplexity) is added
to the total. tests/daemon/test_pricing_sweep.py checks this arithmetic against
``calc_price`` for every model genai-prices ships.

A cost the provider reported (``provider_cost_usd``) wins: it is stored as ``cost_usd``
with ``cost_source = 'provider'``, the cost computed here beside it in
``computed_cost_usd``. Missing usage -> no price (NULL), never a guess. Not modelled:
hosted-tool fees (web search).
"""

from __future__ import annotations

import threading

import pyarrow as pa

from costwatch.events import UsageEvent
from costwatch.pricing.costs import Price
from costwatch.pricing.lookup import calc_exact, resolve
from costwatch.pricing.rates import Conditional, Rates, at, override_rates
from costwatch.pricing.table import price_table
from costwatch.pricing.tiers import Context, price_context
from costwatch.settings import PriceOverride

__all__ = ["Pricer", "apply_rates", "event_model"]


class Pricer:
    """Prices events; thread-safe (the cache is filled under a lock)."""

    def __init__(self, overrides: list[PriceOverride] | None = None) -> None:
        self._overrides = {(o.provider, o.model): override_rates(o) for o in overrides or []}
        # (provider, model, context) -> Rates | Conditional (price per event) | None (unpriced)
        self._cache: dict[tuple[str, str, Context], Rates | Conditional | None] = {}
        self._lock = threading.Lock()

    def price(self, event: UsageEvent) -> Price | None:
        """The event's cost, or None when it cannot be priced (unknown model, no usage).

        A cost the provider reported wins (``cost_source = "provider"``); the computed one
        rides along in ``computed_cost_usd``.
        """
        computed = self._computed(event)
        reported = event.provider_cost_usd
        if reported is None:
            return computed
        if computed is None:
            return Price(reported, None, None, None, None, None, "provider")
        return Price(
            reported,
            computed.input_cost_usd,
            computed.output_cost_usd,
            computed.source,
            computed.version,
            computed.cost_usd,
            "provider",
        )

    def price_table(self, table: pa.Table) -> dict[str, pa.Array]:
        """`price` for every row of an Arrow table with the event columns (`costwatch.pricing.table`)."""
        return price_table(table, self._rates)

    def _computed(self, event: UsageEvent) -> Price | None:
        model = event_model(event)
        if not model or event.usage_source == "missing":
            return None
        if event.input_tokens is None and event.output_tokens is None:
            return None
        context = price_context(event.provider, event.service_tier, event.speed, event.inference_geo)
        rates = self._rates(event.provider, model, context)
        if rates is None:
            return None
        if isinstance(rates, Conditional):
            return calc_exact(event, model, rates)
        return apply_rates(rates, event)

    def _rates(self, provider: str, model: str, context: Context) -> Rates | Conditional | None:
        """Overrides price every tier alike; genai-prices' rates are resolved per tier."""
        rates = self._overrides.get((provider, model)) or self._overrides.get((None, model))
        if rates is not None:
            return rates
        key = (provider, model, context)
        cached = self._cache.get(key, _MISSING)
        if cached is _MISSING:
            with self._lock:
                cached = self._cache[key] = resolve(provider, model, context)
        return cached  # type: ignore[return-value]


_MISSING = object()


def event_model(event: UsageEvent) -> str | None:
    """The model that served the call (falls back to the response, then the request model)."""
    return event.model or event.response_model or event.request_model


def apply_rates(rates: Rates, event: UsageEvent) -> Price:
    """The event's cost at these rates; `costwatch.pricing.table` repeats these float operations."""
    total_in = event.input_tokens or 0
    cached = min(event.cached_input_tokens or 0, total_in)
    written = min(event.cache_write_tokens or 0, total_in - cached)
    written_1h = min(event.cache_write_1h_tokens or 0, written)
    written_5m = written - written_1h
    uncached = total_in - cached - written
    out = event.output_tokens or 0
    input_cost = (
        uncached * at(rates.input, total_in)
        + cached * at(rates.cache_read, total_in)
        + written_5m * at(rates.cache_write, total_in)
        + written_1h * at(rates.cache_write_1h, total_in)
    )
    output_cost = out * at(rates.output, total_in)
    total = input_cost + output_cost + rates.per_request
    return Price(total, input_cost, output_cost, rates.source, rates.version, total, "computed")
