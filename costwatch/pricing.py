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

The daemon prices a whole commit at once (`Pricer.price_table`): rates are
resolved once per distinct (provider, model) in the batch and applied with
Arrow compute in the same order of float operations as `_apply`, so every
cost is bit-for-bit what `Pricer.price` returns for the event (a test checks).

Unknown model, a model without any token price (genai-prices would say $0),
or missing usage -> no price (NULL), never a guess. Not modelled: hosted-tool
fees (web search).

What the invoice prices beyond tokens (issue 21; docs/pricing.md lists every rate and
where it comes from):

- **Service tier, batch, speed** come from the response (`UsageEvent.service_tier`,
  `speed`). genai-prices (>= 0.2) ships them as *price variants* selected by a
  request context: ``{"service_tier": "flex" | "priority" | "fast"}``,
  ``{"processing": "batch"}``, ``{"speed": "fast"}``. The rates are resolved once
  per (provider, model, context). A non-standard tier the model has no variant for
  is priced by a published rule where one exists (batch: 50 % of standard at
  OpenAI, Anthropic and Google; OpenAI flex: the batch rates) and is otherwise
  unpriced — never silently billed at the standard rate. Commitment tiers (OpenAI
  ``scale``, Anthropic ``priority``) are billed by the capacity bought, not per
  token: their tokens are priced at list rates and the tier is stored to tell them
  apart.
- **Anthropic US-only inference** (``inference_geo = "us"``) is 1.1x every token
  rate on Claude Opus 4.6 and newer models; genai-prices does not model it, so the
  multiplier is applied here (`_US_GEO_MODELS`).
- **Cache writes by duration**: ``cache_write_1h_tokens`` (part of
  ``cache_write_tokens``) at the model's 1-hour rate (genai-prices
  ``cache_write_1h_mtok``: 2x the base input rate for Claude), the rest at the
  5-minute rate.
- **Long-context tiers** are genai-prices' tiered prices (see above); variants carry
  their own tiers.
- **Provider-reported cost wins**: an event with ``provider_cost_usd`` is stored
  with that as ``cost_usd`` and ``cost_source = 'provider'``; the cost computed
  here stays beside it in ``computed_cost_usd``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import version as _dist_version
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from costwatch.events import UsageEvent
from costwatch.settings import PriceOverride

__all__ = [
    "GENAI_PRICES_VERSION",
    "PRICE_COLUMNS",
    "Price",
    "Pricer",
    "event_model",
    "event_model_column",
    "price_context",
]

GENAI_PRICES_VERSION = f"genai-prices {_dist_version('genai-prices')}"
_MTOK = 1_000_000.0

# A rate is USD per token: a float, or ((threshold, rate), ...) tiers above a base rate.
Rate = float | tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one event, split the way genai-prices splits it.

    ``cost_usd`` is what the ledger counts: the provider's own figure when the response
    carried one (``cost_source == "provider"``), else the computed cost. The split and
    ``source``/``version`` describe the computed cost (None when it could not be computed).
    """

    cost_usd: float
    input_cost_usd: float | None
    output_cost_usd: float | None
    source: str | None  # "genai-prices" | "override" | None (only the provider's cost)
    version: str | None
    computed_cost_usd: float | None = None
    cost_source: str = "computed"  # "computed" | "provider"


@dataclass(frozen=True, slots=True)
class _Rates:
    input: Rate
    cache_read: Rate
    cache_write: Rate  # the 5-minute (default) cache-write rate
    output: Rate
    source: str
    version: str
    per_request: float = 0.0  # e.g. Perplexity's request fee; in cost_usd, in neither split
    cache_write_1h: Rate = 0.0  # the 1-hour cache-write rate (the cache_write rate when none is listed)


@dataclass(frozen=True, slots=True)
class _Conditional:
    """A model whose price depends on the request time: `calc_price` per event, with this context."""

    context: dict[str, str] | None
    multiplier: Decimal


# What a response's tier/speed/geography mean for the price, normalized (see `price_context`).
Context = tuple[str | None, str | None, str | None]  # (tier, speed, geo)
_STANDARD: Context = (None, None, None)
# Tiers billed at the standard per-token rate: the default tier, and the commitment tiers whose
# capacity is bought up front (OpenAI scale; Anthropic's Priority Tier, whose capacity burns down
# at the list-price ratios, platform.claude.com/docs/en/api/service-tiers).
_STANDARD_TIERS = {"", "default", "standard", "auto", "standard_only", "scale"}
_COMMITMENT_TIERS = {"anthropic": {"priority"}}
# Published batch discount where genai-prices has no batch variant for a model: 50 % of every
# token rate (OpenAI Batch API, Anthropic Message Batches, Gemini Batch Mode).
_BATCH_RULE = {
    "openai": Decimal("0.5"),
    "azure.openai": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
    "google": Decimal("0.5"),
}
# OpenAI Flex processing is billed at Batch API rates (openai.com/api/pricing).
_FLEX_AS_BATCH = {"openai", "azure.openai"}
# Anthropic US-only inference (`inference_geo: "us"`): 1.1x every token category on Claude Opus
# 4.6 and newer models (platform.claude.com/docs/en/api/service-tiers). genai-prices ids.
_US_GEO_MULTIPLIER = Decimal("1.1")
_US_GEO_MODELS = frozenset(
    {
        "claude-opus-4-6", "claude-sonnet-4-6", "claude-opus-4-7", "claude-opus-4-8",
        "claude-opus-5", "claude-opus-5-5", "claude-sonnet-5", "claude-sonnet-5-5",
        "claude-haiku-5-5", "claude-fable-5", "claude-fable-5-1", "claude-fable-5-2",
        "claude-mythos-5-2",
    }
)  # fmt: skip


def price_context(provider: str, service_tier: str | None, speed: str | None, geo: str | None) -> Context:
    """The response's tier, speed and geography reduced to what changes the price."""
    tier = (service_tier or "").strip().lower()
    if tier in _STANDARD_TIERS or tier in _COMMITMENT_TIERS.get(provider, ()):
        tier = ""
    sp = (speed or "").strip().lower()
    if sp == "standard":
        sp = ""
    where = (geo or "").strip().lower()
    return (tier or None, sp or None, "us" if where == "us" else None)


def event_model(event: UsageEvent) -> str | None:
    """The model that served the call (falls back to the response, then the request model)."""
    return event.model or event.response_model or event.request_model


def _nonempty(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Empty strings as null: ``event_model`` skips falsy names, not only None."""
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def event_model_column(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """`event_model` for every row of a table with the event columns (null where it is None)."""
    return pc.coalesce(
        _nonempty(table["model"]), _nonempty(table["response_model"]), _nonempty(table["request_model"])
    )


# What `price_table` returns, in `usage_events` column order.
PRICE_COLUMNS: dict[str, pa.DataType] = {
    "cost_usd": pa.float64(),
    "input_cost_usd": pa.float64(),
    "output_cost_usd": pa.float64(),
    "priced": pa.bool_(),
    "price_source": pa.string(),
    "price_version": pa.string(),
    "computed_cost_usd": pa.float64(),
    "cost_source": pa.string(),
}
_ONE = Decimal(1)


def _rate(value: Any, multiplier: Decimal = _ONE) -> Rate | None:
    """USD per token; a multiplier is applied in Decimal, so 5 x 1.1 is 5.5, not 5.500000000000001."""
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(_scale(value, multiplier)) / _MTOK
    tiers = tuple((int(t.start), float(_scale(t.price, multiplier)) / _MTOK) for t in value.tiers)
    return (float(_scale(value.base, multiplier)) / _MTOK, tiers)  # TieredPrices


def _scale(value: Any, multiplier: Decimal) -> Any:
    return value if multiplier == _ONE else Decimal(value) * multiplier


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
            write = (o.cache_write_per_mtok / _MTOK) if o.cache_write_per_mtok is not None else inp
            self._overrides[(o.provider, o.model)] = _Rates(
                input=inp,
                cache_read=(o.cached_input_per_mtok / _MTOK) if o.cached_input_per_mtok is not None else inp,
                cache_write=write,
                output=o.output_per_mtok / _MTOK,
                source="override",
                version="override",
                cache_write_1h=write,
            )
        # (provider, model, context) -> _Rates | _Conditional (price per event) | None (unpriced)
        self._cache: dict[tuple[str, str, Context], _Rates | _Conditional | None] = {}
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
        if isinstance(rates, _Conditional):
            return _calc_exact(event, model, rates)
        return _apply(rates, event)

    def _rates(self, provider: str, model: str, context: Context = _STANDARD) -> _Rates | _Conditional | None:
        """Overrides price every tier alike; genai-prices' rates are resolved per tier."""
        rates = self._overrides.get((provider, model)) or self._overrides.get((None, model))
        if rates is not None:
            return rates
        key = (provider, model, context)
        cached = self._cache.get(key, _MISSING)
        if cached is _MISSING:
            with self._lock:
                cached = self._cache[key] = _resolve(provider, model, context)
        return cached  # type: ignore[return-value]

    def price_table(self, table: pa.Table) -> dict[str, pa.Array]:
        """`price` for every row of an Arrow table with the event columns, as `PRICE_COLUMNS` arrays.

        Rates are looked up once per distinct (provider, model, price context); the
        arithmetic is `_apply`'s, vectorised, with the same operand order (so the same
        floats). Rows of time-dependent ("conditional") models go through `calc_price`
        one by one. A provider-reported cost then wins, as in `price`.
        """
        n = table.num_rows
        model = event_model_column(table)
        eligible = pc.and_kleene(
            pc.is_valid(model),
            pc.and_kleene(
                pc.not_equal(table["usage_source"], "missing"),
                pc.or_kleene(pc.is_valid(table["input_tokens"]), pc.is_valid(table["output_tokens"])),
            ),
        )
        # One integer key per (provider, model, context): dictionary codes combined, no string building
        # per row beyond the context's three labels.
        prov = pc.dictionary_encode(_combine(table["provider"]))
        mod = pc.dictionary_encode(_combine(model))
        ctx = pc.dictionary_encode(_combine(_context_column(table)))
        width = max(len(mod.dictionary), 1)
        cwidth = max(len(ctx.dictionary), 1)
        code = pc.add(
            pc.multiply(
                pc.add(pc.multiply(prov.indices.cast(pa.int64()), width), mod.indices.cast(pa.int64())),
                cwidth,
            ),
            ctx.indices.cast(pa.int64()),
        )  # null where the model is null
        code = pc.if_else(eligible, code, pa.scalar(None, pa.int64()))
        keys = pc.unique(code.drop_null()).to_pylist()
        providers = prov.dictionary.to_pylist()
        models = mod.dictionary.to_pylist()
        contexts = ctx.dictionary.to_pylist()
        per_key: list[_Rates | None] = []
        conditional: dict[int, _Conditional] = {}
        for k in keys:
            provider = providers[(k // cwidth) // width]
            labels = contexts[k % cwidth].split(_SEP)
            context = price_context(provider, labels[0] or None, labels[1] or None, labels[2] or None)
            rates = self._rates(provider, models[(k // cwidth) % width], context)
            if isinstance(rates, _Conditional):
                conditional[k] = rates
                per_key.append(None)
            else:
                per_key.append(rates)
        slot = pc.index_in(code, value_set=pa.array(keys, pa.int64()))  # row -> index into keys
        known = pa.array([r is not None for r in per_key], pa.bool_())
        priced = (
            pc.fill_null(pc.take(known, slot), False) if keys else pa.nulls(n, pa.bool_()).fill_null(False)
        )
        columns = _apply_table(table, per_key, slot, priced) if keys else _unpriced(n)
        if conditional:
            columns = self._price_conditional(table, model, code, conditional, columns)
        return _provider_cost(table, columns)

    def _price_conditional(
        self,
        table: pa.Table,
        model: pa.Array | pa.ChunkedArray,
        code: pa.Array | pa.ChunkedArray,
        keys: dict[int, _Conditional],
        columns: dict[str, pa.Array],
    ) -> dict[str, pa.Array]:
        """Rows whose price depends on the request time: `calc_price` per row (rare)."""
        rows = pc.indices_nonzero(
            pc.fill_null(pc.is_in(code, value_set=pa.array(list(keys), pa.int64())), False)
        )
        lists = {name: col.to_pylist() for name, col in columns.items()}
        sub = table.take(rows)
        ts = pc.divide(sub["ts_start"].cast(pa.int64()), 1e6).to_pylist()
        models = pc.take(model, rows).to_pylist()
        codes = pc.take(code, rows).to_pylist()
        for i, row in enumerate(rows.to_pylist()):
            price = _calc_exact(_TokenView(sub, i, ts[i]), models[i], keys[codes[i]])
            values = (
                (
                    price.cost_usd,
                    price.input_cost_usd,
                    price.output_cost_usd,
                    True,
                    price.source,
                    price.version,
                    price.cost_usd,
                    "computed",
                )
                if price is not None
                else (None, None, None, False, None, None, None, None)
            )
            for name, value in zip(PRICE_COLUMNS, values, strict=True):
                lists[name][row] = value
        return {name: pa.array(lists[name], PRICE_COLUMNS[name]) for name in PRICE_COLUMNS}

    def is_known(self, provider: str, model: str) -> bool:
        """Whether `price` would find rates for this model (used by tests and the status page)."""
        probe = UsageEvent(
            id="probe", call_id="probe", ts_start=0, ts_end=0, provider=provider, operation="chat",
            model=model, input_tokens=1, output_tokens=1, usage_source="provider",
        )  # fmt: skip
        return self.price(probe) is not None


_MISSING = object()


def _combine(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


_SEP = "\x1f"  # joins a row's (service_tier, speed, inference_geo) into one dictionary key


def _context_column(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    def label(name: str) -> Any:
        return pc.fill_null(table[name], "")

    return pc.binary_join_element_wise(label("service_tier"), label("speed"), label("inference_geo"), _SEP)


def _provider_cost(table: pa.Table, columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """A provider-reported cost wins: `Pricer.price`'s rule on columns."""
    reported = _combine(table["provider_cost_usd"])
    has = pc.is_valid(reported)
    computed = columns["cost_usd"]
    out = dict(columns)
    out["computed_cost_usd"] = computed
    out["cost_usd"] = _combine(pc.if_else(has, reported, computed))
    out["priced"] = _combine(pc.or_(has, columns["priced"]))
    out["cost_source"] = _combine(
        pc.if_else(
            has,
            pa.scalar("provider"),
            pc.if_else(columns["priced"], pa.scalar("computed"), pa.scalar(None, pa.string())),
        )
    )
    return out


class _TokenView:
    """The fields `_calc_exact` reads, from one row of an Arrow table."""

    def __init__(self, table: pa.Table, i: int, ts_start: float) -> None:
        self.provider = table["provider"][i].as_py()
        self.input_tokens = table["input_tokens"][i].as_py()
        self.output_tokens = table["output_tokens"][i].as_py()
        self.cached_input_tokens = table["cached_input_tokens"][i].as_py()
        self.cache_write_tokens = table["cache_write_tokens"][i].as_py()
        self.cache_write_1h_tokens = table["cache_write_1h_tokens"][i].as_py()
        self.ts_start = ts_start


def _unpriced(n: int) -> dict[str, pa.Array]:
    out = {name: pa.nulls(n, t) for name, t in PRICE_COLUMNS.items()}
    out["priced"] = pa.array([False] * n, pa.bool_())
    return out


def _rate_column(rates: list[_Rates | None], attr: str, slot: Any, total_in: Any) -> Any:
    """Per-row USD/token for one rate kind, tiers resolved by the row's total input ("cliff")."""
    base = [None if r is None else _base(getattr(r, attr)) for r in rates]
    column = pc.take(pa.array(base, pa.float64()), slot)
    for k, r in enumerate(rates):
        rate = None if r is None else getattr(r, attr)
        if isinstance(rate, tuple):
            in_key = pc.equal(slot, k)
            for start, tier_rate in rate[1]:  # later tiers win, as `_at` searches from the top
                column = pc.if_else(pc.and_(in_key, pc.greater(total_in, start)), tier_rate, column)
    return column


def _base(rate: Rate) -> float:
    return rate if isinstance(rate, float) else rate[0]


def _apply_table(table: pa.Table, rates: list[_Rates | None], slot: Any, priced: Any) -> dict[str, pa.Array]:
    """`_apply` on columns: the same operations in the same order, so the same floats."""
    f64 = pa.float64()
    total_in = pc.fill_null(table["input_tokens"], 0)
    cached = pc.min_element_wise(pc.fill_null(table["cached_input_tokens"], 0), total_in)
    written = pc.min_element_wise(pc.fill_null(table["cache_write_tokens"], 0), pc.subtract(total_in, cached))
    written_1h = pc.min_element_wise(pc.fill_null(table["cache_write_1h_tokens"], 0), written)
    written_5m = pc.subtract(written, written_1h)
    uncached = pc.subtract(pc.subtract(total_in, cached), written)
    out = pc.fill_null(table["output_tokens"], 0)
    r_in, r_read, r_write, r_out = (
        _rate_column(rates, attr, slot, total_in) for attr in ("input", "cache_read", "cache_write", "output")
    )
    r_write_1h = _rate_column(rates, "cache_write_1h", slot, total_in)
    per_request = pc.take(pa.array([None if r is None else r.per_request for r in rates], f64), slot)
    input_cost = pc.add(
        pc.add(
            pc.add(pc.multiply(uncached.cast(f64), r_in), pc.multiply(cached.cast(f64), r_read)),
            pc.multiply(written_5m.cast(f64), r_write),
        ),
        pc.multiply(written_1h.cast(f64), r_write_1h),
    )
    output_cost = pc.multiply(out.cast(f64), r_out)
    total = pc.add(pc.add(input_cost, output_cost), per_request)
    none_f = pa.scalar(None, f64)
    none_s = pa.scalar(None, pa.string())
    source = pc.take(pa.array([None if r is None else r.source for r in rates], pa.string()), slot)
    version = pc.take(pa.array([None if r is None else r.version for r in rates], pa.string()), slot)
    cost = _combine(pc.if_else(priced, total, none_f))
    return {
        "cost_usd": cost,
        "input_cost_usd": _combine(pc.if_else(priced, input_cost, none_f)),
        "output_cost_usd": _combine(pc.if_else(priced, output_cost, none_f)),
        "priced": _combine(priced),
        "price_source": _combine(pc.if_else(priced, source, none_s)),
        "price_version": _combine(pc.if_else(priced, version, none_s)),
        "computed_cost_usd": cost,
        "cost_source": _combine(pc.if_else(priced, pa.scalar("computed"), none_s)),
    }


def _apply(rates: _Rates, event: UsageEvent) -> Price:
    total_in = event.input_tokens or 0
    cached = min(event.cached_input_tokens or 0, total_in)
    written = min(event.cache_write_tokens or 0, total_in - cached)
    written_1h = min(event.cache_write_1h_tokens or 0, written)
    written_5m = written - written_1h
    uncached = total_in - cached - written
    out = event.output_tokens or 0
    input_cost = (
        uncached * _at(rates.input, total_in)
        + cached * _at(rates.cache_read, total_in)
        + written_5m * _at(rates.cache_write, total_in)
        + written_1h * _at(rates.cache_write_1h, total_in)
    )
    output_cost = out * _at(rates.output, total_in)
    total = input_cost + output_cost + rates.per_request
    return Price(total, input_cost, output_cost, rates.source, rates.version, total, "computed")


def _genai_context(context: Context) -> dict[str, str]:
    """Our context as genai-prices' ``price_context`` (its price-variant keys)."""
    tier, speed, _ = context
    out: dict[str, str] = {}
    if tier == "batch":
        out["processing"] = "batch"
    elif tier is not None:
        out["service_tier"] = tier
    if speed is not None:
        out["speed"] = speed
    return out


def _has_variant(model_info: Any, key: str, value: str, context: dict[str, str]) -> bool:
    """Whether genai-prices would apply a variant for ``key = value`` in this context (today)."""
    now = datetime.now(tz=timezone.utc)
    return any(
        v.when.get(key) == value
        and all(context.get(k) == w for k, w in v.when.items())
        and (v.constraint is None or v.constraint.active(now))
        for v in model_info.price_variants or ()
    )


def _resolve(provider: str, model: str, context: Context = _STANDARD) -> _Rates | _Conditional | None:
    """Ask genai-prices once which model this is and read its rates for this context."""
    from genai_prices import Usage, calc_price
    from genai_prices.types import ModelPrice

    try:
        calc = calc_price(Usage(input_tokens=1, output_tokens=1), model, provider_id=provider)
    except LookupError:
        return None
    info = calc.model
    wanted = _genai_context(context)
    multiplier = _ONE
    for key, value in list(wanted.items()):
        if _has_variant(info, key, value, wanted):
            continue
        # No variant for this tier: a published rule, or no price at all (never the standard rate).
        if key == "service_tier" and value == "flex" and provider in _FLEX_AS_BATCH:
            del wanted[key]
            if _has_variant(info, "processing", "batch", {**wanted, "processing": "batch"}):
                wanted["processing"] = "batch"
            else:
                multiplier *= _BATCH_RULE[provider]
        elif key == "processing" and provider in _BATCH_RULE:
            del wanted[key]
            multiplier *= _BATCH_RULE[provider]
        else:
            return None
    if context[2] == "us" and info.id in _US_GEO_MODELS:
        multiplier *= _US_GEO_MULTIPLIER
    if not isinstance(info.prices, ModelPrice):
        return _Conditional(wanted or None, multiplier)
    if wanted:
        calc = calc_price(
            Usage(input_tokens=1, output_tokens=1), model, provider_id=provider, price_context=wanted
        )
    mp = calc.model_price
    inp = _rate(mp.input_mtok, multiplier)
    out = _rate(mp.output_mtok, multiplier)
    if inp is None and out is None:
        return None  # priced per request, image or second: not a token model we can price
    # One side unpriced (embeddings have no output price): genai-prices charges it nothing.
    inp = 0.0 if inp is None else inp
    out = 0.0 if out is None else out
    cache_read = _rate(mp.cache_read_mtok, multiplier)
    cache_write = _rate(mp.cache_write_mtok, multiplier)
    cache_write = inp if cache_write is None else cache_write
    cache_write_1h = _rate(getattr(mp, "cache_write_1h_mtok", None), multiplier)
    per_request = mp.requests_kcount
    return _Rates(
        input=inp,
        cache_read=inp if cache_read is None else cache_read,
        cache_write=cache_write,
        output=out,
        source="genai-prices",
        version=GENAI_PRICES_VERSION,
        per_request=float(_scale(per_request, multiplier)) / 1000
        if isinstance(per_request, Decimal)
        else 0.0,
        cache_write_1h=cache_write if cache_write_1h is None else cache_write_1h,
    )


def _calc_exact(event: UsageEvent | _TokenView, model: str, how: _Conditional) -> Price | None:
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
