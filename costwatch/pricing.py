"""Cost from tokens: genai-prices rates cached per (provider, model), user overrides first.

`genai_prices.calc_price` costs ~50-70 µs a call, too slow per event at ingest
rates. We call it once per (provider, model) to resolve the model, keep its
per-token rates (plain or tiered) and price each event with a few float
multiplications (~1-2 µs). Models whose price depends on the request time
(genai-prices ``ConditionalPrice``: start dates, off-peak hours) fall back to
``calc_price`` per event with the event's own timestamp, so they stay exact.

Token meaning follows `costwatch.events`: ``input_tokens`` includes cached
reads and cache writes; ``output_tokens`` includes reasoning. Cache reads are
priced at the cache-read rate, cache writes at the cache-write rate (the
input rate when the model has none, as genai-prices does); reasoning is
priced as output. Tiered (long-context) prices use genai-prices' "cliff"
rule: the tier reached by the request's total input tokens applies to all of
its tokens. A per-request fee (Perplexity) is added to the total. A test
sweeps every model genai-prices ships and checks the fast path against
``calc_price`` to the last digit.

Unknown model, a model without any token price (genai-prices would say $0),
or missing usage -> no price (NULL), never a guess. Not modelled: service-tier
and batch price variants (the event does not carry the tier), the 1-hour
cache-write rate (priced at the 5-minute rate), hosted-tool fees (web search).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import version as _dist_version
from typing import Any

from costwatch.events import UsageEvent
from costwatch.settings import PriceOverride

__all__ = ["GENAI_PRICES_VERSION", "Price", "Pricer", "event_model"]

GENAI_PRICES_VERSION = f"genai-prices {_dist_version('genai-prices')}"
_MTOK = 1_000_000.0

# A rate is USD per token: a float, or ((threshold, rate), ...) tiers above a base rate.
Rate = float | tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one event, split the way genai-prices splits it."""

    cost_usd: float
    input_cost_usd: float
    output_cost_usd: float
    source: str  # "genai-prices" | "override"
    version: str


@dataclass(frozen=True, slots=True)
class _Rates:
    input: Rate
    cache_read: Rate
    cache_write: Rate
    output: Rate
    source: str
    version: str
    per_request: float = 0.0  # e.g. Perplexity's request fee; in cost_usd, in neither split


def event_model(event: UsageEvent) -> str | None:
    """The model that served the call (falls back to the response, then the request model)."""
    return event.model or event.response_model or event.request_model


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(value) / _MTOK
    tiers = tuple((int(t.start), float(t.price) / _MTOK) for t in value.tiers)  # TieredPrices
    return (float(value.base) / _MTOK, tiers)


def _at(rate: Rate, total_input: int) -> float:
    if isinstance(rate, float):
        return rate
    base, tiers = rate
    for start, tier_rate in reversed(tiers):
        if total_input > start:
            return tier_rate
    return base


class Pricer:
    """Prices events; thread-safe (the cache is filled under a lock)."""

    def __init__(self, overrides: list[PriceOverride] | None = None) -> None:
        self._overrides: dict[tuple[str | None, str], _Rates] = {}
        for o in overrides or []:
            inp = o.input_per_mtok / _MTOK
            self._overrides[(o.provider, o.model)] = _Rates(
                input=inp,
                cache_read=(o.cached_input_per_mtok / _MTOK) if o.cached_input_per_mtok is not None else inp,
                cache_write=(o.cache_write_per_mtok / _MTOK) if o.cache_write_per_mtok is not None else inp,
                output=o.output_per_mtok / _MTOK,
                source="override",
                version="override",
            )
        # (provider, model) -> _Rates | "conditional" (price per event) | None (unknown)
        self._cache: dict[tuple[str, str], _Rates | str | None] = {}
        self._lock = threading.Lock()

    def price(self, event: UsageEvent) -> Price | None:
        """The event's cost, or None when it cannot be priced (unknown model, no usage)."""
        model = event_model(event)
        if not model or event.usage_source == "missing":
            return None
        if event.input_tokens is None and event.output_tokens is None:
            return None
        rates = self._overrides.get((event.provider, model)) or self._overrides.get((None, model))
        if rates is None:
            key = (event.provider, model)
            cached = self._cache.get(key, _MISSING)
            if cached is _MISSING:
                with self._lock:
                    cached = self._cache[key] = _resolve(event.provider, model)
            if cached is None:
                return None
            if cached == "conditional":
                return _calc_exact(event, model)
            rates = cached  # type: ignore[assignment]
        return _apply(rates, event)  # type: ignore[arg-type]

    def is_known(self, provider: str, model: str) -> bool:
        """Whether `price` would find rates for this model (used by tests and the status page)."""
        probe = UsageEvent(
            id="probe", call_id="probe", ts_start=0, ts_end=0, provider=provider, operation="chat",
            model=model, input_tokens=1, output_tokens=1, usage_source="provider",
        )  # fmt: skip
        return self.price(probe) is not None


_MISSING = object()


def _apply(rates: _Rates, event: UsageEvent) -> Price:
    total_in = event.input_tokens or 0
    cached = min(event.cached_input_tokens or 0, total_in)
    written = min(event.cache_write_tokens or 0, total_in - cached)
    uncached = total_in - cached - written
    out = event.output_tokens or 0
    input_cost = (
        uncached * _at(rates.input, total_in)
        + cached * _at(rates.cache_read, total_in)
        + written * _at(rates.cache_write, total_in)
    )
    output_cost = out * _at(rates.output, total_in)
    total = input_cost + output_cost + rates.per_request
    return Price(total, input_cost, output_cost, rates.source, rates.version)


def _resolve(provider: str, model: str) -> _Rates | str | None:
    """Ask genai-prices once which model this is and read its rates."""
    from genai_prices import Usage, calc_price
    from genai_prices.types import ModelPrice

    try:
        calc = calc_price(Usage(input_tokens=1, output_tokens=1), model, provider_id=provider)
    except LookupError:
        return None
    if not isinstance(calc.model.prices, ModelPrice):
        return "conditional"
    mp = calc.model_price
    inp = _rate(mp.input_mtok)
    out = _rate(mp.output_mtok)
    if inp is None and out is None:
        return None  # priced per request, image or second: not a token model we can price
    # One side unpriced (embeddings have no output price): genai-prices charges it nothing.
    inp = 0.0 if inp is None else inp
    out = 0.0 if out is None else out
    cache_read = _rate(mp.cache_read_mtok)
    cache_write = _rate(mp.cache_write_mtok)
    return _Rates(
        input=inp,
        cache_read=inp if cache_read is None else cache_read,
        cache_write=inp if cache_write is None else cache_write,
        output=out,
        source="genai-prices",
        version=GENAI_PRICES_VERSION,
        per_request=float(mp.requests_kcount) / 1000 if isinstance(mp.requests_kcount, Decimal) else 0.0,
    )


def _calc_exact(event: UsageEvent, model: str) -> Price | None:
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=event.input_tokens or 0,
        output_tokens=event.output_tokens or 0,
        cache_read_tokens=event.cached_input_tokens or 0,
        cache_write_tokens=event.cache_write_tokens or 0,
    )
    try:
        calc = calc_price(
            usage,
            model,
            provider_id=event.provider,
            genai_request_timestamp=datetime.fromtimestamp(event.ts_start, tz=timezone.utc),
        )
    except (LookupError, ValueError):
        return None
    return Price(
        float(calc.total_price),
        float(calc.input_price),
        float(calc.output_price),
        "genai-prices",
        GENAI_PRICES_VERSION,
    )
